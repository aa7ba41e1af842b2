"""The filter's configuration and the rules that judge one record on its own.

Each rule that rejects a record names itself in the record's reasons; all
per-record rules run, so a record can carry several reasons. Rules that need
the whole output (duplicates, longest per chunk) live in the job.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import numpy as np
import pydantic

from mind_jax import config as config_lib
from mind_jax.curation._text import Cleaned, clean, ngram_hashes, split_turns, word_hashes, words

# Finish reasons meaning the generator was cut off by a length limit.
TRUNCATED = ("length", "context_limit")

# Fields every input record must have (as written by python -m mind_jax.generate).
REQUIRED_FIELDS = {"id": str, "doc_id": str, "chunk_index": int, "style": str,
                   "conversation": str, "finish_reason": str}


class TurnsRule(config_lib.Section):
  enabled: bool = config_lib.result(False, description="require speakers and turns")
  min_speakers: int = config_lib.result(2, ge=1)
  min_turns: int = config_lib.result(4, ge=1, description="lines opening with a speaker label")


class RepetitionRule(config_lib.Section):
  enabled: bool = config_lib.result(False, description="reject repetitive conversations")
  max_repeated_lines: float = config_lib.result(
      0.3, ge=0, le=1, description="share of non-empty lines that repeat an earlier line")
  ngram: int = config_lib.result(10, ge=2, description="word n-gram size for the next limit")
  max_duplicate_ngrams: float = config_lib.result(
      0.3, ge=0, le=1, description="share of word n-grams that repeat an earlier one")


class CopyRule(config_lib.Section):
  enabled: bool = config_lib.result(False, description="reject conversations that copy the source")
  ngram: int = config_lib.result(10, ge=2)
  max_share: float = config_lib.result(
      0.5, ge=0, le=1, description="share of the conversation's word n-grams found in the source")


class DedupRule(config_lib.Section):
  exact: bool = config_lib.result(True, description="drop repeats of the same normalised words")
  near: bool = config_lib.result(False, description="MinHash LSH near-duplicate removal")
  threshold: float = config_lib.result(0.8, gt=0, le=1, description="Jaccard similarity")
  num_perm: int = config_lib.result(128, ge=16, description="MinHash permutations")
  shingle: int = config_lib.result(5, ge=1, description="word n-gram size of the shingles")
  index: Literal["memory", "bloom"] = config_lib.result(
      "memory", description="memory: datasketch MinHashLSH, candidates confirmed on their "
      "signatures (~5 KB per record); bloom: datasketch MinHashLSHBloom (~50 bytes per record, "
      "for tens of millions; unconfirmed; needs pybloomfiltermmap3)")
  bloom_fp: float = config_lib.result(1e-6, gt=0, lt=1, description="false positive rate of each "
                                      "band's Bloom filter (index=bloom)")


class DecontaminateRule(config_lib.Section):
  files: list[str] = config_lib.result(
      default_factory=list, description="evaluation sets (.jsonl/.parquet, local or gs://) whose "
      "question/problem field must not appear in conversations")
  ngram: int = config_lib.result(13, ge=4)
  min_words: int = config_lib.result(8, ge=1, description="shorter questions are ignored")


class SelectRule(config_lib.Section):
  mode: Literal["all", "longest"] = config_lib.result(
      "all", description="all, or the longest conversation per chunk")
  styles: list[str] | None = config_lib.result(None, description="keep only these styles")


class FilterConfig(config_lib.Section):
  input: str | None = config_lib.source(None, description="output directory of mind_jax.generate")
  out: str | None = config_lib.speed(None, description="where kept/ and rejected/ are written")
  tokenizer: str | None = config_lib.result(
      None, description="generator's tokenizer directory, or 'byte' (default: the one the "
      "input's run.json notes, else the records' model directory)")
  workers: int = config_lib.speed(0, ge=0, description="processes (0: one per CPU, at most one "
                                  "per input file)")
  scratch: str | None = config_lib.speed(
      None, description="local directory for MinHash signatures while near-duplicate removal "
      "runs (default: the system's temporary directory); needs 4 x num_perm bytes per record")
  format: Literal["same", "jsonl", "parquet"] = config_lib.result(
      "same", description="output format (same: as each input file)")
  min_tokens: int = config_lib.result(
      50, ge=0, description="drop shorter conversations (the paper)")
  cleanup: bool = config_lib.result(True, description="strip preambles and trailing notes")
  genres: list[str] | None = config_lib.result(
      None, description="words for what the generator wrote ('debate', 'podcast'): with cleanup, "
      "a lead-in or closing note naming one (or a conversation, dialogue, discussion, debate, "
      "interview, exchange, transcript) is stripped (default: the genres of the styles the "
      "input's run.json notes)")
  truncated: Literal["flag", "drop"] = config_lib.result(
      "flag", description="records cut off by the length limit")
  turns: TurnsRule = pydantic.Field(default_factory=TurnsRule)
  repetition: RepetitionRule = pydantic.Field(default_factory=RepetitionRule)
  copy_source: CopyRule = pydantic.Field(default_factory=CopyRule)
  dedup: DedupRule = pydantic.Field(default_factory=DedupRule)
  decontaminate: DecontaminateRule = pydantic.Field(default_factory=DecontaminateRule)
  select: SelectRule = pydantic.Field(default_factory=SelectRule)
  overwrite: bool = config_lib.speed(
      False, description="when out holds a filter output of other input or settings, delete the "
      "files it wrote and write afresh; off: refuse")


@dataclasses.dataclass(slots=True)
class Facts:
  """What the per-record rules learned about one record; `tokens` counts the cleaned
  conversation. The filter keeps these as columns (see _table.py), not one object per record."""

  id: str
  chunk: tuple[str, int]
  style: str
  tokens: int
  turns: int
  speakers: int
  truncated: bool
  reasons: list[str]
  detail: list[str]


@functools.lru_cache(maxsize=16)
def _source_ngrams(source: str, n: int) -> np.ndarray:
  """The source chunk's distinct word n-gram hashes. A chunk's seven styles are written next to
  each other, so each chunk is hashed once, not seven times (with the copy rule on, the
  repeated hashing was a sixth of pass 1 on such data)."""
  return np.unique(ngram_hashes(word_hashes(words(source)), n))


def cleaned(record: dict, cfg: FilterConfig) -> Cleaned:
  raw = record["conversation"]
  return clean(raw, tuple(cfg.genres or ())) if cfg.cleanup else Cleaned(raw, "", "")


def judge(record: dict, text: str, tokens: int,
          cfg: FilterConfig) -> tuple[Facts, list[str], np.ndarray]:
  """Runs every per-record rule on `text` (the cleaned conversation); returns the facts and the
  text's words and word hashes, which the global passes' keys are made from."""
  reasons, detail = [], []
  turns = split_turns(text)
  tokens_list = words(text)
  hashes = word_hashes(tokens_list)
  truncated = record["finish_reason"] in TRUNCATED
  if record["finish_reason"] == "error":
    reasons.append("generation_error")
    detail.append(f"generation_error: {record.get('error') or 'no detail'}")
  if not text.strip():
    reasons.append("empty")
  elif tokens < cfg.min_tokens:
    reasons.append("too_short")
    detail.append(f"too_short: {tokens} < {cfg.min_tokens} tokens")
  if truncated and cfg.truncated == "drop":
    reasons.append("truncated")
  if cfg.select.styles is not None and record["style"] not in cfg.select.styles:
    reasons.append("style_not_selected")
  if cfg.turns.enabled:
    if len(turns.speakers) < cfg.turns.min_speakers:
      reasons.append("too_few_speakers")
      detail.append(f"too_few_speakers: {len(turns.speakers)} < {cfg.turns.min_speakers}")
    if turns.count < cfg.turns.min_turns:
      reasons.append("too_few_turns")
      detail.append(f"too_few_turns: {turns.count} < {cfg.turns.min_turns}")
  if cfg.repetition.enabled and text.strip():
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    repeated = (len(lines) - len(set(lines))) / len(lines)
    if repeated > cfg.repetition.max_repeated_lines:
      reasons.append("repeated_lines")
      detail.append(f"repeated_lines: {repeated:.2f}")
    grams = ngram_hashes(hashes, cfg.repetition.ngram)
    if len(grams):
      duplicated = 1 - len(np.unique(grams)) / len(grams)
      if duplicated > cfg.repetition.max_duplicate_ngrams:
        reasons.append("duplicate_ngrams")
        detail.append(f"duplicate_ngrams: {duplicated:.2f}")
  if cfg.copy_source.enabled and isinstance(record.get("source"), str):
    grams = ngram_hashes(hashes, cfg.copy_source.ngram)
    source = _source_ngrams(record["source"], cfg.copy_source.ngram)
    if len(grams) and len(source):
      share = float(np.mean(np.isin(grams, source)))
      if share > cfg.copy_source.max_share:
        reasons.append("copies_source")
        detail.append(f"copies_source: {share:.2f} of its {cfg.copy_source.ngram}-grams")
  facts = Facts(id=record["id"], chunk=(record["doc_id"], record["chunk_index"]),
                style=record["style"], tokens=tokens, turns=turns.count,
                speakers=len(turns.speakers), truncated=truncated, reasons=reasons, detail=detail)
  return facts, tokens_list, hashes
