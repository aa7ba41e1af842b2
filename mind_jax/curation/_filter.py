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
import dataclasses
import logging
import os
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from etils import epath

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError
from mind_jax._atomic import RecordFile, write_json, write_records
from mind_jax.curation._decontam import EvalIndex
from mind_jax.curation._dedup import Signer, check_bloom_available, exact_key, near_duplicates
from mind_jax.curation._parallel import FileMapper
from mind_jax.curation._rules import REQUIRED_FIELDS, FilterConfig, cleaned, judge
from mind_jax.curation._table import FileFacts, FileFactsBuilder
from mind_jax.data import group_winners
from mind_jax.text import BYTE_TOKENIZER, load_tokenizer

log = logging.getLogger("mind_jax.filter")

SUMMARY = "filter-summary.json"
CONTAMINATION = "contamination.jsonl"
TOKEN_BATCH = 512


def input_files(input_dir: str) -> list[str]:
  from mind_jax.data import part_files
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


def run_note(directory: str, key: str):
  """What the run record of `directory` notes under `key` (generate and filter write it; for a
  filter output's kept/ or rejected/, the record beside them), or None."""
  from mind_jax._outdir import read_run_record
  path = epath.Path(directory)
  for place in [path] + ([path.parent] if path.name in ("kept", "rejected") else []):
    noted = ((read_run_record(str(place)) or {}).get("notes") or {}).get(key)
    if noted:
      return noted
  return None


def resolve_tokenizer(tokenizer: str | None, files: list[str], directory: str) -> str:
  """The generator's tokenizer, for `load_tokenizer`: `tokenizer` if given, else the one the
  run record of `directory` notes (generate and filter write it; for a filter output's kept/
  or rejected/, the record beside them), else the model directory named in the first record
  of `files`."""
  if tokenizer:
    return tokenizer
  noted = run_note(directory, "tokenizer")
  if noted:
    return noted
  first = (found for path in files for found in read_input(path))
  where, record = next(first, (files[0] if files else "input", {}))
  model = record.get("model") or ""
  from mind_jax.text import has_tokenizer_files
  if model and epath.Path(model).is_dir() and has_tokenizer_files(model):
    return model
  raise MindJaxError(f"{where}: records name model {model!r}, which is not a local directory "
                     "with tokenizer files, and no run.json names the generator's tokenizer; "
                     "pass tokenizer=DIR (or tokenizer=byte for the random smoke-test model)")


_WORKER_STATE: dict = {}


def _tools(cfg: FilterConfig, tokenizer_spec: str):
  """Tokenizer, evaluation index and MinHash signer, built once per process."""
  key = (cfg.model_dump_json(), tokenizer_spec)
  if _WORKER_STATE.get("key") != key:
    tokenizer = load_tokenizer(tokenizer_spec)
    index = (EvalIndex(cfg.decontaminate.files, cfg.decontaminate.ngram, cfg.decontaminate.min_words)
             if cfg.decontaminate.files else None)
    signer = Signer(cfg.dedup.num_perm, cfg.dedup.shingle) if cfg.dedup.near else None
    _WORKER_STATE.update(key=key, tools=(tokenizer, index, signer))
  return _WORKER_STATE["tools"]


def inspect_file(path: str, cfg: FilterConfig, tokenizer_spec: str,
                 signature_file: str | None = None) -> FileFacts:
  """Pass 1 over one file; with near-duplicate removal on, its MinHash signatures go to
  `signature_file`."""
  tokenizer, index, signer = _tools(cfg, tokenizer_spec)
  table = FileFactsBuilder(path, cfg.dedup.num_perm if signer is not None else None)
  batch = []

  def flush():
    counts = tokenizer.count_tokens([text for _, text in batch])
    for (record, text), tokens in zip(batch, counts, strict=True):
      _judge_into(table, record, text, tokens, cfg, index, signer)
    batch.clear()

  for _, record in read_input(path):
    batch.append((record, cleaned(record, cfg).text))
    if len(batch) >= TOKEN_BATCH:
      flush()
  flush()
  return table.build(signature_file)


def _judge_into(table, record, text, tokens, cfg, index, signer) -> None:
  facts, words, hashes = judge(record, text, tokens, cfg)
  matches = index.matches(hashes) if index is not None else []
  if matches:
    facts.reasons.append("contaminated")
    facts.detail.append("contaminated: " + ", ".join(m.question for m in matches))
  exact = signature = None
  if not facts.reasons:  # only candidates for keeping take part in the global passes
    if cfg.dedup.exact:
      exact = exact_key(words)
    if signer is not None:
      signature = signer(hashes)
  table.add(facts, exact, signature, matches)


