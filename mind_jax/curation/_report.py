"""The dataset report: what the generator produced and what the filter kept, style by style.

Reads a filter output (kept/ and rejected/) or a generation output (its part
files, all counted as kept) in one streaming pass, part files in parallel
processes, holding three 4-byte numbers per record and a fixed-size sample per
style, so it scales to hundreds of millions of records. The sample is the
records of smallest hash of (seed, id): the same whichever files and workers
they came through. Lengths, turns and similarity describe the kept
conversations (what training sees). Similarity to the source is ROUGE-L F1 (rouge-score) and
sentence BLEU (sacrebleu) on a deterministic sample per style: both are
quadratic or worse in text length, and a few hundred pairs pin the mean.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import hashlib
import heapq
import html
import io
import json
import logging
import os

import numpy as np
from etils import epath

from mind_jax import config as config_lib
from mind_jax._atomic import write_bytes, write_json
from mind_jax._errors import MindJaxError
from mind_jax._progress import progress_bar
from mind_jax.curation._filter import SUMMARY, input_files, read_input, resolve_tokenizer
from mind_jax.curation._parallel import FileMapper
from mind_jax.curation._text import split_turns
from mind_jax.text import load_tokenizer

log = logging.getLogger("mind_jax.report")

ALL = "all"
PLOTS = ("kept_rejected.png", "lengths.png", "similarity.png")
# Every file the report writes: the only ones a rerun replaces.
REPORT_FILES = ("report.html", "report.md", "report.json") + PLOTS
MEASURE_BATCH = 1024  # records tokenised together; bounds the memory a part file can take


class ReportConfig(config_lib.Section):
  dir: str | None = config_lib.source(None, description="filter output (kept/, rejected/) or "
                                      "generation output directory")
  out: str | None = config_lib.speed(None, description="report directory (default: DIR/report)")
  tokenizer: str | None = config_lib.result(None, description="generator's tokenizer directory "
                                            "(default: from the records, as in mind_jax.filter)")
  similarity_sample: int = config_lib.result(
      100, ge=0, description="records per style scored with ROUGE-L and BLEU (~0.05 s each for "
      "600-token conversations)")
  examples: int = config_lib.result(2, ge=0, description="example conversations per style")
  example_chars: int = config_lib.result(1500, ge=100, description="characters shown per example")
  seed: int = config_lib.result(0, description="seed of the similarity and example samples")
  workers: int = config_lib.speed(0, ge=0, description="processes reading part files (0: one per "
                                  "CPU, at most one per file)")


@dataclasses.dataclass
class _Style:
  """One style's numbers over some part files; `merge` adds another file's."""

  name: str = ""
  records: int = 0
  kept: int = 0
  reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  conversation_tokens: list = dataclasses.field(default_factory=list)  # int32 arrays
  source_tokens: list = dataclasses.field(default_factory=list)
  turns: list = dataclasses.field(default_factory=list)
  # The sample: the kept records of smallest (priority, id), priority a hash of the seed and
  # the id, so it is the same whichever files, workers or order the records came in.
  sample: list = dataclasses.field(default_factory=list)  # (priority, id, conversation, source)

  def merge(self, other: _Style, size: int) -> None:
    self.name = self.name or other.name
    self.records += other.records
    self.kept += other.kept
    self.reasons.update(other.reasons)
    for field in ("conversation_tokens", "source_tokens", "turns"):
      getattr(self, field).extend(getattr(other, field))
    self.sample = heapq.nsmallest(size, self.sample + other.sample)

  def values(self, field: str) -> np.ndarray:
    parts = getattr(self, field)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def _priority(seed: int, record_id: str) -> int:
  return int.from_bytes(hashlib.blake2b(f"{seed}\0{record_id}".encode(), digest_size=8).digest(), "big")


def _sources(directory: str) -> tuple[list[tuple[str, bool]], bool]:
  """[(part file, holds kept records)], and whether the directory is a filter output."""
  root = epath.Path(directory)
  if not root.is_dir():
    raise MindJaxError(f"{directory}: directory does not exist")
  if (root / "kept").is_dir():
    kept = [(p, True) for p in input_files(str(root / "kept"))] if _has_parts(root / "kept") else []
    rejected = ([(p, False) for p in input_files(str(root / "rejected"))]
                if (root / "rejected").is_dir() and _has_parts(root / "rejected") else [])
    if not kept and not rejected:
      raise MindJaxError(f"{directory}: kept/ and rejected/ hold no part files")
    return kept + rejected, True
  return [(p, True) for p in input_files(directory)], False


def _has_parts(path) -> bool:
  return any(True for _ in path.glob("part-*"))


def collect(cfg: ReportConfig) -> dict:
  """The report's numbers (see `render` for the pages)."""
  files, filtered = _sources(cfg.dir)
  tokenizer_spec = resolve_tokenizer(cfg.tokenizer, [path for path, _ in files], cfg.dir)
  _tokenizer(tokenizer_spec)  # a bad tokenizer fails here, before any worker starts
  workers = min(cfg.workers or os.cpu_count() or 1, len(files))
  styles: dict[str, _Style] = collections.defaultdict(_Style)
  size = max(cfg.similarity_sample, cfg.examples)
  with FileMapper(workers) as mapper:
    per_file = mapper.map(file_numbers, files, "report",
                          lambda path, kept: (path, kept, cfg, tokenizer_spec))
  _check_unique_ids([path for path, _ in files], [ids for _, ids in per_file])
  for numbers, _ in per_file:
    for key, style in numbers.items():
      styles[key].merge(style, size)
  report = _numbers(cfg, styles, filtered, tokenizer_spec)
  report["filter_rules"] = filter_rules(cfg.dir) if filtered else []
  return report


