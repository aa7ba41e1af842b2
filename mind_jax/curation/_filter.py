"""The filter job: generated records -> kept/ and rejected/ part files, nothing lost.

Three passes. (1) Each input part file, in parallel processes, is read, its
conversations cleaned, counted with the generator's tokenizer, judged by the
per-record rules, checked against the evaluation sets and signed for
deduplication. (2) One process decides what needs the whole output: exact and
near duplicates (in id order, so the result is independent of the split into
files and workers) and the longest conversation per chunk. (3) Each input file
is written again as kept/NAME and rejected/NAME (temporary file, then rename),
kept records cleaned, rejected ones untouched with their reasons. Counts are
checked (kept + rejected == input, per file and in all), and the summary is
written last. Output depends only on the input and the config: a rerun
rewrites the same bytes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import multiprocessing
import os
import time

import numpy as np
from etils import epath

from mind_jax._errors import MindJaxError
from mind_jax._progress import progress_bar
from mind_jax.curation._decontam import EvalIndex
from mind_jax.curation._dedup import Signer, check_bloom_available, exact_key, near_duplicates
from mind_jax.curation._rules import REQUIRED_FIELDS, Facts, FilterConfig, cleaned, judge

log = logging.getLogger("mind_jax.filter")

SUMMARY = "filter-summary.json"
CONTAMINATION = "contamination.jsonl"
BYTE_TOKENIZER = "byte"
TOKEN_BATCH = 512


def input_files(input_dir: str) -> list[str]:
  from mind_jax.mind import part_files
  if not input_dir:
    raise MindJaxError("no input directory given (INPUT_DIR or input=...)")
  if not epath.Path(input_dir).is_dir():
    raise MindJaxError(f"{input_dir}: input directory does not exist")
  files = part_files(input_dir)
  if not files:
    hint = " (a filter output? use its kept/ folder)" if (epath.Path(input_dir) / "kept").is_dir() else ""
    raise MindJaxError(f"{input_dir}: no part-*.jsonl or part-*.parquet files{hint}")
  return files


def read_input(path: str):
  """(where, record) for each record of a part file; any unreadable or incomplete record stops
  the run with its file and line."""
  from mind_jax.data import iter_records
  for where, record, problem in iter_records(path, path):
    if problem is None:
      problem = _schema_problem(record)
    if problem:
      raise MindJaxError(f"{where}: {problem}")
    yield where, record


def _schema_problem(record) -> str | None:
  if not isinstance(record, dict):
    return f"record is a {type(record).__name__}, not an object"
  for field, kind in REQUIRED_FIELDS.items():
    if field not in record:
      return f"missing field {field!r} (not a mind_jax.generate record?)"
    if not isinstance(record[field], kind) or isinstance(record[field], bool):
      return f"field {field!r} is {type(record[field]).__name__}, not {kind.__name__}"
  return None


def resolve_tokenizer(tokenizer: str | None, first_file: str) -> str:
  """The generator's tokenizer: `tokenizer` if given, else the model directory named in the
  records, else the byte tokenizer for the smoke-test model's output."""
  if tokenizer:
    return tokenizer
  where, record = next(read_input(first_file), (first_file, {}))
  model = record.get("model") or ""
  if model.startswith("smoke-test:"):
    return BYTE_TOKENIZER
  from mind_jax.text._tokenizer import has_tokenizer_files
  if model and epath.Path(model).is_dir() and has_tokenizer_files(model):
    return model
  raise MindJaxError(f"{where}: records name model {model!r}, which is not a local directory "
                     "with tokenizer files; pass tokenizer=DIR (the generator's tokenizer)")


def load_tokenizer_spec(spec: str):
  """The tokenizer `resolve_tokenizer` named."""
  if spec == BYTE_TOKENIZER:
    from mind_jax.testing import byte_tokenizer
    return byte_tokenizer()
  from mind_jax.text import load_tokenizer
  return load_tokenizer(spec)


_WORKER_STATE: dict = {}


