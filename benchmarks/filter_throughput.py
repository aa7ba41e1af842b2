"""Filter throughput: python -m mind_jax.filter against datatrove's filters, same records, same run.

Makes N synthetic conversations of about 600 tokens in mind_jax.generate's
record schema (two speakers, Zipf-distributed words and numbers, with planted
preambles, trailing notes, short, repetitive, exactly and nearly duplicated
records), a BPE tokenizer trained on them (the "generator's" tokenizer), and
times, each with the same number of worker processes:

  mind_jax rules       paper length rule + cleanup + turns + repetition + copy + exact dedup
  mind_jax + MinHash   the same plus datasketch MinHash LSH near-duplicate removal
  datatrove Gopher     JsonlReader -> GopherRepetitionFilter -> JsonlWriter
  datatrove + MinHash  Gopher repetition, then datatrove's four MinHash stages

The work is not identical (ours also tokenises every conversation, parses turns
and writes rejected records with reasons); the point is whether a user pays a
price for that against the reference tool. Also reported: how many of the
planted near duplicates each MinHash pass removed.

  python benchmarks/filter_throughput.py --records 100000 --workers 2 --out docs/results
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np

TEXT_FILES = 8


def vocabulary(rng, size=20000):
  letters = list("abcdefghijklmnopqrstuvwxyz")
  words = {"".join(rng.choice(letters, rng.integers(2, 10))) for _ in range(size * 2)}
  return sorted(words)[:size]


def synthetic_records(n: int, seed: int = 0) -> tuple[list[dict], dict[str, str]]:
  """Records with ~450 words (~600 BPE tokens) each, and {planted near duplicate: its original}."""
  rng = np.random.default_rng(seed)
  vocab = np.array(vocabulary(rng) + [str(i) for i in range(100)])
  weights = 1.0 / np.arange(1, len(vocab) + 1)
  weights /= weights.sum()
  speakers = [("Alex", "Sam"), ("Teacher", "Student"), ("Prof. Lee", "Prof. Diaz"),
              ("Interviewer", "Expert")]
  styles = ["two_students", "teacher_student", "two_professors", "interview", "debate",
            "problem_solving", "layman_know_all"]
  records, near = [], {}
  for i in range(n):
    kind = rng.random()
    doc, chunk, style = f"doc{i // 14:06d}", (i // 7) % 2, styles[i % 7]
    a, b = speakers[i % len(speakers)]
    if kind < 0.03 and i > 10:  # a near duplicate of an earlier record: 1% of words changed
      original = records[int(rng.integers(0, i))]
      base = original["conversation"].split(" ")
      for j in rng.integers(0, len(base), len(base) // 100):
        base[j] = str(vocab[int(rng.integers(0, 20000))])
      text = " ".join(base)
      near[f"{doc}#{chunk}#{style}"] = original["id"]
    elif kind < 0.04 and i > 10:  # an exact duplicate
      text = records[int(rng.integers(0, i))]["conversation"]
    elif kind < 0.06:  # too short
      text = f"{a}: {' '.join(rng.choice(vocab, 8, p=weights))}.\n{b}: Yes."
    elif kind < 0.07:  # a loop
      text = f"{a}: {' '.join(rng.choice(vocab, 12, p=weights))}.\n" * 30
    else:
      turns = []
      for t in range(int(rng.integers(6, 12))):
        words = rng.choice(vocab, int(rng.integers(30, 60)), p=weights)
        turns.append(f"{(a, b)[t % 2]}: " + " ".join(words) + ".")
      text = "\n".join(turns)
      if rng.random() < 0.3:
        text = "Sure! Here is a conversation between the two of them:\n\n" + text
      if rng.random() < 0.2:
        text += "\n\nNote: this conversation stays faithful to the context."
    records.append({
        "id": f"{doc}#{chunk}#{style}", "doc_id": doc, "chunk_index": chunk, "style": style,
        "style_name": style, "source": " ".join(rng.choice(vocab, 380, p=weights)),
        "conversation": text, "prompt_tokens": 700, "output_tokens": 600,
        "finish_reason": "eos", "error": None, "model": "", "temperature": 1.0, "top_p": 0.9,
        "top_k": 0, "max_new_tokens": 3500, "seed": 0})
  return records, near


def train_tokenizer(records, out_dir):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  core = Tokenizer(models.BPE())
  core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  core.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=["<s>", "</s>"])
  core.train_from_iterator((r["conversation"] for r in records[:5000]), trainer)
  PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>").save_pretrained(out_dir)


def save_results(results: dict, out_dir: str | None, name: str) -> None:
  """Prints the results and writes OUT_DIR/NAME.json, where the docs' figures are read from."""
  print(json.dumps(results, indent=1))
  if out_dir:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
      json.dump(results, f, indent=1)


def machine() -> str:
  return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


@contextlib.contextmanager
def synthetic_input(n: int, prefix: str):
  """n synthetic records as part files in a temporary WORK/gen and a tokenizer trained on them
  in WORK/tokenizer: yields (WORK, input dir, tokenizer dir, records, planted near duplicates)
  and removes WORK afterwards."""
  work = tempfile.mkdtemp(prefix=prefix)
  try:
    records, near = synthetic_records(n)
    src, tok = os.path.join(work, "gen"), os.path.join(work, "tokenizer")
    write_input(records, src)
    train_tokenizer(records, tok)
    yield work, src, tok, records, near
  finally:
    shutil.rmtree(work, ignore_errors=True)


def write_input(records, directory):
  os.makedirs(directory, exist_ok=True)
  for k in range(TEXT_FILES):
    with open(os.path.join(directory, f"part-00000-{k:06d}.jsonl"), "w") as f:
      for r in records[k::TEXT_FILES]:
        f.write(json.dumps(r) + "\n")