@functools.lru_cache(maxsize=1)
def _tokenizer(spec: str):
  return load_tokenizer(spec)


def _id_hash(record_id) -> int:
  return int.from_bytes(hashlib.blake2b(str(record_id).encode(), digest_size=8).digest(), "big")


def _check_unique_ids(paths: list[str], hashes: list[np.ndarray]) -> None:
  """A record id seen twice (parts copied in twice, two runs mixed) would be counted twice:
  refused, naming both places. Ids travel as 8-byte hashes; a repeated hash is confirmed on
  the ids themselves before anything is said."""
  every = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
  values, counts = np.unique(every, return_counts=True)
  repeated = set(values[counts > 1].tolist())
  if not repeated:
    return
  seen = {}
  for path, file_hashes in zip(paths, hashes):
    if not repeated.intersection(file_hashes.tolist()):
      continue
    for where, record in read_input(path):
      if _id_hash(record["id"]) in repeated:
        if record["id"] in seen:
          raise MindJaxError(f"{where}: record id {record['id']!r} appears again (first at "
                             f"{seen[record['id']]})")
        seen[record["id"]] = where


def file_numbers(path: str, kept: bool, cfg: ReportConfig,
                 tokenizer_spec: str) -> tuple[dict[str, _Style], np.ndarray]:
  """One part file's numbers per style and its records' id hashes (run in a worker process)."""
  tokenizer = _tokenizer(tokenizer_spec)
  styles: dict[str, _Style] = collections.defaultdict(_Style)
  columns: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
  # A chunk's styles are written next to each other: counting each source once per file saves
  # the tokenizer's time without a cache that grows with the dataset.
  source_tokens: dict[tuple, int] = {}
  size = max(cfg.similarity_sample, cfg.examples)
  batch, ids = [], []
  for _, record in read_input(path):
    ids.append(_id_hash(record["id"]))
    s = styles[record["style"]]
    s.name = s.name or record.get("style_name") or record["style"]
    s.records += 1
    if not kept:
      s.reasons.update(record.get("reject_reasons") or ["rejected"])
      continue
    s.kept += 1
    batch.append(record)
    if len(batch) >= MEASURE_BATCH:
      _measure(batch, styles, columns, tokenizer, source_tokens, cfg.seed, size)
      batch = []
  _measure(batch, styles, columns, tokenizer, source_tokens, cfg.seed, size)
  for key, s in styles.items():
    s.sample = heapq.nsmallest(size, s.sample)
    for field, values in columns[key].items():
      getattr(s, field).append(np.asarray(values, dtype=np.int32))
  return dict(styles), np.asarray(ids, dtype=np.uint64)


def filter_rules(directory: str) -> list[str]:
  """The filter's settings, in words, from its summary (empty when there is none)."""
  path = epath.Path(directory) / SUMMARY
  if not path.exists():
    return []
  c = json.loads(path.read_text())["config"]
  rules = [f"at least {c['min_tokens']} tokens", "cleanup" if c["cleanup"] else "no cleanup",
           f"truncated: {c['truncated']}"]
  if c["turns"]["enabled"]:
    rules.append(f"{c['turns']['min_speakers']}+ speakers, {c['turns']['min_turns']}+ turns")
  if c["repetition"]["enabled"]:
    rules.append("repetition")
  if c["copy_source"]["enabled"]:
    rules.append("source copying")
  if c["dedup"]["exact"]:
    rules.append("exact dedup")
  if c["dedup"]["near"]:
    rules.append(f"near dedup (Jaccard {c['dedup']['threshold']}, {c['dedup']['index']} index)")
  if c["decontaminate"]["files"]:
    rules.append(f"decontaminated against {len(c['decontaminate']['files'])} evaluation file(s)")
  rules.append("longest per chunk" if c["select"]["mode"] == "longest" else "all conversations")
  if c["select"]["styles"]:
    rules.append("styles: " + ", ".join(c["select"]["styles"]))
  return rules


