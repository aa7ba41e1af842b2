"""Cutting documents into chunks of at most N tokens of the generator's tokenizer.

Cuts fall at paragraph breaks where possible, then at sentence ends, then at
spaces; never inside a token or a character. A tail shorter than
`min_tail_tokens` joins the previous chunk (which may then exceed N by at
most that much) rather than becoming a fragment of its own.
"""

from __future__ import annotations

import re

_PARAGRAPHS = re.compile(r"(?<=\n)\s*\n")
_SENTENCES = re.compile(r"(?<=[.!?;:])\s+")
_WORDS = re.compile(r"(?<=\s)(?=\S)")


def _pieces(text: str, pattern: re.Pattern) -> list[str]:
  """Splits `text` after each match, keeping every character (pieces join back to text)."""
  out, start = [], 0
  for match in pattern.finditer(text):
    if match.end() > start:
      out.append(text[start:match.end()])
      start = match.end()
  out.append(text[start:])
  return [p for p in out if p]


def chunk_text(text: str, count_tokens, max_tokens: int = 500, min_tail_tokens: int = 50
               ) -> list[str]:
  """Chunks whose concatenation is `text`; `count_tokens(str) -> int`."""
  if max_tokens < 1:
    raise ValueError("max_tokens must be >= 1")
  units = []
  for paragraph in _pieces(text, _PARAGRAPHS):
    units += _split(paragraph, count_tokens, max_tokens, level=0)
  chunks: list[str] = []
  current = ""
  for unit in units:
    if current and count_tokens(current + unit) > max_tokens:
      chunks.append(current)
      current = unit
    else:
      current += unit
  if current:
    chunks.append(current)
  if len(chunks) > 1 and count_tokens(chunks[-1]) < min_tail_tokens:
    tail = chunks.pop()
    chunks[-1] += tail
  return chunks


def _split(text: str, count_tokens, max_tokens: int, level: int) -> list[str]:
  """`text` as pieces of at most max_tokens, splitting by sentences, then words, then characters."""
  if count_tokens(text) <= max_tokens:
    return [text]
  if level == 0:
    pieces = _pieces(text, _SENTENCES)
  elif level == 1:
    pieces = _pieces(text, _WORDS)
  else:
    return _split_characters(text, count_tokens, max_tokens)
  if len(pieces) == 1:
    return _split(text, count_tokens, max_tokens, level + 1)
  out = []
  for piece in pieces:
    out += _split(piece, count_tokens, max_tokens, level + 1)
  return out


def _split_characters(text: str, count_tokens, max_tokens: int) -> list[str]:
  """Last resort for a run without spaces: the longest prefixes that fit, by bisection."""
  out = []
  while text:
    lo, hi = 1, len(text)
    while lo < hi:
      mid = (lo + hi + 1) // 2
      if count_tokens(text[:mid]) <= max_tokens:
        lo = mid
      else:
        hi = mid - 1
    out.append(text[:lo])
    text = text[lo:]
  return out