# Reasons the global passes give; a record gets at most one, and only if no per-record rule
# rejected it.
EXACT, NEAR, NOT_LONGEST = 1, 2, 3
GLOBAL_REASONS = {EXACT: "exact_duplicate", NEAR: "near_duplicate", NOT_LONGEST: "not_longest_in_chunk"}


@dataclasses.dataclass
class Decisions:
  """The global passes' verdicts, one row per record of all files in input order."""

  ids: pa.Array
  offsets: np.ndarray      # file k's rows are offsets[k]:offsets[k + 1]
  reason: np.ndarray       # uint8: 0 (none) or a GLOBAL_REASONS key
  partner: np.ndarray      # int64: the row duplicated / the longer one (-1: none or unknown)
  similarity: np.ndarray   # float64: estimated Jaccard of a near duplicate

  def detail(self, row: int) -> str:
    reason, partner = int(self.reason[row]), int(self.partner[row])
    other = self.ids[partner].as_py() if partner >= 0 else None
    if reason == EXACT:
      return f"exact_duplicate of {other}"
    if reason == NEAR:
      return (f"near_duplicate of {other} (jaccard ~{self.similarity[row]:.2f})" if other is not None
              else "near_duplicate of an earlier record (Bloom index: a band matched)")
    return f"not_longest_in_chunk: {other} is longer"

  def verdicts(self, k: int, table: FileFacts) -> FileFacts:
    """File k's facts with the global verdicts merged into its rejections, for the writer."""
    start = int(self.offsets[k])
    rejected = dict(table.rejected)
    for row in np.flatnonzero(self.reason[start:start + len(table)]):
      rejected[int(row)] = ([GLOBAL_REASONS[int(self.reason[start + row])]],
                            [self.detail(start + int(row))])
    return dataclasses.replace(table, rejected=rejected, signatures=None)


def decide(tables: list[FileFacts], cfg: FilterConfig, scratch: str | None = None) -> Decisions:
  """Pass 2: duplicates and per-chunk selection, over every file's facts at once, in id order."""
  ids = pa.concat_arrays([t.ids for t in tables]) if tables else pa.array([], pa.string())
  offsets = np.cumsum([0] + [len(t) for t in tables])
  total = int(offsets[-1])
  order = pc.array_sort_indices(ids).to_numpy().astype(np.int64)  # UTF-8 byte order == str order
  if total > 1:
    ordered = ids.take(pa.array(order))
    same = pc.equal(ordered.slice(1), ordered.slice(0, total - 1)).to_numpy(zero_copy_only=False)
    if same.any():
      first = int(np.argmax(same))
      rows = sorted((int(order[first]), int(order[first + 1])))
      places = [_where_row(tables, offsets, row) for row in rows]
      raise MindJaxError(f"{places[1]}: record id {ordered[first].as_py()!r} appears again "
                         f"(first at {places[0]})")
  alive = np.ones(total, dtype=bool)
  for k, t in enumerate(tables):
    alive[np.fromiter(t.rejected, dtype=np.int64, count=len(t.rejected)) + int(offsets[k])] = False
  decisions = Decisions(ids, offsets, np.zeros(total, np.uint8), np.full(total, -1, np.int64),
                        np.full(total, np.nan))

  def reject(rows, reason, partners, similarity=None):
    decisions.reason[rows], decisions.partner[rows] = reason, partners
    if similarity is not None:
      decisions.similarity[rows] = similarity
    alive[rows] = False

  if cfg.dedup.exact:
    rows = order[alive[order]]
    keys = np.concatenate([t.exact for t in tables])[rows]
    _, first, group = np.unique(keys, return_index=True, return_inverse=True)  # first in id order
    later = first[group] != np.arange(len(rows))
    reject(rows[later], EXACT, rows[first[group[later]]])
  if cfg.dedup.near:
    rows = order[alive[order]]
    found = near_duplicates(_signatures_in_order(tables, offsets, rows, cfg.dedup.num_perm, scratch),
                            cfg.dedup.threshold, cfg.dedup.num_perm, cfg.dedup.index, cfg.dedup.bloom_fp)
    if found:
      positions = np.fromiter(found, dtype=np.int64, count=len(found))
      partner = np.array([-1 if of is None else rows[of] for of, _ in found.values()], np.int64)
      similarity = np.array([np.nan if sim is None else sim for _, sim in found.values()])
      reject(rows[positions], NEAR, partner, similarity)
  if cfg.select.mode == "longest":
    rows = order[alive[order]]
    chunks = np.unique(np.concatenate([t.chunk for t in tables])[rows], return_inverse=True)[1]
    tokens = np.concatenate([t.tokens for t in tables])[rows]
    # Per chunk, the most tokens wins; ties go to the smaller id (`rows` is in id order).
    winner = group_winners(chunks, tokens)
    losers = winner != np.arange(len(rows))
    reject(rows[losers], NOT_LONGEST, rows[winner[losers]])
  return decisions