def _measure(records, styles, columns, tokenizer, source_tokens, seed, size) -> None:
  missing = [r for r in records if "conversation_tokens" not in r]
  counts = tokenizer.count_tokens([r["conversation"] for r in missing])
  for r, n in zip(missing, counts, strict=True):
    r["conversation_tokens"] = n
  new_sources = {}
  for r in records:
    key = (r["doc_id"], r["chunk_index"])
    if key not in source_tokens and isinstance(r.get("source"), str):
      new_sources[key] = r["source"]
  for key, n in zip(new_sources, tokenizer.count_tokens(list(new_sources.values())), strict=True):
    source_tokens[key] = n
  for r in records:
    s, column = styles[r["style"]], columns[r["style"]]
    column["conversation_tokens"].append(r["conversation_tokens"])
    column["turns"].append(r["turns"] if "turns" in r else split_turns(r["conversation"]).count)
    key = (r["doc_id"], r["chunk_index"])
    if key in source_tokens:
      column["source_tokens"].append(source_tokens[key])
    s.sample.append((_priority(seed, r["id"]), r["id"], r["conversation"], r.get("source") or ""))
    if len(s.sample) > 2 * size:  # pruned now and then: at most 2 x size texts are held
      s.sample = heapq.nsmallest(size, s.sample)


def _distribution(values) -> dict:
  if not len(values):
    return {"mean": None, "median": None, "p90": None}
  a = np.asarray(values, dtype=np.float64)
  return {"mean": round(float(a.mean()), 1), "median": round(float(np.median(a)), 1),
          "p90": round(float(np.percentile(a, 90)), 1)}


def similarity_scores(pairs: list[tuple[str, str]]) -> list[tuple[float, float]]:
  """(ROUGE-L F1 in 0-1, sentence BLEU in 0-100) of each (conversation, source) pair."""
  import sacrebleu
  from rouge_score import rouge_scorer
  scorer = rouge_scorer.RougeScorer(["rougeL"])
  scores = []
  with progress_bar(len(pairs), "similarity", unit="pair", enabled=len(pairs) > 50) as bar:
    for conversation, source in pairs:
      scores.append((scorer.score(source, conversation)["rougeL"].fmeasure,
                     sacrebleu.sentence_bleu(conversation, [source]).score))
      bar.update(1)
  return scores


def _mean_similarity(scores: list[tuple[float, float]]) -> dict:
  if not scores:
    return {"rouge_l": None, "bleu": None, "scored": 0}
  rouge, bleu = np.mean(np.asarray(scores), axis=0)
  return {"rouge_l": round(float(rouge), 4), "bleu": round(float(bleu), 2), "scored": len(scores)}


def _numbers(cfg, styles, filtered, tokenizer_spec) -> dict:
  order = sorted(styles)
  samples = {k: [(c, src) for _, _, c, src in styles[k].sample[:cfg.similarity_sample] if src]
             for k in order}
  flat = similarity_scores([pair for k in order for pair in samples[k]])
  scores, at = {}, 0
  for k in order:  # each style's slice of the scores
    scores[k], at = flat[at:at + len(samples[k])], at + len(samples[k])

  def entry(keys: list[str]) -> dict:
    parts = [styles[k] for k in keys]
    records = sum(p.records for p in parts)
    kept = sum(p.kept for p in parts)
    reasons = sum((p.reasons for p in parts), collections.Counter())

    def distribution(field):
      return _distribution(np.concatenate([p.values(field) for p in parts]))
    return {
        "records": records, "kept": kept, "rejected": records - kept,
        "kept_share": round(kept / records, 4) if records else None,
        "reasons": dict(sorted(reasons.items())),
        "conversation_tokens": distribution("conversation_tokens"),
        "source_tokens": distribution("source_tokens"),
        "turns": distribution("turns"),
        "similarity": _mean_similarity([x for k in keys for x in scores[k]]),
    }
  return {"dir": cfg.dir, "filtered": filtered, "tokenizer": tokenizer_spec,
          "styles": {k: {"name": styles[k].name, **entry([k])} for k in order},
          ALL: entry(order),
          "examples": {k: [{"id": i, "conversation": c[:cfg.example_chars],
                            "truncated": len(c) > cfg.example_chars}
                           for _, i, c, _ in sorted(styles[k].sample, key=lambda x: x[1])[:cfg.examples]]
                       for k in order},
          "_lengths": {k: styles[k].values("conversation_tokens") for k in order}}