def _tools(cfg: FilterConfig, tokenizer_spec: str):
  """Tokenizer, evaluation index and MinHash signer, built once per process."""
  key = (cfg.model_dump_json(), tokenizer_spec)
  if _WORKER_STATE.get("key") != key:
    tokenizer = load_tokenizer_spec(tokenizer_spec)
    index = (EvalIndex(cfg.decontaminate.files, cfg.decontaminate.ngram, cfg.decontaminate.min_words)
             if cfg.decontaminate.files else None)
    signer = Signer(cfg.dedup.num_perm, cfg.dedup.shingle) if cfg.dedup.near else None
    _WORKER_STATE.update(key=key, tools=(tokenizer, index, signer))
  return _WORKER_STATE["tools"]


def inspect_file(path: str, cfg: FilterConfig, tokenizer_spec: str) -> list[Facts]:
  """Pass 1 over one file."""
  tokenizer, index, signer = _tools(cfg, tokenizer_spec)
  facts, batch = [], []

  def flush():
    counts = tokenizer.count_tokens([text for _, text in batch])
    for (record, text), tokens in zip(batch, counts, strict=True):
      facts.append(_facts(record, text, tokens, cfg, index, signer))
    batch.clear()

  for _, record in read_input(path):
    batch.append((record, cleaned(record, cfg).text))
    if len(batch) >= TOKEN_BATCH:
      flush()
  flush()
  return facts


def _facts(record, text, tokens, cfg, index, signer) -> Facts:
  facts, words, hashes = judge(record, text, tokens, cfg)
  if index is not None:
    facts.matches = index.matches(hashes)
    if facts.matches:
      facts.reasons.append("contaminated")
      facts.detail.append("contaminated: " + ", ".join(m.question for m in facts.matches))
  if not facts.reasons:  # only candidates for keeping take part in the global passes
    if cfg.dedup.exact:
      facts.exact = exact_key(words)
    if signer is not None:
      facts.signature = signer(hashes)
  return facts


def decide(facts: list[Facts], cfg: FilterConfig) -> None:
  """Pass 2: duplicates and per-chunk selection, over every file's facts at once."""
  by_id = {}
  for f in facts:
    if f.id in by_id:
      raise MindJaxError(f"record id {f.id!r} appears twice in the input")
    by_id[f.id] = f
  alive = sorted((f for f in facts if not f.reasons), key=lambda f: f.id)
  if cfg.dedup.exact:
    first_of = {}
    for f in alive:
      if f.exact in first_of:
        f.reasons.append("exact_duplicate")
        f.detail.append(f"exact_duplicate of {first_of[f.exact]}")
      else:
        first_of[f.exact] = f.id
    alive = [f for f in alive if not f.reasons]
  if cfg.dedup.near:
    matrix = np.zeros((len(alive), cfg.dedup.num_perm), dtype=np.uint32)
    for row, f in enumerate(alive):  # one array instead of a small one per record
      matrix[row], f.signature = f.signature, None
    found = near_duplicates([f.id for f in alive], matrix, cfg.dedup.threshold, cfg.dedup.num_perm,
                            cfg.dedup.index, cfg.dedup.bloom_fp)
    for record_id, (of, similarity) in found.items():
      by_id[record_id].reasons.append("near_duplicate")
      by_id[record_id].detail.append(
          f"near_duplicate of {of} (jaccard ~{similarity:.2f})" if of is not None
          else "near_duplicate of an earlier record (Bloom index: a band matched)")
    alive = [f for f in alive if not f.reasons]
  if cfg.select.mode == "longest":
    longest = {}
    for f in alive:  # ties go to the smaller id: `alive` is in id order
      if f.chunk not in longest or f.tokens > longest[f.chunk].tokens:
        longest[f.chunk] = f
    for f in alive:
      if longest[f.chunk] is not f:
        f.reasons.append("not_longest_in_chunk")
        f.detail.append(f"not_longest_in_chunk: {longest[f.chunk].id} is longer")


