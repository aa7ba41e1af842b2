"""Training batches placed on the devices ahead of the step, resumable from their state."""

from __future__ import annotations

import collections
import concurrent.futures
import json

import grain

from mind_jax.data._packing import MODEL_INPUTS


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
