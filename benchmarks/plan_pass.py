"""Host-side work of `generate` before the engine: planning the corpus and building the prompts.

The job reads the corpus twice: once to plan (counts, the token estimate, what is already
done) and once to feed the engine. Measured on the same corpus and tokenizer, in one run:

  two full passes   the earlier way: each pass chunks every document (chunking tokenizes a
                    chunk several times over as it grows) and builds every (chunk, style)
                    prompt through the chat template
  plan + feed       now: the planning pass chunks once, records where each document was cut
                    and counts each chunk's tokens once (the prompt's instruction and template
                    are counted once per style); the feeding pass cuts the documents where the
                    plan says and builds the prompts

Corpus: CHAMP problems (the `champ-dataset` package) joined ten to a document, so documents
span several 500-token chunks; all seven styles; the byte-level tokenizer (a Rust BPE, one token
per byte).

  python benchmarks/plan_pass.py --out bench_out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time


def corpus(path, documents, per_document=10):
  from mind_jax.data import read_documents
  problems = [d.text for d in read_documents("champ", limit=None)]
  with open(path, "w") as f:
    for i in range(documents):
      parts = [problems[(i * per_document + j) % len(problems)] for j in range(per_document)]
      f.write(json.dumps({"id": f"doc{i}", "text": "\n\n".join(parts)}) + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--documents", type=int, default=300)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  from mind_jax import config
  from mind_jax.data import ReadStats
  from mind_jax.mind import GenerateConfig, load_styles, plan_units
  from mind_jax.mind._pipeline import ChunkPlan, chunked_documents, unit_id
  from mind_jax.mind._styles import format_prompt, prompt_text
  from mind_jax.text import byte_tokenizer

  source = os.path.join(tempfile.mkdtemp(prefix="plan_bench_"), "corpus.jsonl")
  corpus(source, args.documents)
  cfg = config.load_config(GenerateConfig, None, [f"input.source={source}", "input.limit=null"])
  tokenizer, styles = byte_tokenizer(), list(load_styles().values())

  def two_full_passes():
    planned = sum(1 for _ in plan_units(cfg, tokenizer, styles, ReadStats()))
    fed = sum(len(u.prompt_ids) for u in plan_units(cfg, tokenizer, styles, ReadStats()))
    return planned, fed

  def plan_and_feed():
    plan, planned = ChunkPlan(), 0
    overhead = {s.key: len(format_prompt(tokenizer, prompt_text("", s))) for s in styles}
    estimate = 0
    for doc, chunks in chunked_documents(cfg, tokenizer, ReadStats(), plan=plan):
      for index, tokens in enumerate(tokenizer.count_tokens(chunks)):
        for style in styles:
          planned += 1
          estimate += tokens + overhead[style.key]
          unit_id(doc.id, index, style.key)
    fed = sum(len(u.prompt_ids) for u in plan_units(cfg, tokenizer, styles, ReadStats(), plan=plan))
    return planned, fed, estimate

  times = {"two_full_passes": [], "plan_and_feed": []}
  for _ in range(args.repeats):
    start = time.perf_counter()
    planned, fed = two_full_passes()
    times["two_full_passes"].append(time.perf_counter() - start)
    start = time.perf_counter()
    planned_now, fed_now, estimate = plan_and_feed()
    times["plan_and_feed"].append(time.perf_counter() - start)
    assert (planned, fed) == (planned_now, fed_now), "both ways must build the same prompts"
  best = {k: min(v) for k, v in times.items()}
  summary = {
      "machine": f"{platform.machine()}, {os.cpu_count()} cores", "documents": args.documents,
      "units": planned, "prompt_tokens": fed, "estimated_prompt_tokens": estimate,
      "estimate_error": (estimate - fed) / fed, "seconds": best, "runs": times,
      "speedup": best["two_full_passes"] / best["plan_and_feed"]}
  print(f"{args.documents} documents -> {planned} units, {fed} prompt tokens "
        f"(plan's estimate {estimate}, {summary['estimate_error']:+.2%})")
  print(f"two full passes {best['two_full_passes']:.2f} s; plan + feed "
        f"{best['plan_and_feed']:.2f} s: {summary['speedup']:.2f}x")
  with open(os.path.join(args.out, "plan_pass.json"), "w") as f:
    json.dump(summary, f, indent=2)


if __name__ == "__main__":
  main()