def write_file(path: str, facts: dict[str, Facts], cfg: FilterConfig) -> dict:
  """Pass 3 over one file: its kept and rejected parts; returns the file's counts."""
  name = epath.Path(path).name
  fmt = cfg.format if cfg.format != "same" else ("parquet" if name.endswith(".parquet") else "jsonl")
  stem = name.rsplit(".", 1)[0]
  out = epath.Path(cfg.out)
  with _AtomicPart(out / "kept" / f"{stem}.{fmt}", fmt) as kept, \
       _AtomicPart(out / "rejected" / f"{stem}.{fmt}", fmt) as rejected:
    for _, record in read_input(path):
      f = facts[record["id"]]
      computed = {"conversation_tokens": f.tokens, "turns": f.turns, "speakers": f.speakers,
                  "truncated": f.truncated}
      if f.reasons:
        rejected.add({**record, **computed, "reject_reasons": f.reasons,
                      "reject_detail": "; ".join(f.detail)})
      else:
        c = cleaned(record, cfg)
        kept.add({**record, "conversation": c.text,
                  "removed_preamble": record.get("removed_preamble", "") + c.preamble,
                  "removed_trailer": c.trailer + record.get("removed_trailer", ""), **computed})
  return {"file": name, "output": f"{stem}.{fmt}", "input": kept.count + rejected.count,
          "kept": kept.count, "rejected": rejected.count}


class _AtomicPart:
  """A part file that appears complete or not at all (temporary name, then rename). JSONL is
  written as records arrive; Parquet is written at the end, one table, so its schema is
  inferred from every record."""

  def __init__(self, path: epath.Path, fmt: str):
    self.path, self.fmt, self.count = path, fmt, 0
    self.tmp = path.parent / (path.name + ".tmp")
    self.buffer: list[dict] = []

  def __enter__(self):
    self.file = self.tmp.open("w" if self.fmt == "jsonl" else "wb")
    return self

  def add(self, record: dict) -> None:
    self.count += 1
    if self.fmt == "jsonl":
      self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
      self.buffer.append(record)

  def __exit__(self, exc_type, *exc):
    if exc_type is None and self.fmt == "parquet":
      import pyarrow as pa
      import pyarrow.parquet as pq
      pq.write_table(pa.Table.from_pylist(self.buffer), self.file)
    self.file.close()
    if exc_type is None:
      self.tmp.replace(self.path)
    else:
      self.tmp.unlink(missing_ok=True)
    return False


def _write_atomic(path: epath.Path, records: list[dict], fmt: str) -> None:
  with _AtomicPart(path, fmt) as part:
    for record in records:
      part.add(record)


def run(cfg: FilterConfig) -> dict:
  """Filters `cfg.input` into `cfg.out`; returns the summary it writes."""
  start = time.perf_counter()
  files = input_files(cfg.input)
  if not cfg.out:
    raise MindJaxError("no output directory given (--out DIR or out=...)")
  if str(epath.Path(cfg.out).resolve()) == str(epath.Path(cfg.input).resolve()):
    raise MindJaxError(f"{cfg.out}: output directory must differ from the input")
  tokenizer_spec = resolve_tokenizer(cfg.tokenizer, files[0])
  workers = min(cfg.workers or os.cpu_count() or 1, len(files))
  log.info("filter: %d part files from %s, tokenizer %s, %d worker(s)", len(files), cfg.input,
           tokenizer_spec, workers)
  if cfg.dedup.near and cfg.dedup.index == "bloom":
    check_bloom_available()
  if cfg.decontaminate.files:  # fail on a bad evaluation file before any work
    index = _tools(cfg, tokenizer_spec)[1]
    log.info("decontamination: %d questions from %d files, %d-grams", len(index),
             len(cfg.decontaminate.files), cfg.decontaminate.ngram)

  with _pool(workers) as pool:
    per_file = _map(pool, inspect_file, files, "inspect", cfg, tokenizer_spec)
    facts = [f for file_facts in per_file for f in file_facts]
    decide(facts, cfg)
    by_id = {f.id: f for f in facts}
    shards = [{f.id: by_id[f.id] for f in file_facts} for file_facts in per_file]
    for folder in ("kept", "rejected"):
      (epath.Path(cfg.out) / folder).mkdir(parents=True, exist_ok=True)
    counts = _map(pool, write_file, list(zip(files, shards)), "write", cfg, star=True)

  summary = _summary(cfg, files, facts, counts, tokenizer_spec, time.perf_counter() - start)
  _finish(cfg, facts, summary)
  return summary


