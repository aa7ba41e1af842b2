"""Decontamination: word n-gram overlap between conversations and evaluation questions.

Evaluation sets come as local (or gs://) JSONL or Parquet files: GSM8K and MMLU
rows hold a `question`, MATH rows a `problem`. A conversation that shares one
n-gram (13 words by default, as in GPT-3's decontamination) with a question is
contaminated. A question shorter than n words matches only as a whole, and
one shorter than `min_words` is ignored: "what is the value of x" is not a leak.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from etils import epath

from mind_jax._errors import MindJaxError
from mind_jax.curation._text import ngram_hashes, word_hashes, words

QUESTION_FIELDS = ("question", "problem", "prompt", "input", "text")


@dataclasses.dataclass(frozen=True)
class Match:
  question: str  # where the question is: file:line
  ngram: str


class EvalIndex:
  """Sorted n-gram hashes of every evaluation question, by n-gram length."""

  def __init__(self, files: list[str], n: int = 13, min_words: int = 8,
               fields: tuple[str, ...] = QUESTION_FIELDS):
    self.n, self.files = n, list(files)
    grams: dict[int, dict[int, tuple[int, int, int]]] = {}  # length -> hash -> (file, row, start)
    self.questions: list[list[str]] = []  # words of each indexed question, for listing matches
    self.where: list[str] = []
    for path in files:
      for where, question in _questions(path, fields):
        tokens = words(question)
        if len(tokens) < min_words:
          continue
        length = min(n, len(tokens))
        q = len(self.questions)
        self.questions.append(tokens)
        self.where.append(where)
        table = grams.setdefault(length, {})
        for start, h in enumerate(ngram_hashes(word_hashes(tokens), length).tolist()):
          table.setdefault(h, (q, start, length))
    self.tables = {length: (np.array(sorted(t), dtype=np.uint64), t) for length, t in grams.items()}

  def __len__(self) -> int:
    return len(self.questions)

  def matches(self, hashes: np.ndarray) -> list[Match]:
    """Evaluation questions sharing an n-gram with a text, given its word hashes."""
    found, seen = [], set()
    for length, (sorted_hashes, table) in self.tables.items():
      grams = ngram_hashes(hashes, length)
      if not len(grams):
        continue
      hits = grams[np.isin(grams, sorted_hashes, assume_unique=False)]
      for h in dict.fromkeys(hits.tolist()):
        q, start, size = table[h]
        if q not in seen:
          seen.add(q)
          found.append(Match(self.where[q], " ".join(self.questions[q][start:start + size])))
    return found


def _questions(path: str, fields: tuple[str, ...]):
  """(where, question text) of each row; the first of `fields` a row has as a string."""
  from mind_jax.data import iter_records
  if not epath.Path(path).exists():
    raise MindJaxError(f"{path}: evaluation set does not exist")
  empty = True
  for where, record, problem in iter_records(path):
    if problem:
      raise MindJaxError(f"{where}: {problem}")
    field = next((f for f in fields if isinstance(record.get(f), str)), None)
    if field is None:
      raise MindJaxError(f"{where}: no question field (looked for {', '.join(fields)})")
    empty = False
    yield where, record[field]
  if empty:
    raise MindJaxError(f"{path}: evaluation set is empty")
