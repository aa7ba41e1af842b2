"""Documents from JSONL (plain or compressed), Parquet, Hugging Face `datasets` directories
(`save_to_disk`), the CHAMP package, and directories or globs of files.

Every reader yields `Document`s with a stable id and the text, streaming: a
corpus is never held in memory. Bad records either stop the run with one line
naming the file and line (`on_bad_record="error"`, the default) or are
skipped and counted (`"skip"`).
"""

from __future__ import annotations

import bz2
import collections
import dataclasses
import glob
import gzip
import itertools
import json
import lzma
import os
import zlib
from collections.abc import Iterator

from mind_jax._errors import MindJaxError

CHAMP_SOURCE = "champ"
TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True)
class Document:
  id: str
  text: str


class ReadStats(collections.Counter):
  """Counts of documents read, skipped as bad records, and empty."""


def _path(path: str):
  """etils.epath path: local files and gs:// (with gcsfs installed) through one interface."""
  from etils import epath
  return epath.Path(path)


def _is_datasets_dir(path: str) -> bool:
  return "://" not in path and os.path.isdir(path) and any(
      os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json", "dataset_dict.json"))


def expand(source: str) -> list[str]:
  """A path, a directory (its data files) or a glob -> the sorted files to read.

  Local paths and gs:// URLs alike (local globs may use **).
  """
  if source == CHAMP_SOURCE or source.startswith(TFDS_PREFIX) or _is_datasets_dir(source):
    return [source]
  try:
    if "://" in source:
      files = _expand_remote(source)
    elif any(ch in source for ch in "*?["):
      files = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
    elif os.path.isdir(source):
      files = sorted(os.path.join(dirpath, name) for dirpath, _, names in os.walk(source)
                     for name in names if _kind(name))
    else:
      files = [source]
    for path in files:
      if not _path(path).is_file():
        raise MindJaxError(f"{path}: input file does not exist")
  except OSError as e:
    raise MindJaxError(f"{source}: cannot list input ({e})") from e
  if not files:
    raise MindJaxError(f"{source}: no input files match")
  for path in files:
    if not _kind(path):
      raise MindJaxError(f"{path}: unknown input format (expected .jsonl, .json, .parquet, "
                         "optionally .gz/.bz2/.xz compressed)")
  return files


def _expand_remote(source: str) -> list[str]:
  """gs://bucket/dir, gs://bucket/dir/*.parquet or one object; no recursive ** on object stores
  (each level is a listing request)."""
  path = _path(source)
  if any(ch in source for ch in "*?["):
    return sorted(str(p) for p in path.parent.glob(path.name))
  if path.is_dir():
    return sorted(str(p) for p in path.iterdir() if _kind(p.name))
  return [source]


def _kind(name: str) -> str | None:
  base = name.lower()
  for suffix in (".gz", ".bz2", ".xz"):
    base = base.removesuffix(suffix)
  if base.endswith((".jsonl", ".json", ".ndjson")):
    return "jsonl"
  if base.endswith(".parquet") and base == name.lower():
    return "parquet"
  return None


def _open_binary(path: str):
  try:
    raw = _path(path).open("rb")
  except OSError as e:
    raise MindJaxError(f"{path}: cannot open ({e.strerror or e})") from e
  wrap = {".gz": gzip.GzipFile, ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}.get(
      os.path.splitext(path)[1])
  return wrap(fileobj=raw) if wrap is gzip.GzipFile else wrap(raw) if wrap else raw


def read_documents(source: str, text_field: str = "text", id_field: str | None = "id",
                   on_bad_record: str = "error", stats: ReadStats | None = None,
                   limit: int | None = None, split: str = "train",
                   data_dir: str | None = None) -> Iterator[Document]:
  """Streams documents from `source` (see `expand`), at most `limit` of them; ids default to
  `file:line`. `split` picks the split of a `datasets` DatasetDict directory or of a
  `tfds:name[/config][:split]` source (read from `data_dir`, without TensorFlow)."""
  if on_bad_record not in ("error", "skip"):
    raise MindJaxError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
  stats = stats if stats is not None else ReadStats()
  for path in expand(source):
    for _, where, record, problem in numbered_records(path, source, split, data_dir):
      if problem is None:
        problem = check_record(record, text_field, id_field)
      if problem:
        if on_bad_record == "error":
          raise MindJaxError(f"{where}: {problem} (use on_bad_record=skip to skip such records)")
        stats["bad_records"] += 1
        continue
      text = record[text_field]
      if not text.strip():
        stats["empty_documents"] += 1
        continue
      if limit is not None and stats["documents"] >= limit:
        return
      stats["documents"] += 1
      doc_id = str(record[id_field]) if id_field and record.get(id_field) is not None else where
      yield Document(id=doc_id, text=text)


def check_record(record, text_field, id_field=None) -> str | None:
  """Why a record cannot give a document (not an object, no text field, text not a string),
  or None."""
  if not isinstance(record, dict):
    return f"record is a {type(record).__name__}, not an object"
  if text_field not in record:
    return f"missing text field {text_field!r}"
  if not isinstance(record[text_field], str):
    return f"text field {text_field!r} is {type(record[text_field]).__name__}, not a string"
  return None


def _label(path: str, source: str) -> str:
  """How a file is named in default document ids: its path below the source's root (the
  directory given, or the part of a glob before its first wildcard), so two files with the
  same name in different folders never give the same ids."""
  root = source
  if any(ch in source for ch in "*?["):
    root = glob_root(source)
  elif not _path(source).is_dir():
    root = os.path.dirname(source)
  if "://" in path:
    return path[len(root):].lstrip("/") if root and path.startswith(root) else path
  return os.path.relpath(path, root or ".")


def glob_root(source: str) -> str:
  """The folder a glob's matches lie below: its path up to the last '/' before a wildcard
  ('' when the glob starts with one); a source without wildcards as it is."""
  wildcards = [source.index(ch) for ch in "*?[" if ch in source]
  return source[:min(wildcards)].rpartition("/")[0] if wildcards else source


def part_files(out_dir: str) -> list[str]:
  """The record part files (part-*.jsonl, part-*.parquet) a job wrote into `out_dir`, sorted."""
  root = _path(out_dir)
  if not root.exists():
    return []
  return sorted(str(p) for pattern in ("part-*.jsonl", "part-*.parquet") for p in root.glob(pattern))


def iter_records(path: str, label: str | None = None) -> Iterator[tuple[str, object, str | None]]:
  """(where, record, problem) for each record of one JSONL or Parquet file, streaming.

  `where` is `label:line` (`label` defaults to the path); a record that cannot be decoded
  comes with a one-line `problem` instead, so callers decide whether to stop or skip.
  """
  return ((w, r, p) for _, w, r, p in _file_records(path, label or path))


def numbered_records(path: str, source: str, split: str = "train", data_dir: str | None = None,
                     start: int = 0) -> Iterator[tuple[int, str, object, str | None]]:
  """(item, where, record, problem) for one entry of `expand(source)`, from item `start` on.

  An item is what a position in the input counts: a line of a JSONL file (blank ones
  included), a row of a Parquet file or `datasets` directory, an example of a TFDS split, a
  CHAMP problem. Items are numbered from 1, so `start=n` resumes after the n-th; skipping to
  it reads no JSON (and no Parquet row group before it).
  """
  if path == CHAMP_SOURCE:
    return itertools.islice(((i, w, r, p) for i, (w, r, p) in enumerate(_champ_records(), 1)),
                            start, None)
  if path.startswith(TFDS_PREFIX):
    return _tfds_records(path, split, data_dir, start)
  if _is_datasets_dir(path):
    return _datasets_records(path, split, start)
  return _file_records(path, _label(path, source), start)


def _file_records(path, label, start=0):
  return (_parquet_records if _kind(path) == "parquet" else _jsonl_records)(path, label, start)


def _jsonl_records(path, label, start=0):
  # Lines are decoded one by one, so a line that is not UTF-8 is reported (or skipped) alone.
  name = label
  with _open_binary(path) as f:
    line_number = 0
    while line_number < start:
      try:
        if not f.readline():
          return
      except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise MindJaxError(f"{path}: unreadable after line {line_number} ({e})") from e
      line_number += 1
    while True:
      try:
        raw = f.readline()
      except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:  # truncated or damaged
        raise MindJaxError(f"{path}: unreadable after line {line_number} ({e})") from e
      if not raw:
        return
      line_number += 1
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield line_number, f"{path}:{line_number}", None, (f"not valid UTF-8 ({e.reason} at "
                                                            f"byte {e.start})")
        continue
      # A line can be one huge document: at most two copies of it at a time (bytes and str,
      # then str and record), and only the record while the reader waits.
      del raw
      if line.isspace():  # unlike strip(), no copy of the line
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        # Some of json's messages end in "at" ("Invalid control character at").
        reason = e.msg.removesuffix(" at")
        yield line_number, f"{path}:{line_number}", None, (f"malformed JSON ({reason} at "
                                                            f"column {e.colno})")
        continue
      del line
      yield line_number, f"{name}:{line_number}", record, None


def _parquet_records(path, label, start=0):
  import pyarrow.parquet as pq
  try:
    table = pq.ParquetFile(_path(path).open("rb"))
  except Exception as e:  # noqa: BLE001  pyarrow raises several types for bad files
    raise MindJaxError(f"{path}: not a readable Parquet file ({e})") from e
  name, row, group = label, 0, 0
  groups = table.metadata.num_row_groups
  while group < groups and row + table.metadata.row_group(group).num_rows <= start:
    row += table.metadata.row_group(group).num_rows  # whole groups before `start`: never read
    group += 1
  batches = table.iter_batches(batch_size=1024, row_groups=range(group, groups))
  while True:
    try:
      batch = next(batches, None)
    except Exception as e:  # noqa: BLE001
      raise MindJaxError(f"{path}: unreadable after row {row} ({e})") from e
    if batch is None:
      return
    for record in batch.to_pylist():
      row += 1
      if row > start:
        yield row, f"{name}:{row}", record, None


def _datasets_records(path, split, start=0):
  try:
    import datasets
  except ModuleNotFoundError as e:
    raise MindJaxError(f"{path}: a Hugging Face datasets directory; pip install datasets "
                       "to read it") from e
  loaded = datasets.load_from_disk(path)
  if isinstance(loaded, datasets.DatasetDict):
    if split not in loaded:
      raise MindJaxError(f"{path}: no split {split!r} (has {', '.join(loaded)}); set input.split")
    loaded = loaded[split]
  name = os.path.basename(os.path.normpath(path))
  for row, record in enumerate(loaded.select(range(start, len(loaded))), start=start + 1):
    yield row, f"{name}:{row}", record, None


def _tfds_records(source, default_split, data_dir, start=0):
  """A prepared TFDS dataset (array_record files) through tfds.data_source: random access,
  no TensorFlow. Text features arrive as bytes and are decoded here."""
  try:
    import tensorflow_datasets as tfds
  except ModuleNotFoundError as e:
    raise MindJaxError(f"{source}: pip install tensorflow-datasets (the tfds extra) to read "
                       "TFDS sources") from e
  name, _, split = source[len(TFDS_PREFIX):].partition(":")
  split = split or default_split
  try:
    data = tfds.data_source(name, split=split, data_dir=data_dir)
  except Exception as e:  # noqa: BLE001  tfds raises many types for a missing dataset
    raise MindJaxError(f"{source}: cannot open the TFDS data source "
                       f"({str(e).splitlines()[0]})") from e
  for index in range(start, len(data)):
    where = f"{source}[{index}]"
    record = {k: _decode(v) for k, v in data[index].items()}
    bad = [k for k, v in record.items() if v is _UNDECODABLE]
    yield index + 1, where, record, f"field {bad[0]!r} is not valid UTF-8" if bad else None


_UNDECODABLE = object()


def _decode(value):
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return _UNDECODABLE
  return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


def _champ_file():
  from importlib import resources
  return resources.files("champ_dataset") / "dataset_files" / "v0.json"


def champ_problems() -> dict[str, dict]:
  """The CHAMP competition problems (MIT licence) by id, as the installed `champ-dataset`
  package stores them: `_text` the statement, `_answer` the answer, `solution` its steps."""
  try:
    return json.loads(_champ_file().read_text())["problems"]
  except (ModuleNotFoundError, FileNotFoundError) as e:
    raise MindJaxError(f"champ: the champ-dataset package is not installed ({e}); "
                       "pip install champ-dataset") from e


def _champ_records():
  """CHAMP, one document per problem: statement, worked solution and answer."""
  for identifier, problem in champ_problems().items():
    steps = problem["solution"]["steps"] if isinstance(problem["solution"], dict) else []
    solution = "\n".join(step["_text"] for step in steps)
    text = f"Problem. {problem['_text']}\n\nSolution.\n{solution}\n\nAnswer: {problem['_answer']}"
    yield f"champ:{identifier}", {"id": identifier, "text": text}, None