def _pool(workers: int):
  if workers <= 1:
    return _Inline()
  # spawn, not fork: the parent may hold JAX's threads.
  return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


class _Inline:
  def __enter__(self):
    return None

  def __exit__(self, *exc):
    return False


def _map(pool, fn, items, desc, *args, star=False):
  results = [None] * len(items)
  with progress_bar(len(items), desc, unit="file") as bar:
    if pool is None:
      for i, item in enumerate(items):
        results[i] = fn(*item, *args) if star else fn(item, *args)
        bar.update(1)
      return results
    futures = {pool.submit(fn, *item, *args) if star else pool.submit(fn, item, *args): i
               for i, item in enumerate(items)}
    for future in concurrent.futures.as_completed(futures):
      results[futures[future]] = future.result()
      bar.update(1)
  return results


def _summary(cfg, files, facts, counts, tokenizer_spec, elapsed) -> dict:
  total = {k: sum(c[k] for c in counts) for k in ("input", "kept", "rejected")}
  if total["kept"] + total["rejected"] != len(facts) or any(
      c["kept"] + c["rejected"] != c["input"] for c in counts):
    raise RuntimeError(f"filter lost records: {total} for {len(facts)} read")  # a bug, not input
  reasons = collections.Counter(r for f in facts for r in f.reasons)
  styles = {}
  for f in facts:
    entry = styles.setdefault(f.style, {"input": 0, "kept": 0, "rejected": 0, "reasons": {}})
    entry["input"] += 1
    entry["rejected" if f.reasons else "kept"] += 1
    for r in f.reasons:
      entry["reasons"][r] = entry["reasons"].get(r, 0) + 1
  kept = [f for f in facts if not f.reasons]
  return {
      "input_dir": cfg.input, "output_dir": cfg.out, "tokenizer": tokenizer_spec,
      "input_records": len(facts), "kept": total["kept"], "rejected": total["rejected"],
      "reasons": dict(sorted(reasons.items())),
      "kept_tokens": sum(f.tokens for f in kept),
      "kept_truncated": sum(f.truncated for f in kept),
      "contaminated": reasons.get("contaminated", 0),
      "styles": dict(sorted(styles.items())), "files": counts,
      "elapsed_seconds": round(elapsed, 2),
      "records_per_second": round(len(facts) / max(elapsed, 1e-9), 1),
      "config": cfg.model_dump(),
  }


def _finish(cfg, facts, summary) -> None:
  out = epath.Path(cfg.out)
  written = {c["output"] for c in summary["files"]}
  for folder in ("kept", "rejected"):  # parts of an earlier run over other input or format
    for stale in (out / folder).glob("*"):
      if stale.name not in written:
        stale.unlink()
  matches = [{"id": f.id, "style": f.style, "question": m.question, "ngram": m.ngram}
             for f in sorted(facts, key=lambda f: f.id) for m in f.matches]
  _write_atomic(out / CONTAMINATION, matches, "jsonl")
  stable = {k: v for k, v in summary.items() if k not in ("elapsed_seconds", "records_per_second")}
  tmp = out / (SUMMARY + ".tmp")
  tmp.write_text(json.dumps(stable, indent=1, ensure_ascii=False) + "\n")
  tmp.replace(out / SUMMARY)
  log.info("kept %d of %d records (%d rejected: %s) in %.1f s, %.0f records/s",
           summary["kept"], summary["input_records"], summary["rejected"],
           ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()) or "none",
           summary["elapsed_seconds"], summary["records_per_second"])
  print(f"kept {summary['kept']} of {summary['input_records']} records -> {cfg.out}/kept/ "
        f"(rejected: {cfg.out}/rejected/, summary: {cfg.out}/{SUMMARY})")
