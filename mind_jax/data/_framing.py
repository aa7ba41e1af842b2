"""Documents framed as training reads them: BOS + text + EOS token ids."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


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
