"""Checkpoint import: wall time and peak host memory, mind_jax against transformers.

Builds a ~1 GB bf16 Llama checkpoint with transformers' save_pretrained (sharded
safetensors + index), then loads it repeatedly in fresh processes, alternating
the two loaders so both see the same page-cache state:

  mind_jax       mind_jax.load_pretrained(dir, dtype="bfloat16")
  transformers   AutoModelForCausalLM.from_pretrained(dir, dtype=torch.bfloat16)

Library imports (jax, torch, transformers) happen before the clock starts in
both children. Each child reports its load time, its peak RSS (ru_maxrss) and its RSS just
before loading (the interpreter plus imported libraries), so the growth due
to the load itself is peak - before.

  python benchmarks/import_checkpoint.py --out bench_out --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

# ~0.52B parameters -> ~1.04 GB in bf16; shaped like a small Llama 3 (GQA, untied head).
CONFIG = dict(vocab_size=32000, hidden_size=1536, intermediate_size=4096, num_hidden_layers=16,
              num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=4096,
              rope_parameters={"rope_type": "default", "rope_theta": 500000.0})


def rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


LOADERS = ("mind_jax", "transformers", "mind_jax+tokenizer", "transformers+tokenizer")


def child(loader: str, path: str) -> dict:
  with_tokenizer = loader.endswith("+tokenizer")
  if loader.startswith("mind_jax"):
    import jax
    import mind_jax
    from flax import nnx
    jax.numpy.zeros(1).block_until_ready()  # backend start-up is not part of the load
    if with_tokenizer:
      import transformers  # noqa: F401  library imports are outside the timing, as for transformers
    before = rss_bytes()
    start = time.perf_counter()
    if with_tokenizer:
      model, _ = mind_jax.load_pretrained(path, dtype="bfloat16", progress=False)
    else:
      config = mind_jax.nn.read_hf_config(path, dtype="bfloat16", param_dtype="bfloat16")
      model = mind_jax.ckpts.load_hf_model(path, config, progress=False)
    jax.block_until_ready(jax.tree.leaves(nnx.state(model)))
  else:
    import torch
    import transformers
    before = rss_bytes()
    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    if with_tokenizer:
      transformers.AutoTokenizer.from_pretrained(path)
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {"loader": loader, "seconds": seconds, "rss_before": before, "peak_rss": peak}


def make_checkpoint(path: str) -> int:
  if not os.path.exists(os.path.join(path, "config.json")):
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**CONFIG)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, max_shard_size="300MB")
    from mind_jax.testing import byte_tokenizer
    byte_tokenizer().save(path)
  return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
             if f.endswith(".safetensors"))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_out", help="working directory for the checkpoint")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--child", nargs=2, metavar=("LOADER", "PATH"), help=argparse.SUPPRESS)
  parser.add_argument("--make", metavar="PATH", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(*args.child)))
    return
  if args.make:
    make_checkpoint(args.make)
    return
  path = os.path.join(args.out, "llama-0.5b-bf16")
  os.makedirs(path, exist_ok=True)
  # Linux keeps a process's peak RSS across fork+exec, so the parent must stay
  # small: the checkpoint is built in a child of its own.
  subprocess.run([sys.executable, __file__, "--make", path], check=True)
  size = make_checkpoint(path)
  print(f"checkpoint: {path}, {size / 1e9:.3f} GB of safetensors")
  results = {loader: [] for loader in LOADERS}
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for _ in range(args.repeats):
    for loader in results:
      out = subprocess.run([sys.executable, __file__, "--child", loader, path], env=env,
                           capture_output=True, text=True, check=True)
      results[loader].append(json.loads(out.stdout.strip().splitlines()[-1]))
  summary = {"checkpoint_bytes": size, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
             "python": platform.python_version()}
  for loader, runs in results.items():
    summary[loader] = {
        "seconds_median": statistics.median(r["seconds"] for r in runs),
        "peak_rss_gb_median": statistics.median(r["peak_rss"] for r in runs) / 1e9,
        "load_growth_gb_median": statistics.median(r["peak_rss"] - r["rss_before"] for r in runs) / 1e9,
        "runs": runs,
    }
  for suffix in ("", "+tokenizer"):
    mj, tf = summary["mind_jax" + suffix], summary["transformers" + suffix]
    summary["speedup" + suffix] = tf["seconds_median"] / mj["seconds_median"]
  mj = summary["mind_jax"]
  summary["mind_jax_load_growth_over_checkpoint"] = mj["load_growth_gb_median"] * 1e9 / size
  summary["mind_jax_peak_over_checkpoint"] = mj["peak_rss_gb_median"] * 1e9 / size
  print(json.dumps({k: v for k, v in summary.items() if k not in LOADERS}, indent=2))
  for loader in LOADERS:
    s = summary[loader]
    print(f"{loader:23s} {s['seconds_median']:.2f} s, peak RSS {s['peak_rss_gb_median']:.2f} GB "
          f"(+{s['load_growth_gb_median']:.2f} GB during the load)")
  with open(os.path.join(args.out, "import_checkpoint.json"), "w") as f:
    json.dump(summary, f, indent=2)


if __name__ == "__main__":
  main()