def _where_row(tables, offsets, row: int) -> str:
  """`file:line` of a global row (read again: only an error needs it)."""
  k = int(np.searchsorted(offsets, row, side="right")) - 1
  for index, (where, _) in enumerate(read_input(tables[k].path)):
    if index == row - int(offsets[k]):
      return where
  return tables[k].path


def _signatures_in_order(tables, offsets, rows, num_perm, scratch) -> np.ndarray:
  """The signatures of `rows` (global rows, in id order) gathered from the per-file scratch
  files into one matrix: a memory map in `scratch`, so it needs disk, not memory."""
  if scratch is None:
    matrix = np.zeros((len(rows), num_perm), dtype=np.uint32)
  else:
    matrix = np.lib.format.open_memmap(os.path.join(scratch, "signatures-by-id.npy"), mode="w+",
                                       dtype=np.uint32, shape=(len(rows), num_perm))
  position = np.full(int(offsets[-1]), -1, dtype=np.int64)
  position[rows] = np.arange(len(rows))
  for k, table in enumerate(tables):
    where = position[int(offsets[k]):int(offsets[k + 1])]
    wanted = np.flatnonzero(where >= 0)
    on_disk = isinstance(table.signatures, str)
    if len(wanted):
      rows = np.load(table.signatures, mmap_mode="r") if on_disk else table.signatures
      matrix[where[wanted]] = rows[wanted]
    if on_disk:  # gathered: the disk holds one copy of the signatures, not two
      os.remove(table.signatures)
  return matrix


def write_file(table: FileFacts, cfg: FilterConfig) -> dict:
  """Pass 3 over one file: its kept and rejected parts; returns the file's counts."""
  path = table.path
  output = _output_name(path, cfg)
  fmt = output.rsplit(".", 1)[1]
  out = epath.Path(cfg.out)
  ids = table.ids.to_pylist()
  with RecordFile(out / "kept" / output, fmt) as kept, \
       RecordFile(out / "rejected" / output, fmt) as rejected:
    for row, (where, record) in enumerate(read_input(path)):
      if row >= len(ids) or record["id"] != ids[row]:
        raise MindJaxError(f"{where}: the file changed while it was being filtered")
      computed = {"conversation_tokens": int(table.tokens[row]), "turns": int(table.turns[row]),
                  "speakers": int(table.speakers[row]), "truncated": bool(table.truncated[row])}
      if row in table.rejected:
        reasons, detail = table.rejected[row]
        rejected.add({**record, **computed, "reject_reasons": reasons,
                      "reject_detail": "; ".join(detail)})
      else:
        c = cleaned(record, cfg)
        kept.add({**record, "conversation": c.text,
                  "removed_preamble": record.get("removed_preamble", "") + c.preamble,
                  "removed_trailer": c.trailer + record.get("removed_trailer", ""), **computed})
  return {"file": epath.Path(path).name, "output": output, "input": kept.count + rejected.count,
          "kept": kept.count, "rejected": rejected.count}


def output_names(files: list[str], cfg: FilterConfig) -> dict[str, str]:
  """{input part file: its output name in kept/ and rejected/}; two inputs that would share an
  output name are refused."""
  names = {path: _output_name(path, cfg) for path in files}
  seen = {}
  for path, name in names.items():
    if name in seen:
      raise MindJaxError(f"{path}: would be written as {name}, like {seen[name]}; set format= "
                         "or rename one of them")
    seen[name] = path
  return names


def _output_name(path: str, cfg: FilterConfig) -> str:
  name = epath.Path(path).name
  fmt = cfg.format if cfg.format != "same" else ("parquet" if name.endswith(".parquet") else "jsonl")
  return f"{name.rsplit('.', 1)[0]}.{fmt}"


