"""The paged, prefix-sharing engine against the fixed-slot engine it replaced, on the MIND
workload, at one KV memory budget, whole processes, alternately, in one run.

Workload: long math documents (CHAMP problems and solutions from the champ-dataset package,
joined into documents of ~6,000 tokens) cut into ~500-token chunks, all seven styles, chat
prompts with the chunk first (the job's defaults), a small Llama with random fp32 weights and
the byte-level tokenizer, greedy decoding with EOS ignored and each conversation's
length drawn from 256-512 tokens (fixed seed), so both engines make exactly the same tokens;
16 decode steps per call for both (the shipped TPU configs' setting).

The model's shape decides what bounds a decode step, so there are two (`--model`):

  generator  (default) 60M parameters, one KV head: its weights are as many bytes as 60,000
             tokens of KV cache, the regime of the generators MIND uses (Llama-3.1-8B: 125,000;
             70B: 431,000), where a step's cost is the weights' and more sequences per step
             amortize it
  kv-bound   24M parameters, four KV heads: weights worth only 6,000 tokens of cache, so a
             step's cost is mostly the sequences' KV reads, on this CPU nearly linear in them

  fixed   the engine as of commit aff1976 (before paging), checked out from git into a
          temporary directory: `slots` rows of the whole context each
  paged   this tree's engine: a pool of the same bytes (kv_pages = slots x context / page),
          up to `--paged-slots` sequences at once, each chunk's common prompt prefix shared

Each engine runs in its own process (what a user runs: import, build, compile, generate);
reported: the whole process's seconds, the generate phase's output tokens/s (and without the
first calls of its programs, which compile them), sequences decoding at once, prompt tokens prefilled, and whether
the token ids equal the other engine's.

  python benchmarks/generate_paged.py --out bench_out          # the docs' figures
  python benchmarks/generate_paged.py --out /tmp/x --check     # a small, fast run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

BASELINE_COMMIT = "aff1976"
MODELS = {
    "generator": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=1),
    "kv-bound": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                     num_attention_heads=8, num_key_value_heads=4),
}
CONTEXT = 2048
PAGE = 64


def units(chunks: int, docs_per_long: int = 12, seed: int = 0):
  """(prompt ids, shared prefix length, output length) of every (chunk, style) unit of the
  first `chunks` chunks."""
  import numpy as np

  from mind_jax.data import chunk_text, read_documents
  from mind_jax.mind import format_prompt, load_styles, prompt_text
  from mind_jax.testing import byte_tokenizer
  tok = byte_tokenizer()
  texts = [d.text for d in read_documents("champ", limit=docs_per_long * (1 + chunks // 20))]
  long_docs = ["\n\n".join(texts[i:i + docs_per_long]) for i in range(0, len(texts), docs_per_long)]
  styles = list(load_styles().values())
  rs = np.random.RandomState(seed)
  out = []
  cut = [c for text in long_docs for c in chunk_text(text, lambda t: len(tok.encode(t)), 500, 50)]
  for chunk in cut[:chunks]:
    prompts = [format_prompt(tok, prompt_text(chunk, s, "context_first"), "chat") for s in styles]
    shared = min(map(len, prompts))
    for p in prompts[1:]:
      shared = next((i for i in range(shared) if p[i] != prompts[0][i]), shared)
    out.extend((p, shared, int(rs.randint(256, 513))) for p in prompts)
  return out, tok


def worker(kind: str, slots: int, chunks: int, fixed_slots: int, model_name: str) -> dict:
  import jax
  from flax import nnx

  from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams
  from mind_jax.nn import Llama, LlamaConfig
  work, tok = units(chunks)
  config = LlamaConfig(vocab_size=tok.vocab_size, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, **MODELS[model_name])
  model = Llama(config, rngs=nnx.Rngs(0))
  keys = dict(slots=slots, max_len=CONTEXT, steps_per_call=16)
  if kind == "paged":  # the fixed engine's bytes: fixed_slots rows of the context
    keys.update(page_size=PAGE, kv_pages=fixed_slots * CONTEXT // PAGE)
  engine = Engine(model, None, EngineConfig(**keys))
  requests = []
  for i, (prompt, shared, new) in enumerate(work):
    sampling = SamplingParams(max_new_tokens=new, temperature=0.0, ignore_eos=True)
    extra = {"prefix_len": shared} if kind == "paged" else {}
    requests.append(Request(i, prompt, sampling, **extra))
  # No warmup: like the generate job, each engine compiles the programs its run meets when it
  # first meets them (the seconds this takes are reported apart).
  start = time.perf_counter()
  results = engine.generate_all(requests)
  seconds = time.perf_counter() - start
  stats = engine.stats
  tokens = sum(r.output_tokens for r in results)
  digest = hashlib.sha256(json.dumps([r.token_ids for r in results]).encode()).hexdigest()[:16]
  return {
      "engine": kind, "model": model_name, "slots": slots, "units": len(work), "output_tokens": tokens,
      "prompt_tokens": sum(len(p) for p, _, _ in work),
      "shared_prompt_tokens": sum(s for _, s, _ in work),
      "prefill_tokens": int(stats["prefill_tokens"]),
      "prefix_tokens_reused": int(stats.get("prefix_tokens_reused", 0)),
      "most_sequences_at_once": int(stats.get("most_sequences_at_once", slots)),
      "preemptions": int(stats.get("preemptions", 0)),
      "generate_seconds": round(seconds, 2), "output_tokens_per_s": round(tokens / seconds, 1),
      "first_call_seconds": round(stats["first_call_seconds"], 2),
      "prefill_seconds": round(stats["prefill_seconds"], 2),
      "output_tokens_per_s_after_compile": round(
          tokens / (seconds - stats["first_call_seconds"]), 1),
      "kv_cache_bytes": int(engine.cache_bytes()[1]), "tokens_sha256": digest,
      "model_params": config.num_params(), "jax": jax.__version__,
      "source": os.path.dirname(sys.modules["mind_jax"].__file__),
  }


def baseline_tree(root: str) -> str:
  """The fixed-slot engine's source (mind_jax/ at BASELINE_COMMIT) in a temporary directory."""
  out = tempfile.mkdtemp(prefix="mind_jax_fixed_")
  archive = subprocess.run(["git", "-C", root, "archive", BASELINE_COMMIT, "mind_jax"],
                           check=True, capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", out], input=archive, check=True)
  return out


def run_worker(kind: str, tree: str, args) -> dict:
  env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  slots = args.paged_slots if kind == "paged" else args.slots
  start = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--worker", kind, "--slots", str(slots),
       "--chunks", str(args.chunks), "--fixed-slots", str(args.slots), "--model", args.model],
      env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  result["process_seconds"] = round(time.perf_counter() - start, 2)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--slots", type=int, default=8, help="the fixed engine's slots")
  parser.add_argument("--paged-slots", type=int, default=32)
  # 16 chunks (112 conversations) make a run long enough that its compilations are about the
  # share they are of a real job's first minutes, not most of the benchmark.
  parser.add_argument("--chunks", type=int, default=16)
  parser.add_argument("--model", choices=sorted(MODELS), default="generator")
  parser.add_argument("--runs", type=int, default=2)
  parser.add_argument("--check", action="store_true", help="one small document, one run")
  parser.add_argument("--worker", choices=["fixed", "paged"], help=argparse.SUPPRESS)
  parser.add_argument("--fixed-slots", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker, args.slots, args.chunks, args.fixed_slots, args.model)))
    return
  if args.check:
    args.chunks, args.runs = 2, 1
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  trees = {"fixed": baseline_tree(root), "paged": root}
  rows = []
  for run in range(args.runs):
    for kind in ("fixed", "paged"):  # alternately
      row = run_worker(kind, trees[kind], args)
      row["run"] = run + 1
      rows.append(row)
      print(json.dumps(row), flush=True)
  summary = []
  for run in range(1, args.runs + 1):
    fixed, paged = [r for r in rows if r["run"] == run]
    summary.append({
        "run": run, "tokens_per_s_ratio": round(paged["output_tokens_per_s"]
                                                / fixed["output_tokens_per_s"], 2),
        "tokens_per_s_after_compile_ratio": round(
            paged["output_tokens_per_s_after_compile"]
            / fixed["output_tokens_per_s_after_compile"], 2),
        "process_seconds_ratio": round(fixed["process_seconds"] / paged["process_seconds"], 2),
        "sequences_at_once": [fixed["most_sequences_at_once"], paged["most_sequences_at_once"]],
        "shared_tokens_not_prefilled": round(paged["prefix_tokens_reused"]
                                             / max(1, paged["shared_prompt_tokens"]), 4),
        "identical_tokens": fixed["tokens_sha256"] == paged["tokens_sha256"],
        "equal_kv_bytes": fixed["kv_cache_bytes"] == paged["kv_cache_bytes"]})
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"generate_paged_{args.model}.json"), "w") as f:
    json.dump({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "model": args.model,
               "chunks": args.chunks, "rows": rows,
               "summary": summary}, f, indent=1)
  for line in summary:
    print(json.dumps(line))


if __name__ == "__main__":
  main()
