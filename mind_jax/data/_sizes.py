"""How many documents and tokens a source holds: counted when small, else estimated."""

from __future__ import annotations

import dataclasses
import json
import os

from mind_jax.data._framing import Framing
from mind_jax.data._readers import _champ_file, _kind, _path
from mind_jax.data._sources import READ_BATCH, READ_CHARS, Source, _records


@dataclasses.dataclass(frozen=True)
class SourceSize:
  """How many documents and tokens one source holds (estimated unless `exact`)."""

  documents: float
  tokens: float
  exact: bool


def _first_documents(source: Source, limit: int, lengths=None) -> tuple[int, int, int, int, bool]:
  """(documents among the first `limit`, their framed token count by `lengths` (0 without),
  items read, their JSONL bytes, whether that was the whole source). Texts are counted a
  READ_BATCH or READ_CHARS at a time, never all held: a source of huge documents holds one."""
  documents = tokens = items = sample_bytes = chars = 0
  texts = []
  for path in source.files:
    for _, _, record, problem in _records(source, path):
      items += 1
      if problem or source.problem(record) or not source.wanted(record):
        continue
      text = source.text(record)
      if _kind(path) == "jsonl":
        sample_bytes += _json_bytes(record) + 1
      if not text or text.isspace():  # unlike strip(), no copy of a huge text
        continue
      if documents == limit:
        return documents, tokens + _total(lengths, texts), items, sample_bytes, False
      documents += 1
      if lengths is not None:
        texts.append(text)
        chars += len(text)
        if len(texts) == READ_BATCH or chars >= READ_CHARS:
          tokens += _total(lengths, texts)
          texts, chars = [], 0
  return documents, tokens + _total(lengths, texts), items, sample_bytes, True


def _total(lengths, texts) -> int:
  return sum(lengths(texts)) if texts else 0


def _json_bytes(record) -> int:
  """The UTF-8 size of `record` as one JSON line, a chunk at a time (dumps and encode would
  be two more copies of a huge record)."""
  chunks = json.JSONEncoder(ensure_ascii=False).iterencode(record)
  return sum(len(c) if c.isascii() else len(c.encode()) for c in chunks)


def documents_up_to(source: Source, limit: int) -> int | None:
  """The source's document count if it holds at most `limit` (read, not tokenized), else None."""
  documents, _, _, _, whole = _first_documents(source, limit)
  return documents if whole else None


def source_size(source: Source, framing: Framing, sample: int = 1024) -> SourceSize:
  """Reads the first `sample` documents (tokenized, as training frames them); when the source
  holds more, scales by its item count (from metadata where the format has one, else from
  the bytes the sample took of the files)."""
  documents, tokens, items, sample_bytes, whole = _first_documents(source, sample,
                                                                   framing.lengths)
  if whole:
    return SourceSize(documents, tokens, exact=True)
  scale = _item_count(source, items, sample_bytes) / max(items, 1)
  return SourceSize(documents * scale, tokens * scale, exact=False)


def _item_count(source: Source, items_read: int, sample_bytes: int) -> float:
  total = 0.0
  for path in source.files:
    if path == "champ":
      total += len(json.loads(_champ_file().read_text())["problems"])
      continue
    if path.startswith("tfds:") or _kind(path) is None:  # random-access formats know their size
      return float(_random_access_length(source, path))
    if _kind(path) == "parquet":
      import pyarrow.parquet as pq
      total += pq.ParquetFile(_path(path).open("rb")).metadata.num_rows
    elif os.path.splitext(path)[1] in (".gz", ".bz2", ".xz"):
      total += sum(1 for _ in _records(source, path))  # no byte size to scale by: count
    else:
      total += _path(path).stat().length * items_read / max(sample_bytes, 1)
  return total


def _random_access_length(source: Source, path: str) -> int:
  if path.startswith("tfds:"):
    import tensorflow_datasets as tfds
    name, _, split = path[len("tfds:"):].partition(":")
    return len(tfds.data_source(name, split=split or source.split, data_dir=source.data_dir))
  import datasets
  loaded = datasets.load_from_disk(path)
  return len(loaded[source.split] if isinstance(loaded, datasets.DatasetDict) else loaded)
