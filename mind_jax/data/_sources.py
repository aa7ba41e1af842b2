"""One training source: its documents as a resumable, shardable Grain stream of token pieces.

A source is anything `read_documents` reads (JSONL/Parquet files, directories, globs, gs://,
`datasets` directories, `tfds:` datasets, the bundled CHAMP problems) or the output of
`mind_jax.filter` / `mind_jax.generate` (conversation records). It is read as a stream, never
held whole: its position is (epoch, file, item, piece), which is all a checkpoint stores, and
a restore reopens the file at that item. Each epoch visits the files of this shard in a new
seeded order; the order inside a file is the file's (the window shuffle downstream mixes it).

Shards (hosts, then worker processes within a host) take whole files when there are at least
as many files as shards, and every n-th item of each file otherwise, so no two shards read the
same document and together they read them all.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal, Protocol

import grain
import numpy as np

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError
from mind_jax.data._readers import check_record, expand, numbered_records, part_files
from mind_jax.data._select import group_winners
from mind_jax.text import LONG_TEXT

# Jobs whose output directories hold conversation records (run.json "job").
CONVERSATION_JOBS = ("filter", "generate")
# How many documents are read and tokenized together (one call of the Rust tokenizer).
READ_BATCH = 256
# Characters a stream reads ahead at most (besides the one document that may exceed it): a
# source of one huge document, taken READ_BATCH times over its epochs, held that many copies.
READ_CHARS = 4_000_000


class SourceSection(config_lib.Section):
  """One input of the training mix."""

  path: str = config_lib.result(
      description="a corpus as generate reads it (file, dir, glob, gs://, datasets dir, "
      "tfds:NAME[:SPLIT], champ) or a mind_jax.filter / generate output dir")
  name: str | None = config_lib.result(
      None, description="label in reports and metrics (default: from the path)")
  weight: float = config_lib.result(
      1.0, ge=0, description="share of the training tokens, relative to the other sources")
  use: Literal["auto", "raw", "conversation", "raw+conversation"] = config_lib.result(
      "auto", description="what a record gives: its text (raw), its conversation, or the raw "
      "chunk followed by its conversation; auto: conversation for filter/generate outputs, "
      "raw otherwise")
  text_field: str | None = config_lib.result(
      None, description="record field with the text (default: text, or conversation)")
  styles: list[str] | None = config_lib.result(
      None, description="conversation sources: keep only these styles (e.g. [two_students])")
  select: Literal["all", "longest_per_chunk"] = config_lib.result(
      "all", description="conversation sources: all records, or the longest conversation of "
      "each chunk (the paper's 'Longest Conversation')")
  split: str = config_lib.result("train", description="split of a datasets dir or tfds source")
  data_dir: str | None = config_lib.result(None, description="TFDS data dir (tfds: sources)")
  on_bad_record: Literal["error", "skip"] = config_lib.result(
      "error", description="a record that cannot be read: stop naming it, or skip and count it")


@dataclasses.dataclass(frozen=True)
class Source:
  """A source section resolved against the files it names."""

  name: str
  path: str
  files: tuple[str, ...]
  use: str  # raw | conversation | raw+conversation
  text_field: str
  styles: frozenset[str] | None
  keep_ids: np.ndarray | None  # sorted id hashes that `select` keeps (None: all)
  split: str
  data_dir: str | None
  on_bad_record: str

  def text(self, record: dict) -> str:
    if self.use == "raw+conversation":
      return f"{record['source']}\n\n{record[self.text_field]}"
    return record[self.text_field]

  def problem(self, record) -> str | None:
    """Why `record` cannot give this source's text, or None."""
    problem = check_record(record, self.text_field)
    if problem is None and self.use == "raw+conversation":
      problem = check_record(record, "source")
    return problem

  def wanted(self, record: dict) -> bool:
    if self.styles is not None and record.get("style") not in self.styles:
      return False
    return self.keep_ids is None or _in_sorted(self.keep_ids, id_hash(record.get("id")))


