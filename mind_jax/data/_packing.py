"""Packed sequences -> what the train step reads, and a packer state that survives JSON."""

from __future__ import annotations

import grain
import numpy as np

# Per-token features the model reads; "source" stays on the host (shares, per-source losses).
MODEL_INPUTS = ("tokens", "segment_ids", "positions", "targets", "loss_weights")


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
