"""bf16 weights against int8 weights (model.quantize=int8), whole processes, alternately, in one
run: output tokens/s of the generate phase, the model's resident parameter bytes, and each
process's peak resident memory.

Workload: the MIND workload of benchmarks/generate_paged.py (CHAMP documents cut into ~500-token
chunks, all seven styles, 256-512 greedy tokens each, EOS ignored), `--chunks` of them, on its
`--model` (default: the 60M generator), bf16 compute in both; the paged engine's defaults.
Decoding reads every weight once per step, so on an accelerator int8 halves a step's weight
bytes; a CPU whose steps are compute-bound may gain nothing: what it is here is what is
reported.

  python benchmarks/generate_int8.py --out bench_out
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_paged  # noqa: E402  the workload and the models


def worker(quantize: str | None, chunks: int, model_name: str) -> dict:
  import jax
  from flax import nnx

  from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams
  from mind_jax.nn import Llama, LlamaConfig
  work, tok = generate_paged.units(chunks)
  config = LlamaConfig(vocab_size=tok.vocab_size, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, dtype="bfloat16", param_dtype="bfloat16",
                       quantize=quantize, **generate_paged.MODELS[model_name])
  model = Llama(config, rngs=nnx.Rngs(0))
  params = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  engine = Engine(model, None, EngineConfig(slots=32, max_len=generate_paged.CONTEXT,
                                            steps_per_call=16))
  requests = [Request(i, prompt, SamplingParams(max_new_tokens=new, temperature=0.0,
                                                ignore_eos=True), prefix_len=shared)
              for i, (prompt, shared, new) in enumerate(work)]
  start = time.perf_counter()
  results = engine.generate_all(requests)
  seconds = time.perf_counter() - start
  tokens = sum(r.output_tokens for r in results)
  stats = engine.stats
  return {
      "weights": quantize or "bfloat16", "model": model_name, "units": len(work),
      "output_tokens": tokens, "generate_seconds": round(seconds, 2),
      "output_tokens_per_s": round(tokens / seconds, 1),
      "output_tokens_per_s_after_compile": round(
          tokens / (seconds - stats["first_call_seconds"]), 1),
      "param_bytes": int(params), "kv_cache_bytes": int(engine.cache_bytes()[1]),
      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "tokens_sha256": hashlib.sha256(
          json.dumps([r.token_ids for r in results]).encode()).hexdigest()[:16],
      "jax": jax.__version__,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--chunks", type=int, default=4)
  parser.add_argument("--model", choices=sorted(generate_paged.MODELS), default="generator")
  parser.add_argument("--runs", type=int, default=2)
  parser.add_argument("--worker", choices=["bfloat16", "int8"], help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    quantize = None if args.worker == "bfloat16" else args.worker
    print(json.dumps(worker(quantize, args.chunks, args.model)))
    return
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  rows = []
  for run in range(args.runs):
    for kind in ("bfloat16", "int8"):  # alternately
      start = time.perf_counter()
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind,
                             "--chunks", str(args.chunks), "--model", args.model],
                            env=env, capture_output=True, text=True)
      if proc.returncode:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
      row = json.loads(proc.stdout.strip().splitlines()[-1])
      row.update(run=run + 1, process_seconds=round(time.perf_counter() - start, 2))
      rows.append(row)
      print(json.dumps(row), flush=True)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"generate_int8_{args.model}.json"), "w") as f:
    json.dump({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "chunks": args.chunks,
               "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
