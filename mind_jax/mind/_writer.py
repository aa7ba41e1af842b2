"""Exactly-once output: records land in part files that appear atomically, with a manifest.

A part file is written atomically (mind_jax._atomic), so a job killed at any
moment leaves only whole parts. On restart the ids already
in parts are skipped; what was in flight is redone. Part names carry the
shard index, so independent jobs (--num-shards) write to one directory
without colliding. Paths go through etils.epath: a local directory or gs://
(on object stores the rename is a copy then a delete; readers ignore .tmp).
"""

from __future__ import annotations

import time

from etils import epath

from mind_jax._atomic import RECORD_FORMATS, write_json, write_records
from mind_jax._errors import MindJaxError
from mind_jax.data import iter_records, part_files


def read_records(path: str) -> list[dict]:
  """Every record of one part file; a record that cannot be read stops with its file:line."""
  records = []
  for where, record, problem in iter_records(path):
    if problem:
      raise MindJaxError(f"{where}: {problem}")
    records.append(record)
  return records


def done_ids(out_dir: str) -> set[str]:
  """Ids of every record already written to `out_dir` (by any shard)."""
  ids = set()
  for path in part_files(out_dir):
    try:
      ids.update(record["id"] for record in read_records(path))
    except MindJaxError as e:  # names the file and line already
      raise MindJaxError(f"{e}; a damaged part file of the output: move it aside to redo its "
                         "records") from e
    except (KeyError, TypeError) as e:
      raise MindJaxError(f"{path}: a record without an id; move the file aside to redo its "
                         "records") from e
  return ids


class PartWriter:
  """Buffers records and writes them as `part-SSSSS-NNNNNN.<format>` files."""

  def __init__(self, out_dir: str, shard_index: int, fmt: str = "jsonl",
               records_per_part: int = 1000, flush_seconds: float = 300.0,
               enabled: bool = True):
    """`enabled=False`: a host of a multi-host engine that is not its writer; it touches no
    file (not even the stale temporaries, which the writer may be writing)."""
    if fmt not in RECORD_FORMATS:
      raise MindJaxError(f"output format must be one of {', '.join(RECORD_FORMATS)}, got {fmt!r}")
    self.out_dir, self.shard, self.fmt = out_dir, shard_index, fmt
    self.records_per_part, self.flush_seconds = records_per_part, flush_seconds
    self.enabled = enabled
    self.buffer: list[dict] = []
    self.written = 0
    if not enabled:
      return
    self.root = epath.Path(out_dir)
    self.root.mkdir(parents=True, exist_ok=True)
    prefix = f"part-{shard_index:05d}-"
    for stale in self.root.glob(prefix + "*.tmp"):  # an interrupted write: its records are redone
      stale.unlink()
    existing = [int(p.name.split("-")[2].split(".")[0])
                for p in self.root.glob(prefix + "*") if not p.name.endswith(".tmp")]
    self.next_part = max(existing, default=-1) + 1
    self._rebuild_manifest()
    self.last_flush = time.monotonic()

  def add(self, record: dict) -> None:
    if not self.enabled:
      return
    self.buffer.append(record)
    if (len(self.buffer) >= self.records_per_part
        or time.monotonic() - self.last_flush >= self.flush_seconds):
      self.flush()

  def flush(self) -> str | None:
    if not self.enabled:
      return None
    self.last_flush = time.monotonic()
    if not self.buffer:
      return None
    name = f"part-{self.shard:05d}-{self.next_part:06d}.{self.fmt}"
    path = self.root / name
    write_records(path, self.buffer, self.fmt)
    self._update_manifest(name, len(self.buffer))
    self.written += len(self.buffer)
    self.next_part += 1
    self.buffer = []
    return str(path)

  def _rebuild_manifest(self) -> None:
    # The parts are the truth; a kill between a part's rename and the manifest's update
    # is repaired here.
    parts = [epath.Path(p) for p in part_files(self.out_dir)]
    self.manifest = {"shard_index": self.shard,
                     "parts": [{"file": p.name, "records": len(read_records(str(p)))}
                               for p in parts if p.name.startswith(f"part-{self.shard:05d}-")]}
    self._write_manifest()

  def _update_manifest(self, name: str, count: int) -> None:
    self.manifest["parts"].append({"file": name, "records": count})
    self._write_manifest()

  def _write_manifest(self) -> None:
    self.manifest["records"] = sum(p["records"] for p in self.manifest["parts"])
    write_json(self.root / f"manifest-{self.shard:05d}.json", self.manifest)