def _job_dir(path: str) -> tuple[str, str] | None:
  """(job, directory of its run.json) when `path` is a mind_jax job's output (or its kept/)."""
  if "://" in path or not os.path.isdir(path):
    return None
  for directory in (path, os.path.dirname(os.path.normpath(path))):
    record = os.path.join(directory, "run.json")
    if os.path.isfile(record):
      try:
        with open(record) as f:
          job = json.load(f).get("job")
      except (OSError, json.JSONDecodeError, AttributeError):
        continue
      if job in CONVERSATION_JOBS and (directory == path or job == "filter"):
        return job, directory
  return None


def resolve_source(section: SourceSection, key: str) -> Source:
  """The files and reading rules of one source; every problem is one line naming `key`."""
  job = _job_dir(section.path)
  if job is not None:
    name, directory = job
    parts = part_files(os.path.join(directory, "kept") if name == "filter" else directory)
    if not parts:
      raise MindJaxError(f"{key}.path={section.path}: a {name} output with no part files yet")
    files = tuple(parts)
  else:
    try:
      files = tuple(expand(section.path))
    except MindJaxError as e:
      raise MindJaxError(f"{key}.path: {e}") from e
  use = section.use if section.use != "auto" else ("conversation" if job else "raw")
  if job is not None and use == "raw":
    raise MindJaxError(f"{key}: use=raw on the {job[0]} output {section.path} would repeat each "
                       "chunk once per style; name the raw corpus the conversations came from "
                       "as its own source")
  if use == "raw" and (section.styles is not None or section.select != "all"):
    raise MindJaxError(f"{key}: styles and select apply to conversation records; this source "
                       "is used as raw text")
  source = Source(
      name=section.name or _default_name(section.path), path=section.path, files=files, use=use,
      text_field=section.text_field or ("text" if use == "raw" else "conversation"),
      styles=frozenset(section.styles) if section.styles is not None else None, keep_ids=None,
      split=section.split, data_dir=section.data_dir, on_bad_record=section.on_bad_record)
  _check_first_record(source, key)
  if section.select == "longest_per_chunk":
    source = dataclasses.replace(source, keep_ids=_longest_per_chunk(source, key))
  return source


def _default_name(path: str) -> str:
  path = os.path.normpath(path.rstrip("/"))
  base = os.path.basename(path)
  return os.path.basename(os.path.dirname(path)) if base == "kept" else base or path


def _check_first_record(source: Source, key: str) -> None:
  """A missing text field found now, in one line, rather than minutes into a run."""
  for _, where, record, problem in _records(source, source.files[0]):
    problem = problem or source.problem(record)
    if problem and source.on_bad_record == "error":
      raise MindJaxError(f"{key} ({source.path}): {where}: {problem}")
    if not problem:
      return


def _records(source: Source, path: str, start: int = 0):
  return numbered_records(path, source.path, source.split, source.data_dir, start)


def id_hash(value) -> int:
  return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "little")


def _in_sorted(array: np.ndarray, value: int) -> bool:
  i = np.searchsorted(array, np.uint64(value))
  return bool(i < len(array) and array[i] == value)


def _longest_per_chunk(source: Source, key: str) -> np.ndarray:
  """Id hashes of the longest conversation of each (doc_id, chunk_index): one pass over the
  source holding three integers per record, whatever the order the records come in (ties go
  to the record read first)."""
  chunks, lengths, ids = [], [], []
  for path in source.files:
    for _, where, record, problem in _records(source, path):
      problem = problem or source.problem(record)
      if problem or not source.wanted(record):
        if problem and source.on_bad_record == "error":
          raise MindJaxError(f"{key}: {where}: {problem}")
        continue
      if "doc_id" not in record or "chunk_index" not in record:
        raise MindJaxError(f"{key}: {where}: select=longest_per_chunk needs doc_id and "
                           "chunk_index (records written by mind_jax.generate)")
      chunks.append(id_hash(f"{record['doc_id']}#{record['chunk_index']}"))
      length = record.get("output_tokens")
      lengths.append(length if isinstance(length, int) else len(source.text(record)))
      ids.append(id_hash(record.get("id")))
  if not chunks:
    raise MindJaxError(f"{key}: no records to select from in {source.path}")
  ids = np.array(ids, dtype=np.uint64)
  winner = group_winners(np.array(chunks, dtype=np.uint64), np.array(lengths, dtype=np.int64))
  return np.sort(ids[np.unique(winner)])