def time_ours(src, out, tokenizer, workers, near, index="memory"):
  from mind_jax.config import load_config
  from mind_jax.curation import FilterConfig, run_filter
  overrides = [f"input={src}", f"out={out}", f"tokenizer={tokenizer}", f"workers={workers}",
               "turns.enabled=true", "repetition.enabled=true", "copy_source.enabled=true",
               f"dedup.near={str(near).lower()}", f"dedup.index={index}"]
  start = time.perf_counter()
  summary = run_filter(load_config(FilterConfig, None, overrides))
  return time.perf_counter() - start, summary


def time_datatrove(src, work, workers, near):
  from datatrove.executor import LocalPipelineExecutor
  from datatrove.pipeline.filters import GopherRepetitionFilter
  from datatrove.pipeline.readers import JsonlReader
  from datatrove.pipeline.writers import JsonlWriter

  def reader():
    return JsonlReader(src, text_key="conversation", id_key="id", glob_pattern="part-*.jsonl")

  def run(pipeline, tasks=TEXT_FILES, name="stage"):
    LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=workers,
                          logging_dir=os.path.join(work, "logs", name)).run()

  start = time.perf_counter()
  if not near:
    run([reader(), GopherRepetitionFilter(), JsonlWriter(os.path.join(work, "kept"))])
    return time.perf_counter() - start, _count(os.path.join(work, "kept"))
  from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster,
                                        MinhashDedupFilter, MinhashDedupSignature)
  from datatrove.pipeline.dedup.minhash import MinhashConfig
  cfg = MinhashConfig()
  sigs, buckets, clusters = (os.path.join(work, x) for x in ("sigs", "buckets", "clusters"))
  run([reader(), GopherRepetitionFilter(), MinhashDedupSignature(sigs, config=cfg)], name="1")
  run([MinhashDedupBuckets(sigs, buckets, config=cfg)], tasks=cfg.num_buckets, name="2")
  run([MinhashDedupCluster(buckets, clusters, config=cfg)], tasks=1, name="3")
  run([reader(), GopherRepetitionFilter(), MinhashDedupFilter(clusters),
       JsonlWriter(os.path.join(work, "kept"))], name="4")
  return time.perf_counter() - start, _count(os.path.join(work, "kept"))


def _count(directory):
  import gzip
  ids = []
  for name in sorted(os.listdir(directory)):
    with gzip.open(os.path.join(directory, name), "rt") as f:
      ids += [json.loads(line)["id"] for line in f]
  return ids


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--records", type=int, default=100000)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--out", help="directory for the results JSON")
  parser.add_argument("--runs", default="mind_jax_rules,mind_jax_minhash,datatrove_gopher,"
                      "datatrove_minhash", help="comma-separated runs (also: mind_jax_bloom)")
  parser.add_argument("--name", default="filter_throughput", help="results file name")
  args = parser.parse_args()
  t = time.perf_counter()
  with synthetic_input(args.records, "filter-bench-") as (work, src, tok, records, near):
    from mind_jax.text import load_tokenizer
    tokens = load_tokenizer(tok).count_tokens([r["conversation"] for r in records[:2000]])
    print(f"{args.records} records in {time.perf_counter() - t:.0f} s; conversation tokens: "
          f"mean {np.mean(tokens):.0f}, median {np.median(tokens):.0f}")
    del records
    results = {"records": args.records, "workers": args.workers,
               "mean_conversation_tokens": round(float(np.mean(tokens)), 1),
               "planted_near_duplicates": len(near),
               "machine": machine()}
    runs = {"mind_jax_rules": lambda: time_ours(src, f"{work}/o1", tok, args.workers, False),
            "mind_jax_minhash": lambda: time_ours(src, f"{work}/o2", tok, args.workers, True),
            "mind_jax_bloom": lambda: time_ours(src, f"{work}/o3", tok, args.workers, True, "bloom"),
            "datatrove_gopher": lambda: time_datatrove(src, f"{work}/d1", args.workers, False),
            "datatrove_minhash": lambda: time_datatrove(src, f"{work}/d2", args.workers, True)}
    for name in args.runs.split(","):
      fn = runs[name]
      seconds, outcome = fn()
      kept_ids = _kept_ids(outcome["output_dir"]) if isinstance(outcome, dict) else set(outcome)
      # A planted pair is resolved when at most one of the two survives (either may be kept).
      resolved = sum(not (dup in kept_ids and original in kept_ids) for dup, original in near.items())
      results[name] = {"seconds": round(seconds, 1), "records_per_s": round(args.records / seconds),
                       "kept": len(kept_ids), "planted_near_duplicate_pairs_resolved": resolved}
      print(f"{name:20s} {seconds:7.1f} s {args.records / seconds:9.0f} records/s  kept "
            f"{len(kept_ids)}  planted near-duplicate pairs resolved {resolved}/{len(near)}")
    for ours, theirs in [("mind_jax_rules", "datatrove_gopher"), ("mind_jax_minhash", "datatrove_minhash")]:
      if ours not in results or theirs not in results:
        continue
      ratio = results[ours]["records_per_s"] / results[theirs]["records_per_s"]
      results[f"{ours}_vs_{theirs}"] = round(ratio, 2)
      print(f"{ours} / {theirs}: {ratio:.2f}x")
    save_results(results, args.out, args.name)


def _kept_ids(out_dir):
  ids = set()
  for name in os.listdir(os.path.join(out_dir, "kept")):
    with open(os.path.join(out_dir, "kept", name)) as f:
      ids.update(json.loads(line)["id"] for line in f)
  return ids


if __name__ == "__main__":
  main()
