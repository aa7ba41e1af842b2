"""The training data pipeline: sources mixed by token share, shuffled, packed and batched.

    source 1 --> DocumentStream --> window shuffle --\
    source 2 --> DocumentStream --> window shuffle ----> TokenMix --> pack --> batch --> inputs
    ...                                              /

Everything is a Grain IterDataset, so the whole pipeline's position is one JSON-able state
(`get_state` / `set_state`, or Grain's Orbax handler) and a restored iterator yields exactly
the batches an uninterrupted one would. Each host builds it for its own share of every
source (`shard=(process_index, process_count)`); worker processes split that share again.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Literal

import grain
import numpy as np
import pydantic

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError
from mind_jax.data._readers import _champ_file, _kind, _path
from mind_jax.data._sources import (READ_BATCH, READ_CHARS, DocumentStream, Source, SourceSection,
                                    _records, resolve_source)

# Per-token features the model reads; "source" stays on the host (shares, per-source losses).
MODEL_INPUTS = ("tokens", "segment_ids", "positions", "targets", "loss_weights")


class DataSection(config_lib.Section):
  """What training reads: sources and weights, tokenization, packing, shuffling."""

  sources: list[SourceSection] = pydantic.Field(
      default_factory=lambda: [SourceSection(path="champ")],
      description="inputs with their weights (a list of source sections; see `mind_jax.mix "
      "--help`)")
  seq_len: int = config_lib.result(4096, ge=2, description="tokens per training sequence")
  packing: Literal["first_fit", "concat"] = config_lib.result(
      "first_fit", description="first_fit: whole documents per sequence (longer ones split "
      "into seq_len pieces), padding the rest; concat: one stream cut every seq_len tokens, "
      "no padding, documents cut at sequence ends")
  pack_bins: int = config_lib.result(
      256, ge=1, description="first_fit: sequences filled side by side; more bins, less padding")
  shuffle_window: int = config_lib.result(
      10_000, ge=1, description="documents (per source and host) shuffled together; 1: off")
  tokenizer: str | None = config_lib.result(
      None, description="tokenizer dir or 'byte' (default: the model's)")
  add_bos: bool = config_lib.result(True, description="start each document with the BOS id")
  add_eos: bool = config_lib.result(True, description="end each document with the EOS id")
  shards: int | None = config_lib.result(
      None, ge=1, description="independent pipelines the global batch is made of, each reading "
      "its share of every source (default: one per host). Fixed, the data a run sees does not "
      "depend on how many hosts read it; a multiple of the host count")
  workers: int = config_lib.speed(
      0, ge=0, description="worker processes per host reading and packing (0: in the training "
      "process; the Rust tokenizer already uses every core); changing it changes the order")
  prefetch: int = config_lib.speed(2, ge=0, description="batches placed on the devices ahead")

  @pydantic.model_validator(mode="after")
  def _weights(self):
    if not self.sources:
      raise ValueError("data.sources is empty; name at least one source")
    if not sum(s.weight for s in self.sources) > 0:
      raise ValueError("data.sources: the weights sum to 0; give a source a positive weight")
    return self


@dataclasses.dataclass(frozen=True)
class Mixture:
  """The resolved sources of a data section (those with a positive weight) and their shares."""

  sources: tuple[Source, ...]
  shares: tuple[float, ...]


def resolve_mixture(data: DataSection) -> Mixture:
  """Checks every source (files exist, text field present) before any work; one line each."""
  picked = [(i, s) for i, s in enumerate(data.sources) if s.weight > 0]
  sources = tuple(resolve_source(s, f"data.sources[{i}]") for i, s in picked)
  names = [s.name for s in sources]
  for name in names:
    if names.count(name) > 1:
      raise MindJaxError(f"data.sources: two sources are named {name!r}; give one a name")
  total = sum(s.weight for _, s in picked)
  return Mixture(sources, tuple(s.weight / total for _, s in picked))


class Framing:
  """Texts -> int32 token ids of whole documents: BOS + text + EOS as the tokenizer defines
  them (a tokenizer without one of them frames without it). Picklable for worker processes."""

  def __init__(self, tokenizer, add_bos: bool = True, add_eos: bool = True):
    self.tokenizer = tokenizer
    self.head = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
    self.tail = [tokenizer.eos_ids[0]] if add_eos and tokenizer.eos_ids else []

  def __call__(self, texts) -> list[np.ndarray]:
    return [np.concatenate([self.head, ids, self.tail]).astype(np.int32)
            for ids in self.tokenizer.encode_batch(texts)]

  def chunks(self, text: str) -> Iterator[np.ndarray]:
    """One document's framed ids as consecutive int32 arrays, BOS on the first and EOS on
    the last: window by window for a long text (`Tokenizer.encode_windows`), so a reader that
    cuts them into pieces holds one window's ids, not the document's."""
    windows = self.tokenizer.encode_windows(text)
    held = np.concatenate([self.head, next(windows, [])]).astype(np.int32)
    for ids in windows:
      yield held
      held = ids
    yield np.concatenate([held, self.tail]).astype(np.int32)

  def lengths(self, texts) -> list[int]:
    """The framed token counts of `texts` (`Tokenizer.count_tokens`: a long one's counted
    window by window)."""
    framing = len(self.head) + len(self.tail)
    return [framing + n for n in self.tokenizer.count_tokens(texts)]


class TokenMix(grain.IterDataset):
  """Interleaves its parents so that each one's share of the tokens follows `shares`.

  Deterministic: the next element comes from the parent furthest below its share (tokens
  taken / share smallest; ties to the first), so after any number of elements each share is
  off by less than one document. The state is the tokens taken per parent and their states.
  """

  def __init__(self, parents, shares):
    super().__init__(list(parents))
    self.shares = tuple(shares)

  def __iter__(self):
    return _TokenMixIterator([p.__iter__() for p in self.parents], self.shares)

  def __str__(self):
    return f"TokenMix({self.shares})"


class _TokenMixIterator(grain.DatasetIterator):

  def __init__(self, parents, shares):
    super().__init__(parents)
    self.shares = shares
    self.taken = [0] * len(parents)

  def __next__(self):
    pick = min(range(len(self.shares)), key=lambda i: self.taken[i] / self.shares[i])
    element = next(self._parents[pick])
    self.taken[pick] += len(element["tokens"])
    return element

  def get_state(self):
    return {"taken": list(self.taken), "parents": [p.get_state() for p in self._parents]}

  def set_state(self, state):
    self.taken = list(state["taken"])
    for parent, parent_state in zip(self._parents, state["parents"], strict=True):
      parent.set_state(parent_state)


class _JsonSafeState(grain.IterDataset):
  """Passes its parent through; on restore, turns the lists that JSON made of Grain's
  concat-then-split slice tuples back into tuples. Grain (0.2.x) marks an empty remainder with
  the tuple (-1, -1) and compares against it; a state saved as JSON brings it back as the list
  [-1, -1], which compares unequal, so without this a restored packer resumes wrongly."""

  def __iter__(self):
    return _JsonSafeIterator(self._parent.__iter__())


class _JsonSafeIterator(grain.DatasetIterator):

  def __next__(self):
    return next(self._parent)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    state = dict(state)
    if "remainder_slices" in state:
      state["remainder_slices"] = {k: tuple(v) for k, v in state["remainder_slices"].items()}
    self._parent.set_state(state)


def model_inputs(packed: dict) -> dict:
  """A packed batch -> what the train step reads: tokens, segment_ids (0: padding),
  positions (from 0 in each segment), next-token targets, and loss weights that are 1 only
  where the target is the next token of the same segment (0 on padding and at segment ends)."""
  tokens = packed["tokens"].astype(np.int32)
  segments = packed["tokens_segment_ids"].astype(np.int32)
  targets = np.zeros_like(tokens)
  targets[:, :-1] = tokens[:, 1:]
  weights = np.zeros(tokens.shape, np.float32)
  weights[:, :-1] = (segments[:, :-1] != 0) & (segments[:, 1:] == segments[:, :-1])
  return {"tokens": tokens, "segment_ids": segments,
          "positions": packed["tokens_positions"].astype(np.int32), "targets": targets,
          "loss_weights": weights, "source": packed["source"].astype(np.int32)}


def whole_document_rows(tokens: np.ndarray) -> dict:
  """Rows that are each one document (the benchmarks' random tokens) as the train step reads
  them: model_inputs of a batch with nothing packed."""
  positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  inputs = model_inputs({"tokens": tokens, "tokens_segment_ids": np.ones_like(tokens),
                         "tokens_positions": positions, "source": np.zeros_like(tokens)})
  return {k: inputs[k] for k in MODEL_INPUTS}


def host_dataset(data: DataSection, mixture: Mixture, framing: Framing, *, batch_size: int,
                 seed: int, host: int = 0, hosts: int = 1) -> grain.IterDataset:
  """This host's part of each global batch of `batch_size`: the batches of its data shards
  (`data.shards`, default one per host) side by side, shard k's rows before shard k+1's."""
  shards = data.shards or hosts
  if shards % hosts:
    raise MindJaxError(f"data.shards={shards}: not a multiple of the {hosts} hosts")
  if batch_size % shards:
    raise MindJaxError(f"batch_size={batch_size}: not divisible by data.shards={shards}")
  mine = range(host * shards // hosts, (host + 1) * shards // hosts)
  parts = [training_dataset(data, mixture, framing, batch_size=batch_size // shards, seed=seed,
                            shard=(k, shards)) for k in mine]
  if len(parts) == 1:
    return parts[0]
  return grain.experimental.ZipIterDataset(parents=parts).map(
      lambda batches: {k: np.concatenate([b[k] for b in batches]) for k in batches[0]})


def training_dataset(data: DataSection, mixture: Mixture, framing: Framing, *, batch_size: int,
                     seed: int, shard: tuple[int, int] = (0, 1)) -> grain.IterDataset:
  """This host's batches of `batch_size` sequences (dicts of numpy arrays, see
  `model_inputs`), forever. A source smaller than the shuffle window is shuffled one epoch
  at a time (a window over several epochs would put copies of a document side by side)."""
  first_fit = data.packing == "first_fit"
  streams = []
  for index, source in enumerate(mixture.sources):
    stream = DocumentStream(source, index, framing, seed=seed,
                            max_piece=data.seq_len if first_fit else None, shard=shard)
    window = data.shuffle_window
    documents = documents_up_to(source, window * shard[1]) if window > 1 else None
    if documents is not None:
      window = min(window, max(1, documents // shard[1]))
    if window > 1:
      stream = grain.experimental.WindowShuffleIterDataset(
          stream, window_size=window, seed=seed * 1000 + index)
    streams.append(stream)
  mixed = TokenMix(streams, mixture.shares)
  lengths = {"tokens": data.seq_len, "source": data.seq_len}
  if first_fit:
    packed = grain.experimental.FirstFitPackIterDataset(
        mixed, length_struct=lengths, num_packing_bins=data.pack_bins, seed=seed)
  else:
    packed = _JsonSafeState(grain.experimental.ConcatThenSplitIterDataset(
        mixed, length_struct=lengths))
  batches = packed.batch(batch_size, drop_remainder=True).map(model_inputs)
  if data.workers:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; we never run absl.app
      flags.FLAGS.mark_as_parsed()
    batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.workers))
  return batches


# --- sizes -----------------------------------------------------------------------------------

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


# --- on the devices --------------------------------------------------------------------------

class DeviceBatches:
  """Batches laid out on the mesh (the batch dimension over the rules' "batch" axes), the
  next `prefetch` ones prepared in a background thread; `get_state` is the pipeline's state
  after the last batch handed out, whatever was read ahead."""

  def __init__(self, dataset: grain.IterDataset, mesh, rules="train", prefetch: int = 2):
    from mind_jax.sharding import data_sharding
    self.iterator = iter(dataset)
    self.sharding = data_sharding(mesh, rules, ("batch", None))
    self.prefetch = max(prefetch, 1)
    self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mind_jax-data")
    self.pending = collections.deque()
    self.state = self.iterator.get_state()

  def _produce(self):
    import jax
    host = next(self.iterator)
    state = self.iterator.get_state()
    device = {k: jax.make_array_from_process_local_data(self.sharding, host[k])
              for k in MODEL_INPUTS}
    return device, host, state

  def __iter__(self):
    return self

  def __next__(self) -> tuple[dict, dict]:
    """(model inputs as global jax Arrays, the host's numpy batch)."""
    while len(self.pending) < self.prefetch:
      self.pending.append(self.pool.submit(self._produce))
    device, host, self.state = self.pending.popleft().result()
    return device, host

  def _drain(self):
    for future in self.pending:
      future.cancel()
    concurrent.futures.wait(self.pending)
    self.pending.clear()

  def get_state(self) -> dict:
    return self.state

  def set_state(self, state: dict) -> None:
    self._drain()
    self.iterator.set_state(state)
    self.state = state

  def checkpoint_item(self):
    """This iterator as Grain's Orbax handler takes it (`grain.checkpoint.CheckpointSave` /
    `CheckpointRestore`): one JSON file per process."""
    return _GrainCheckpointItem(self)

  def close(self) -> None:
    self._drain()
    self.pool.shutdown()
    if hasattr(self.iterator, "close"):
      self.iterator.close()


class _GrainCheckpointItem:
  """The interface Grain's checkpoint handler expects of an iterator that is not its own."""

  def __init__(self, batches: DeviceBatches):
    self.batches = batches

  def get_state(self) -> bytes:
    return json.dumps(self.batches.get_state()).encode()

  def set_state(self, state: bytes) -> None:
    self.batches.set_state(json.loads(state))

  def start_prefetch(self) -> None:
    pass
