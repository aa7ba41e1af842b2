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

import grain
import numpy as np

from mind_jax._errors import MindJaxError
from mind_jax.data._config import DataSection, Mixture
from mind_jax.data._framing import Framing
from mind_jax.data._packing import _JsonSafeState, model_inputs
from mind_jax.data._sizes import documents_up_to
from mind_jax.data._sources import DocumentStream
from mind_jax.data._token_mix import TokenMix


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