# --- rendering ------------------------------------------------------------------------------------

def _plots(report: dict) -> dict[str, bytes]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  styles = list(report["styles"])
  pngs = {}

  def save(fig, name):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    pngs[name] = buffer.getvalue()

  fig, ax = plt.subplots(figsize=(8, 3.6))
  reasons = sorted({r for s in styles for r in report["styles"][s]["reasons"]})
  bottom = np.array([report["styles"][s]["kept"] for s in styles], dtype=float)
  ax.bar(styles, bottom, label="kept", color="#2b8a3e")
  for reason, color in zip(reasons, plt.cm.tab20.colors, strict=False):
    heights = np.array([report["styles"][s]["reasons"].get(reason, 0) for s in styles], dtype=float)
    ax.bar(styles, heights, bottom=bottom, label=reason, color=color)
    bottom += heights
  ax.set_ylabel("records")
  ax.set_title("Kept and rejected records per style (a record may have several reasons)")
  ax.legend(fontsize=7, ncol=2)
  ax.tick_params(axis="x", rotation=30, labelsize=8)
  save(fig, "kept_rejected.png")

  # Small multiples on common bins, so shapes compare across styles.
  lengths = report["_lengths"]
  every = np.concatenate([lengths[s] for s in styles if s in lengths] or [np.zeros(0)])
  bins = np.histogram_bin_edges(every, bins=30) if len(every) else 10
  cols = min(4, max(len(styles), 1))
  rows = -(-max(len(styles), 1) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.1 * rows), sharex=True, squeeze=False)
  for i, ax in enumerate(axes.flat):
    if i >= len(styles):
      ax.axis("off")
      continue
    values = lengths.get(styles[i], np.zeros(0))
    if len(values):
      ax.hist(values, bins=bins, color="#1c7ed6")
    else:
      ax.text(0.5, 0.5, "none kept", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    ax.set_title(styles[i], fontsize=8)
    ax.tick_params(labelsize=7)
  fig.supxlabel("tokens per kept conversation", fontsize=8)
  fig.supylabel("conversations", fontsize=8)
  fig.tight_layout()
  save(fig, "lengths.png")

  fig, ax1 = plt.subplots(figsize=(8, 3.2))
  x = np.arange(len(styles))
  rouge = [report["styles"][s]["similarity"]["rouge_l"] or 0 for s in styles]
  bleu = [report["styles"][s]["similarity"]["bleu"] or 0 for s in styles]
  ax1.bar(x - 0.2, rouge, 0.4, label="ROUGE-L F1", color="#f08c00")
  ax2 = ax1.twinx()
  ax2.bar(x + 0.2, bleu, 0.4, label="BLEU", color="#5f3dc4")
  ax1.set_xticks(x, styles, rotation=30, fontsize=8)
  ax1.set_ylabel("ROUGE-L F1")
  ax2.set_ylim(0, max(1.0, *bleu) * 1.1)
  ax2.set_ylabel("BLEU")
  ax1.set_title("Similarity of kept conversations to their source chunk")
  fig.legend(loc="upper right", fontsize=7)
  save(fig, "similarity.png")
  return pngs


def _table(report: dict) -> tuple[list[str], list[list[str]]]:
  header = ["style", "records", "kept", "kept share", "conversation tokens mean / median / p90",
            "source tokens mean / median / p90", "turns mean", "ROUGE-L", "BLEU", "rejected for"]
  rows = []
  for key, e in [*report["styles"].items(), (ALL, report[ALL])]:
    d = lambda x: " / ".join("-" if x[k] is None else f"{x[k]:g}" for k in ("mean", "median", "p90"))  # noqa: E731
    sim = e["similarity"]
    rows.append([key, str(e["records"]), str(e["kept"]),
                 "-" if e["kept_share"] is None else f"{e['kept_share']:.1%}",
                 d(e["conversation_tokens"]), d(e["source_tokens"]),
                 "-" if e["turns"]["mean"] is None else f"{e['turns']['mean']:g}",
                 "-" if sim["rouge_l"] is None else f"{sim['rouge_l']:.3f}",
                 "-" if sim["bleu"] is None else f"{sim['bleu']:.1f}",
                 ", ".join(f"{r} {n}" for r, n in e["reasons"].items()) or "-"])
  return header, rows


def render(report: dict, out_dir: str) -> dict[str, str]:
  """Writes report.json, report.md (+ PNGs) and a self-contained report.html."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  pngs = _plots(report)
  assert set(pngs) == set(PLOTS), "REPORT_FILES must list every plot"
  for name, data in pngs.items():
    write_bytes(out / name, data)
  public = {k: v for k, v in report.items() if not k.startswith("_")}
  write_json(out / "report.json", public)
  header, rows = _table(report)
  source = "filter output" if report["filtered"] else "generation output (not filtered)"
  md = [f"# MIND dataset report: {report['dir']}", "",
        f"{source}; tokens counted with `{report['tokenizer']}`."
        + (f" Filter: {'; '.join(report['filter_rules'])}." if report["filter_rules"] else "")
        + " Lengths, turns and similarity "
        "describe kept conversations; similarity is the mean over a sample of "
        f"{report[ALL]['similarity']['scored']} records.", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  md += ["| " + " | ".join(row) + " |" for row in rows]
  md += ["", "![kept and rejected](kept_rejected.png)", "", "![lengths](lengths.png)", "",
         "![similarity](similarity.png)", "", "## Examples", ""]
  for style, examples in report["examples"].items():
    md.append(f"### {report['styles'][style]['name']}")
    for ex in examples:
      md += ["", f"`{ex['id']}`", "", "```text", ex["conversation"] + (" [...]" if ex["truncated"] else ""),
             "```"]
    md.append("")
  write_bytes(out / "report.md", ("\n".join(md) + "\n").encode())

  def img(name):
    return f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(pngs[name]).decode()}">'
  cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)  # noqa: E731
  page = [
      "<!doctype html><html><head><meta charset='utf-8'>",
      f"<title>MIND dataset report: {html.escape(report['dir'])}</title><style>",
      "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}",
      "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}",
      "pre{white-space:pre-wrap;background:#f6f6f6;padding:.6em;font-size:12px}img{max-width:100%}",
      "</style></head><body>", f"<h1>MIND dataset report</h1><p>{html.escape(report['dir'])}: "
      f"{html.escape(source)}; tokens counted with <code>{html.escape(report['tokenizer'])}</code>."
      + (f" Filter: {html.escape('; '.join(report['filter_rules']))}." if report["filter_rules"] else "")
      +
      " Lengths, turns and similarity describe kept conversations.</p>",
      "<table><tr>" + cells(header, "th") + "</tr>",
      *["<tr>" + cells(row, "td") + "</tr>" for row in rows], "</table>",
      img("kept_rejected.png"), img("lengths.png"), img("similarity.png"), "<h2>Examples</h2>"]
  for style, examples in report["examples"].items():
    page.append(f"<h3>{html.escape(report['styles'][style]['name'])}</h3>")
    for ex in examples:
      page.append(f"<p><code>{html.escape(ex['id'])}</code></p><pre>"
                  f"{html.escape(ex['conversation'])}{' [...]' if ex['truncated'] else ''}</pre>")
  page.append("</body></html>")
  write_bytes(out / "report.html", ("\n".join(page) + "\n").encode())
  return {"html": str(out / "report.html"), "markdown": str(out / "report.md"),
          "json": str(out / "report.json")}


def run(cfg: ReportConfig) -> dict:
  """Collects and renders the report; returns its numbers."""
  if not cfg.dir:
    raise MindJaxError("no directory given (DIR or dir=...)")
  from mind_jax._outdir import RUN_RECORD, check_output_dir, owned_files
  out = cfg.out or str(epath.Path(cfg.dir) / "report")
  check_output_dir(out, "out")
  owned_files(out, "report", REPORT_FILES, "out")  # refuses files the report did not write
  report = collect(cfg)
  paths = render(report, out)
  write_json(epath.Path(out) / RUN_RECORD,
                    {"job": "report", "settings": {"dir": cfg.dir}, "files": list(REPORT_FILES)})
  summary_path = epath.Path(cfg.dir) / SUMMARY
  log.info("report on %d records (%d kept) of %d styles%s", report[ALL]["records"],
           report[ALL]["kept"], len(report["styles"]),
           " (filter summary found)" if summary_path.exists() else "")
  print(f"report: {paths['html']} (also {paths['markdown']}, {paths['json']})")
  return {k: v for k, v in report.items() if not k.startswith("_")}