class Encoder(Protocol):
  """What a stream tokenizes with (`Framing`): many documents' framed ids at once, or one
  document's in consecutive chunks."""

  def __call__(self, texts: Sequence[str]) -> list[np.ndarray]:
    ...

  def chunks(self, text: str) -> Iterator[np.ndarray]:
    ...


class DocumentStream(grain.IterDataset):
  """Token pieces of one source's documents, forever (epoch after epoch), for one shard.

  Each element is {"tokens": int32[n], "source": int32[n]} (the source's index + 1 on every
  token, so shares can be counted after packing); documents longer than `max_piece` come as
  consecutive pieces of at most `max_piece` tokens, nothing dropped. A text over `LONG_TEXT`
  characters is cut as its ids arrive window by window, a piece at a time, so memory holds
  the text and one window, whatever its token count.
  """

  def __init__(self, source: Source, index: int, encode: Encoder, *, seed: int,
               max_piece: int | None, shard: tuple[int, int] = (0, 1)):
    super().__init__()
    self.source, self.index, self.encode = source, index, encode
    self.seed, self.max_piece, self.shard = seed, max_piece, shard

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    """Grain's hook for worker processes: worker w of m takes shard w of m of this shard."""
    del sequential_slice  # shards are files or strided items either way
    index, count = self.shard
    self.shard = (index + count * (sl.start or 0), count * (sl.step or 1))

  def __iter__(self) -> _DocumentIterator:
    return _DocumentIterator(self)

  def __str__(self) -> str:
    return f"DocumentStream({self.source.name}, shard {self.shard[0]} of {self.shard[1]})"


@dataclasses.dataclass
class _Position:
  epoch: int = 0
  file: int = 0  # index into the epoch's file order
  item: int = 0  # items of that file already behind us
  piece: int = 0  # pieces of the next document already emitted


