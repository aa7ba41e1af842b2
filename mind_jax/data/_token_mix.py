"""Grain dataset interleaving sources so that each gets its share of the tokens."""

from __future__ import annotations

import grain


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
