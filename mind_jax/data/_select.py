"""Selection rules over groups of records (numpy only: the filter imports it too)."""

from __future__ import annotations

import numpy as np


def group_winners(groups: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """For each row, the row that wins its group: the longest, ties to the earlier row. One
  rule for the filter's `select.mode=longest` and a source's `select=longest_per_chunk`."""
  ranked = np.lexsort((np.arange(len(groups)), -lengths.astype(np.int64), groups))
  starts = np.r_[True, groups[ranked][1:] != groups[ranked][:-1]]
  winner = np.empty(len(groups), dtype=np.int64)
  winner[ranked] = np.maximum.accumulate(np.where(starts, np.arange(len(groups)), 0))
  return ranked[winner]