class _DocumentIterator(grain.DatasetIterator):

  def __init__(self, stream: DocumentStream):
    super().__init__()
    self.stream = stream
    source = stream.source
    index, count = stream.shard
    if len(source.files) >= count:
      self.files, self.stride = source.files[index::count], None
    else:
      self.files, self.stride = source.files, (index, count)
    self.position = _Position()
    self.buffer: collections.deque[tuple[dict, _Position]] = collections.deque()
    self.document: Iterator[tuple[dict, _Position]] | None = None  # a long one, being cut
    self.records = None  # open reader at `self.read_at`
    self.read_at = _Position()

  # --- state ---------------------------------------------------------------------------------
  def get_state(self) -> dict:
    return dataclasses.asdict(self.position)

  def set_state(self, state: dict) -> None:
    self.position = _Position(**state)
    self.buffer, self.document, self.records = collections.deque(), None, None

  # --- reading -------------------------------------------------------------------------------
  def _order(self, epoch: int) -> list[int]:
    order = np.arange(len(self.files))
    if len(order) > 1:
      np.random.default_rng([self.stream.seed, self.stream.index, epoch]).shuffle(order)
    return order.tolist()

  def _open(self, at: _Position):
    path = self.files[self._order(at.epoch)[at.file]]
    self.records = _records(self.stream.source, path, at.item)
    self.read_at = dataclasses.replace(at, piece=0)

  def _streamed(self, text: str) -> bool:
    """Whether `text` is cut into pieces as its windows are encoded, not encoded with others."""
    return self.stream.max_piece is not None and len(text) > LONG_TEXT

  def _next_documents(self, limit: int) -> list[tuple[str, _Position, int]]:
    """Up to `limit` (text, position of the document, pieces to skip) from the reader; a
    streamed one (`_streamed`) ends the list, so that its pieces follow those before it."""
    source = self.stream.source
    found, ends_without_documents = [], 0
    skip = self.position.piece if self.records is None else 0
    if self.records is None:
      self._open(self.position)
    chars = 0
    while len(found) < limit and chars < READ_CHARS:
      entry = next(self.records, None)
      at = self.read_at
      if entry is None:  # end of file: the next one, or the next epoch
        ends_without_documents += 1
        # 2n ends in a row take in one whole epoch (each epoch orders the files anew).
        if ends_without_documents > 2 * len(self.files):
          raise MindJaxError(f"source {source.name} ({source.path}): no documents for shard "
                             f"{self.stream.shard[0]} of {self.stream.shard[1]}")
        at = _Position(at.epoch, at.file + 1, 0)
        if at.file == len(self.files):
          at = _Position(at.epoch + 1, 0, 0)
        self._open(at)
        continue
      item, where, record, problem = entry
      start = dataclasses.replace(at, item=item - 1, piece=0)
      self.read_at = dataclasses.replace(at, item=item)
      if self.stride is not None and (item - 1) % self.stride[1] != self.stride[0]:
        continue
      problem = problem or source.problem(record)
      if problem:
        if source.on_bad_record == "error":
          raise MindJaxError(f"source {source.name}: {where}: {problem} (on_bad_record=skip "
                             "skips such records)")
        continue
      if not source.wanted(record):
        continue
      text = source.text(record)
      if not text or text.isspace():  # unlike strip(), no copy of a huge text
        continue
      ends_without_documents = 0
      found.append((text, start, skip))
      chars += len(text)
      skip = 0
      if self._streamed(text):
        break
    return found

  def _fill(self) -> None:
    documents = self._next_documents(READ_BATCH)
    streamed = documents.pop() if documents and self._streamed(documents[-1][0]) else None
    encoded = self.stream.encode([text for text, _, _ in documents]) if documents else []
    for (_, start, skip), tokens in zip(documents, encoded, strict=True):
      self.buffer.extend(self._pieces([tokens], start, skip))
    if streamed is not None:
      text, start, skip = streamed
      self.document = self._pieces(self.stream.encode.chunks(text), start, skip)

  def _pieces(self, chunks: Iterable[np.ndarray], start: _Position, skip: int
              ) -> Iterator[tuple[dict, _Position]]:
    """(element, position after it) of each `max_piece` piece of the document at `start`
    whose framed ids come as `chunks`, from piece `skip` on. A full piece waits for the next
    token: only then is it known not to be the document's last (whose position is the next
    item's), so a lazy `chunks` is read one window ahead, never more."""
    size, label = self.stream.max_piece, self.stream.index + 1
    held, number = np.zeros(0, np.int32), 0
    for chunk in chunks:
      held = np.concatenate([held, chunk]) if len(held) else chunk
      while size is not None and len(held) > size:
        if number >= skip:
          yield _element(held[:size], label), dataclasses.replace(start, piece=number + 1)
        held, number = held[size:], number + 1
    if len(held) and number >= skip:
      yield _element(held, label), dataclasses.replace(start, item=start.item + 1, piece=0)

  def __next__(self) -> dict:
    while not self.buffer:
      if self.document is None:
        self._fill()
      elif (piece := next(self.document, None)) is not None:
        self.buffer.append(piece)
      else:
        self.document = None
    element, self.position = self.buffer.popleft()
    return element


def _element(tokens: np.ndarray, label: int) -> dict:
  return {"tokens": tokens, "source": np.full(len(tokens), label, np.int32)}