def run_settings(cfg: FilterConfig, tokenizer_spec: str) -> dict:
  """The settings that determine the output (recorded in out/run.json; see _outdir.claim).

  The input is not among them: refiltering a generation output that has grown (or moved) into
  the same directory is the usual rerun, and the filter rewrites all of its output each time,
  so nothing mixes."""
  rules = config_lib.deciding(cfg, leave_out=(config_lib.SPEED, config_lib.SOURCE))
  del rules["tokenizer"]  # named below as found, not as given
  tokenizer = tokenizer_spec if "://" in tokenizer_spec or tokenizer_spec == BYTE_TOKENIZER \
      else os.path.basename(os.path.abspath(tokenizer_spec))  # by name: a moved one is the same
  return {"tokenizer": tokenizer, **rules}


def claim_output(cfg: FilterConfig, outputs: list[str], settings: dict, tokenizer: str,
                 dry_run: bool = False) -> set[str]:
  """Makes cfg.out this run's; returns the files an earlier run of the filter wrote there (the
  only ones it may replace or remove). Files it did not write are never touched: one in the
  way of an output is refused. `dry_run` checks without writing or deleting."""
  from mind_jax._outdir import claim, owned_files, replaces
  out = epath.Path(cfg.out)
  owned = owned_files(cfg.out, "filter", outputs, "out")

  def remove_owned(earlier):
    log.warning("overwrite: deleting the %d file(s) the earlier filter run wrote in %s",
                len(owned), cfg.out)
    for name in sorted(owned):
      (out / name).unlink(missing_ok=True)
    owned.clear()

  # Until this run ends, the record owns what either run may have written: a run cut off
  # midway leaves nothing unaccounted for. An overwrite deletes the earlier run's files first.
  replacing = cfg.overwrite and replaces(cfg.out, "filter", settings)
  claim(cfg.out, "filter", settings, overwrite=cfg.overwrite, key="out",
        remove_owned=remove_owned, dry_run=dry_run, notes={"tokenizer": tokenizer},
        files=set(outputs) | (set() if replacing else owned))
  return owned


def run(cfg: FilterConfig) -> dict:
  """Filters `cfg.input` into `cfg.out`; returns the summary it writes."""
  from mind_jax._outdir import check_output_dir
  start = time.perf_counter()
  files = input_files(cfg.input)
  if not cfg.out:
    raise MindJaxError("no output directory given (--out DIR or out=...)")
  check_output_dir(cfg.out, "out", inputs=[cfg.input])
  names = output_names(files, cfg)
  outputs = [f"{folder}/{name}" for name in names.values() for folder in ("kept", "rejected")]
  outputs += [SUMMARY, CONTAMINATION]
  tokenizer_spec = resolve_tokenizer(cfg.tokenizer, files, cfg.input)
  if cfg.genres is None:  # what the input's styles write, as the generator noted it
    cfg = cfg.model_copy(update={"genres": run_note(cfg.input, "genres") or []})
  workers = min(cfg.workers or os.cpu_count() or 1, len(files))
  log.info("filter: %d part files from %s, tokenizer %s, %d worker(s)", len(files), cfg.input,
           tokenizer_spec, workers)
  if cfg.dedup.near and cfg.dedup.index == "bloom":
    check_bloom_available()
  if cfg.decontaminate.files:  # fail on a bad evaluation file before any work
    index = _tools(cfg, tokenizer_spec)[1]
    log.info("decontamination: %d questions from %d files, %d-grams", len(index),
             len(cfg.decontaminate.files), cfg.decontaminate.ngram)

  settings = run_settings(cfg, tokenizer_spec)
  claim_output(cfg, outputs, settings, tokenizer_spec, dry_run=True)  # fails before any pass
  scratch = tempfile.mkdtemp(prefix="mind-jax-filter-", dir=cfg.scratch) if cfg.dedup.near else None
  try:
    with FileMapper(workers) as mapper:
      signature_files = [os.path.join(scratch, f"signatures-{k:06d}.npy") if scratch else None
                         for k in range(len(files))]
      tables = mapper.map(inspect_file, list(zip(files, signature_files)), "inspect",
                          lambda path, signature_file: (path, cfg, tokenizer_spec, signature_file))
      decisions = decide(tables, cfg, scratch)
      if not int(decisions.offsets[-1]):
        raise MindJaxError(f"{cfg.input}: its {len(files)} part file(s) hold no records")
      # Nothing is written to cfg.out before the input has passed every check.
      earlier = claim_output(cfg, outputs, settings, tokenizer_spec)
      for folder in ("kept", "rejected"):
        (epath.Path(cfg.out) / folder).mkdir(parents=True, exist_ok=True)
      counts = mapper.map(write_file, list(enumerate(tables)), "write",
                          lambda k, table: (decisions.verdicts(k, table), cfg))
  finally:
    if scratch:
      shutil.rmtree(scratch, ignore_errors=True)

  summary = _summary(cfg, files, tables, decisions, counts, tokenizer_spec,
                     time.perf_counter() - start)
  _finish(cfg, tables, summary, earlier, outputs)
  return summary


