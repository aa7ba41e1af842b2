"""`python -m mind_jax.sample` with its default flags, whole process, against a transformers script.

What a user waits for from the command line to the last token: start-up, checkpoint load,
compilation and decoding. Workload (issue 11's): a ~56M-parameter Llama (random fp32 weights,
the model of generate_cpu.py), 64 prompts of 64-256 token ids, 256 new tokens each, greedy,
EOS ignored.

  mind_jax cold   python -m mind_jax.sample --model DIR --prompt-ids ... --max-new-tokens 256
                  --temperature 0 --ignore-eos --json --dtype float32, with an empty compilation
                  cache: everything else is the default (slots, context limit, steps per call)
  mind_jax warm   the same command again: its programs come from JAX's persistent cache
  transformers    a script that loads the same directory with LlamaForCausalLM and calls
                  generate(do_sample=False) on the whole batch, left-padded, KV cache on

The mind_jax runs also report the seconds their programs' first calls took (compilation on the
cold run, loads from the cache on the warm one), as the engine logs them. Greedy outputs are
compared token for token.

  python benchmarks/sample_cli.py --out bench_out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from generate_cpu import CONFIG  # the same model (the script's folder is on sys.path)

# The same left-padded batch generate as generate_cpu.py, timed here as a whole process.
TRANSFORMERS_SCRIPT = """
import json, sys, torch, transformers
sys.path.insert(0, sys.argv[4])
from generate_cpu import run_transformers
model_dir, prompts_file, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
prompts = json.load(open(prompts_file))
model = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
outputs, _ = run_transformers(model, prompts, [new_tokens] * len(prompts))
print(json.dumps(outputs))
"""


def workload(n, seed=0):
  rs = np.random.RandomState(seed)
  return [rs.randint(0, CONFIG["vocab_size"], rs.randint(64, 257)).tolist() for _ in range(n)]


def timed(command, env):
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True, env=env)
  seconds = time.perf_counter() - start
  if done.returncode != 0:
    raise SystemExit(f"{command[:4]} failed:\n{done.stderr[-3000:]}")
  return done, seconds


def run_sample(model_dir, prompts, new_tokens, cache, env):
  command = [sys.executable, "-m", "mind_jax.sample", "--model", model_dir,
             "--max-new-tokens", str(new_tokens), "--temperature", "0", "--ignore-eos",
             "--json", "--dtype", "float32", f"runtime.compile_cache={cache}"]
  for p in prompts:
    command += ["--prompt-ids", ",".join(map(str, p))]
  done, seconds = timed(command, env)
  outputs = [json.loads(line)["token_ids"] for line in done.stdout.splitlines()]
  engine = re.search(r"engine: (\d+) slots, max_len (\d+), (\d+) steps per call, prefill "
                     r"buckets (.*)$", done.stderr, re.M)
  # Each program's first call, as the engine logs it: compilation, or a load from the cache.
  first_calls = sum(float(m) for m in re.findall(r"ready in ([\d.]+) s", done.stderr))
  return outputs, seconds, first_calls, engine.groups() if engine else None


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--prompts", type=int, default=64)
  parser.add_argument("--new-tokens", type=int, default=256)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  import torch
  import transformers
  torch.manual_seed(0)
  model_dir = tempfile.mkdtemp(prefix="sample_bench_")
  transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).save_pretrained(model_dir)
  prompts = workload(args.prompts)
  prompts_file = os.path.join(model_dir, "prompts.json")
  with open(prompts_file, "w") as f:
    json.dump(prompts, f)
  cache = tempfile.mkdtemp(prefix="sample_bench_cache_")  # empty: the first run compiles
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(HF_HUB_OFFLINE="1",
             PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  summary = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
             "prompts": len(prompts), "prompt_tokens": sum(map(len, prompts)),
             "new_tokens": args.new_tokens}
  results = {}
  for name in ("cold", "warm"):
    outputs, seconds, compile_seconds, engine = run_sample(model_dir, prompts, args.new_tokens,
                                                           cache, env)
    results[name] = outputs
    summary[f"mind_jax_{name}_seconds"] = seconds
    summary[f"mind_jax_{name}_first_call_seconds"] = compile_seconds
    summary["engine"] = engine
    print(f"mind_jax {name:5s} {seconds:7.1f} s whole process ({compile_seconds:.1f} s in first "
          f"calls: compilation or cache loads); engine slots, max_len, steps, prefill buckets: {engine}")
  done, t_hf = timed([sys.executable, "-c", TRANSFORMERS_SCRIPT, model_dir, prompts_file,
                      str(args.new_tokens), os.path.dirname(os.path.abspath(__file__))], env)
  hf_outputs = json.loads(done.stdout.splitlines()[-1])
  agree = float(np.mean([a == b for a, b in zip(hf_outputs, results["cold"])]))
  summary.update(transformers_seconds=t_hf, speedup_cold=t_hf / summary["mind_jax_cold_seconds"],
                 speedup_warm=t_hf / summary["mind_jax_warm_seconds"],
                 identical_outputs_share=agree, torch=torch.__version__,
                 transformers=transformers.__version__)
  print(f"transformers   {t_hf:7.1f} s whole process")
  print(f"speedup: {summary['speedup_cold']:.2f}x cold, {summary['speedup_warm']:.2f}x warm; "
        f"identical greedy outputs: {agree:.0%}")
  with open(os.path.join(args.out, "sample_cli.json"), "w") as f:
    json.dump(summary, f, indent=2)


if __name__ == "__main__":
  main()
