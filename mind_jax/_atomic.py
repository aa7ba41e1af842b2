"""Files that appear whole or not at all: the one way every job writes its results.

A file is written under a temporary name (`NAME.tmp`), flushed to disk (fsync, where the
file system has file descriptors: object stores complete their upload on close instead) and
renamed over `NAME`, so a job killed at any moment leaves the old file or the new one, never
half of one. On an error the temporary file is removed. Readers of part files ignore `.tmp`
names. Local paths and gs:// alike (through etils.epath).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from collections.abc import Iterable, Iterator

TMP_SUFFIX = ".tmp"
RECORD_FORMATS = ("jsonl", "parquet")


def _path(path):
  from etils import epath
  return epath.Path(path)


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", shared: bool = False) -> Iterator:
  """`open(path, mode)` that shows the file at `path` only once the block ends without error.

  `shared`: several processes may write this file at once (every host of a slice writes the
  run record), so each writes its own temporary file; the last rename wins, whole.
  """
  path = _path(path)
  writer = f".{socket.gethostname()}-{os.getpid()}" if shared else ""
  tmp = path.parent / f"{path.name}{writer}{TMP_SUFFIX}"
  try:
    with tmp.open(mode) as f:
      yield f
      f.flush()
      try:
        os.fsync(f.fileno())
      except (AttributeError, OSError, ValueError) as e:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
          raise
        # else: no file descriptor (an object store): its upload completes on close
    tmp.replace(path)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    if e.filename is None and e.errno:  # a failed write() names no file: name the one kept
      raise OSError(e.errno, e.strerror, str(path)) from e
    raise
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_json(path, obj, shared: bool = False) -> None:
  """Writes `obj` as indented UTF-8 JSON, atomically (`shared`: see atomic_open)."""
  with atomic_open(path, shared=shared) as f:
    f.write(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def write_bytes(path, data: bytes) -> None:
  with atomic_open(path, "wb") as f:
    f.write(data)


class RecordFile:
  """A part file of records (JSONL or Parquet), written atomically as a context manager.

  JSONL is written as records arrive; Parquet at the end, as one table, so its schema is
  inferred from every record.
  """

  def __init__(self, path, fmt: str):
    if fmt not in RECORD_FORMATS:
      from mind_jax._errors import MindJaxError
      raise MindJaxError(f"output format must be one of {', '.join(RECORD_FORMATS)}, got {fmt!r}")
    self.path, self.fmt, self.count = _path(path), fmt, 0
    self._buffer: list[dict] = []

  def __enter__(self) -> RecordFile:
    self._context = atomic_open(self.path, "w" if self.fmt == "jsonl" else "wb")
    self._file = self._context.__enter__()
    return self

  def add(self, record: dict) -> None:
    self.count += 1
    if self.fmt == "jsonl":
      self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
      self._buffer.append(record)

  def __exit__(self, *exc) -> bool:
    if exc[0] is None and self.fmt == "parquet":
      import pyarrow as pa
      import pyarrow.parquet as pq
      try:
        pq.write_table(pa.Table.from_pylist(self._buffer), self._file)
      except BaseException as e:
        self._context.__exit__(type(e), e, e.__traceback__)
        raise
    return bool(self._context.__exit__(*exc))


def write_records(path, records: Iterable[dict], fmt: str) -> int:
  """Writes a whole part file atomically; returns how many records it holds."""
  with RecordFile(path, fmt) as part:
    for record in records:
      part.add(record)
  return part.count