def _summary(cfg, files, tables, decisions, counts, tokenizer_spec, elapsed) -> dict:
  read = int(decisions.offsets[-1])
  total = {k: sum(c[k] for c in counts) for k in ("input", "kept", "rejected")}
  if total["kept"] + total["rejected"] != read or any(
      c["kept"] + c["rejected"] != c["input"] for c in counts):
    raise RuntimeError(f"filter lost records: {total} for {read} read")  # a bug, not input
  reasons, styles = collections.Counter(), {}
  kept_tokens = kept_truncated = 0

  def style_entry(name):
    return styles.setdefault(name, {"input": 0, "kept": 0, "rejected": 0, "reasons": collections.Counter()})

  for k, table in enumerate(tables):  # counted with arrays: a Python step per record is slow at 1e8
    start = int(decisions.offsets[k])
    global_reason = decisions.reason[start:start + len(table)]
    local = np.zeros(len(table), dtype=bool)
    local[np.fromiter(table.rejected, dtype=np.int64, count=len(table.rejected))] = True
    kept = ~local & (global_reason == 0)
    kept_tokens += int(table.tokens[kept].sum())
    kept_truncated += int(table.truncated[kept].sum())
    size = len(table.styles)
    for code, (n_input, n_kept) in enumerate(zip(np.bincount(table.style, minlength=size),
                                                 np.bincount(table.style[kept], minlength=size))):
      if n_input:
        entry = style_entry(table.styles[code])
        entry["input"] += int(n_input)
        entry["kept"] += int(n_kept)
        entry["rejected"] += int(n_input - n_kept)
    for row, (why, _) in table.rejected.items():
      style_entry(table.styles[table.style[row]])["reasons"].update(why)
      reasons.update(why)
    rows = np.flatnonzero(global_reason)
    for (code, reason), n in collections.Counter(zip(table.style[rows].tolist(),
                                                     global_reason[rows].tolist())).items():
      style_entry(table.styles[code])["reasons"][GLOBAL_REASONS[reason]] += n
      reasons[GLOBAL_REASONS[reason]] += n
  for entry in styles.values():
    entry["reasons"] = dict(sorted(entry["reasons"].items()))
  return {
      "input_dir": cfg.input, "output_dir": cfg.out, "tokenizer": tokenizer_spec,
      "input_records": read, "kept": total["kept"], "rejected": total["rejected"],
      "reasons": dict(sorted(reasons.items())),
      "kept_tokens": kept_tokens,
      "kept_truncated": kept_truncated,
      "contaminated": reasons.get("contaminated", 0),
      "styles": dict(sorted(styles.items())), "files": counts,
      "elapsed_seconds": round(elapsed, 2),
      "records_per_second": round(read / max(elapsed, 1e-9), 1),
      "config": cfg.model_dump(),
  }


def _finish(cfg, tables, summary, earlier: set[str], outputs: list[str]) -> None:
  from mind_jax._outdir import RUN_RECORD, read_run_record
  out = epath.Path(cfg.out)
  contaminated = sorted((table.ids[row].as_py(), table.styles[table.style[row]], found)
                        for table in tables for row, found in table.matches.items())
  matches = [{"id": record_id, "style": style, "question": m.question, "ngram": m.ngram}
             for record_id, style, found in contaminated for m in found]
  write_records(out / CONTAMINATION, matches, "jsonl")
  stable = {k: v for k, v in summary.items() if k not in ("elapsed_seconds", "records_per_second")}
  write_json(out / SUMMARY, stable)
  # Parts an earlier run of this filter wrote for input files that are gone now: ours to remove.
  for stale in sorted(earlier - set(outputs)):
    (out / stale).unlink(missing_ok=True)
  write_json(out / RUN_RECORD, {**read_run_record(cfg.out), "files": sorted(outputs)}, shared=True)
  log.info("kept %d of %d records (%d rejected: %s) in %.1f s, %.0f records/s",
           summary["kept"], summary["input_records"], summary["rejected"],
           ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()) or "none",
           summary["elapsed_seconds"], summary["records_per_second"])
  print(f"kept {summary['kept']} of {summary['input_records']} records -> {cfg.out}/kept/ "
        f"(rejected: {cfg.out}/rejected/, summary: {cfg.out}/{SUMMARY})")
