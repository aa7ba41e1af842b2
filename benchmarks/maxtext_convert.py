"""HF -> Orbax checkpoint conversion: wall time and peak host memory, mind_jax against MaxText.

Builds the ~1 GB bf16 Llama of benchmarks/import_checkpoint.py (its CONFIG and make_checkpoint:
transformers' save_pretrained, sharded safetensors + index), then converts it repeatedly, each
conversion a fresh process, alternating the two sides so both see the same page-cache state:

  mind_jax   `python -m mind_jax.convert SRC DST --dtype bfloat16 --scan-layers -q` (its main(),
             called in-process so library imports can be left out of the timing)
  maxtext    `python -m maxtext.checkpoint_conversion.to_maxtext <maxtext>/configs/base.yml
             model_name=llama3.1-8b hf_model_path=SRC base_output_directory=DST
             scan_layers=true save_dtype=bfloat16 hardware=cpu skip_jax_distributed_system=true
             override_model_config=true base_emb_dim=... (the sizes) tokenizer_path=<local>`
             in MaxText's venv (benchmarks/maxtext_venv.sh), with DECOUPLE_GCLOUD=TRUE and its
             other defaults (lazy tensor loading, 16 simulated CPU devices). Its __main__ runs
             unchanged (runpy) after one in-process change: the converter takes the model's
             sizes from a fixed table of HF configs keyed by model_name (llama3.1-8b is its only
             Llama 3 entry under 70B), so the wrapper puts this checkpoint's config.json in
             llama3.1-8b's place; MaxText's model sizes come from the command line.

Each child reports the conversion's wall time (after library imports), its peak RSS (ru_maxrss)
and its RSS before converting (interpreter plus imports); the parent also times the whole
process, imports included. After each side's first conversion the output is checked outside the
timing: its bytes on disk, and its parameter count against the checkpoint's (ours: loaded back
with mind_jax.load_pretrained and the embedding compared with the source; MaxText's: read from
the Orbax metadata of DST/0/items in its venv).

Differences the script cannot remove (also in the JSON, "differences"):
  - What is written: MaxText a TrainState (step + params) through its CheckpointManager at
    DST/0/items, sharded over 16 simulated CPU devices (its default), OCDBT + zarr3 (its
    config); ours params/ through Orbax's StandardCheckpointer from one device, plus
    config.json, mind_jax.json and the tokenizer files.
  - Weight transforms: MaxText permutes q/k into its RoPE layout and folds 1/sqrt(head_dim)
    into the query kernel; ours keeps HF's values (transposed into kernels, stacked for scan).
  - Reading: MaxText's lazy loader opens a shard per tensor with safetensors' numpy framework
    (its venv has no torch); ours streams tensors through its own safetensors reader.
  - Software: each side on its own venv's JAX/Orbax (versions in the JSON).
  - The model name: the sizes are this checkpoint's, the rest of MaxText's config is
    llama3.1-8b's (e.g. its RoPE scaling), which does not change the weights it writes.
Both sides write bf16 (the source dtype) with scanned layers (MaxText's default; ours
--scan-layers).

  python benchmarks/maxtext_convert.py --out bench_out --repeats 2
  python benchmarks/maxtext_convert.py --small --repeats 1       # ~30M parameters, a quick check
  MAXTEXT_PYTHON=/tmp/mt-venv/bin/python python benchmarks/maxtext_convert.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

import import_checkpoint  # the script's folder is on sys.path
from import_checkpoint import CONFIG, rss_bytes

MAXTEXT_PYTHON = os.environ.get("MAXTEXT_PYTHON", "/work/venvs/maxtext/bin/python")
# The only Llama 3 entry of the converter's tables under 70B; the sizes are overridden.
MODEL_NAME = "llama3.1-8b"
# ~31M parameters, for --small; the same shape otherwise (head_dim 64 rather than 128).
SMALL = dict(CONFIG, hidden_size=384, intermediate_size=1024, num_hidden_layers=4,
             num_attention_heads=6, num_key_value_heads=2)
SIDES = ("mind_jax", "maxtext")
RESULT = "RESULT "  # prefix of the one stdout line a child reports on (logs go around it)

DIFFERENCES = [
    "output: MaxText writes a TrainState (step + params) via its CheckpointManager to "
    "DST/0/items, sharded over 16 simulated CPU devices (its default), OCDBT + zarr3; ours "
    "writes params/ via Orbax StandardCheckpointer from one device, plus config.json, "
    "mind_jax.json and tokenizer files",
    "transforms: MaxText permutes q/k to its RoPE layout and folds 1/sqrt(head_dim) into the "
    "query kernel; ours keeps HF's values (transposed to kernels, stacked for scan)",
    "reading: MaxText's lazy loader (its default) opens a shard per tensor with safetensors' "
    "numpy framework (no torch in its venv); ours streams tensors with its own reader",
    "software: each side on its own venv's JAX/Orbax (see versions)",
    "model name: MaxText runs as llama3.1-8b with this checkpoint's sizes (override_model_config"
    " and its HF config table entry replaced in-process); the rest of its config is "
    "llama3.1-8b's, which does not change the weights written",
]


# --- children --------------------------------------------------------------------------------
def versions(*names: str) -> dict:
  import importlib.metadata as md
  return {n: md.version(n) for n in names}


def maxtext_argv(src: str, dst: str) -> list[str]:
  """MaxText's command line after `-m maxtext.checkpoint_conversion.to_maxtext` (sizes from
  SRC's config.json)."""
  import maxtext
  with open(os.path.join(src, "config.json")) as f:
    hf = json.load(f)
  root = os.path.dirname(maxtext.__file__)
  keys = dict(
      model_name=MODEL_NAME, hf_model_path=os.path.abspath(src),
      base_output_directory=os.path.abspath(dst), run_name="convert", scan_layers="true",
      save_dtype="bfloat16", hardware="cpu", skip_jax_distributed_system="true",
      override_model_config="true", base_emb_dim=hf["hidden_size"],
      base_num_query_heads=hf["num_attention_heads"], base_num_kv_heads=hf["num_key_value_heads"],
      base_mlp_dim=hf["intermediate_size"], base_num_decoder_layers=hf["num_hidden_layers"],
      head_dim=hf["hidden_size"] // hf["num_attention_heads"], vocab_size=hf["vocab_size"],
      normalization_layer_epsilon=hf["rms_norm_eps"],
      logits_via_embedding=str(hf["tie_word_embeddings"]).lower(),
      # a local file, so nothing asks the Hub for llama3.1-8b's tokenizer (none is converted)
      tokenizer_path=os.path.join(root, "assets", "tokenizers", "tokenizer.llama2"))
  return [os.path.join(root, "configs", "base.yml")] + [f"{k}={v}" for k, v in keys.items()]


def convert_child(side: str, src: str, dst: str) -> dict:
  if side == "mind_jax":
    import jax  # noqa: F401  library imports are outside the timing, on both sides
    import orbax.checkpoint  # noqa: F401
    from mind_jax import convert
    argv = [src, dst, "--dtype", "bfloat16", "--scan-layers", "-q"]
    before = rss_bytes()
    start = time.perf_counter()
    rc = convert.main(argv)
    command = "python -m mind_jax.convert " + " ".join(argv)
    libs = versions("jax", "flax", "orbax-checkpoint")
  else:
    import runpy
    import transformers
    # what to_maxtext imports, untimed (not the module itself: runpy runs that as __main__)
    import orbax.checkpoint  # noqa: F401
    from maxtext.checkpoint_conversion.utils import hf_model_configs, param_mapping, utils  # noqa
    from maxtext.configs import pyconfig  # noqa: F401
    from maxtext.models import models  # noqa: F401
    # The converter's parameter mapping reads the layer count and head_dim from this table,
    # not from hf_model_path: give it the checkpoint's own config.
    hf_model_configs.HF_MODEL_CONFIGS[MODEL_NAME] = transformers.LlamaConfig.from_pretrained(src)
    argv = maxtext_argv(src, dst)
    sys.argv = ["to_maxtext"] + argv
    before = rss_bytes()
    start = time.perf_counter()
    # its __main__ block (flag parsing, XLA device count, main) exactly as `python -m` runs it
    runpy.run_module("maxtext.checkpoint_conversion.to_maxtext", run_name="__main__")
    rc = 0
    command = "python -m maxtext.checkpoint_conversion.to_maxtext " + " ".join(argv)
    libs = versions("maxtext", "jax", "flax", "orbax-checkpoint")
  seconds = time.perf_counter() - start
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {"side": side, "rc": rc, "seconds": seconds, "rss_before": before, "peak_rss": peak,
          "command": command, "versions": libs}


def check_child(side: str, src: str, dst: str) -> dict:
  """Reads the output back: parameter count, dtypes (and, for ours, one tensor's values)."""
  if side == "mind_jax":
    import jax
    import numpy as np
    import mind_jax
    from flax import nnx
    from safetensors import safe_open
    model, _ = mind_jax.load_pretrained(dst, dtype="bfloat16", progress=False)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    key = "model.embed_tokens.weight"
    index = os.path.join(src, "model.safetensors.index.json")
    shard = "model.safetensors"  # unsharded (--small) unless the index says otherwise
    if os.path.exists(index):
      with open(index) as f:
        shard = json.load(f)["weight_map"][key]
    with safe_open(os.path.join(src, shard), framework="np") as f:
      want = f.get_tensor(key)
    same = bool(np.array_equal(np.asarray(model.model.embed_tokens.weight[...]), want))
    return {"params": int(sum(x.size for x in leaves)),
            "dtypes": sorted({str(x.dtype) for x in leaves}), "embedding_equal": same}
  import numpy as np
  import orbax.checkpoint as ocp
  meta = ocp.PyTreeCheckpointer().metadata(os.path.join(os.path.abspath(dst), "0", "items"))
  tree = getattr(meta, "item_metadata", None) or meta
  tree = getattr(tree, "tree", tree)
  leaves = [m for path, m in _flatten(tree["params"]) if hasattr(m, "shape")]
  return {"params": int(sum(np.prod(m.shape) for m in leaves)),
          "dtypes": sorted({str(m.dtype) for m in leaves})}


def _flatten(tree, path=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, path + (k,))
  else:
    yield path, tree


# --- parent ----------------------------------------------------------------------------------
def checkpoint_params(path: str) -> int:
  """Parameters in the source safetensors, from their headers."""
  total = 0
  for name in os.listdir(path):
    if name.endswith(".safetensors"):
      with open(os.path.join(path, name), "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
      for key, t in header.items():
        if key != "__metadata__":
          n = 1
          for d in t["shape"]:
            n *= d
          total += n
  return total


def dir_bytes(path: str) -> tuple[int, int]:
  files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
  return len(files), sum(os.path.getsize(f) for f in files)


def python_for(side: str) -> str:
  return sys.executable if side == "mind_jax" else MAXTEXT_PYTHON


def child_env(side: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if side == "maxtext":
    # no Google Cloud clients (storage, logging) in a local conversion
    env["DECOUPLE_GCLOUD"] = "TRUE"
    env.pop("PYTHONPATH", None)  # our checkout is not MaxText's to import
  return env


def run_child(mode: str, side: str, src: str, dst: str, log_path: str) -> dict:
  """One fresh process; its result line, or what went wrong (exit status, the log's tail)."""
  start = time.perf_counter()
  proc = subprocess.run([python_for(side), __file__, mode, side, src, dst], env=child_env(side),
                        capture_output=True, text=True)
  wall = time.perf_counter() - start
  with open(log_path, "w") as f:
    f.write(proc.stdout + proc.stderr)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT)]
  if proc.returncode or not lines:
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    return {"side": side, "error": f"exit status {proc.returncode}", "log": log_path,
            "log_tail": tail, "process_seconds": wall}
  return dict(json.loads(lines[-1][len(RESULT):]), process_seconds=wall)


def convert_once(side: str, src: str, dst: str, log_path: str) -> dict:
  shutil.rmtree(dst, ignore_errors=True)
  result = run_child("--convert", side, src, dst, log_path)
  if "error" not in result:
    result["files"], result["bytes_written"] = dir_bytes(dst)
  return result


def summarize(runs: list[dict]) -> dict:
  ok = [r for r in runs if "error" not in r]
  if not ok:
    return {"error": runs[0]["error"], "log_tail": runs[0]["log_tail"], "runs": runs}
  med = lambda key: statistics.median(r[key] for r in ok)  # noqa: E731
  return {"seconds_median": med("seconds"), "process_seconds_median": med("process_seconds"),
          "peak_rss_gb_median": med("peak_rss") / 1e9,
          "growth_gb_median": statistics.median(r["peak_rss"] - r["rss_before"] for r in ok) / 1e9,
          "bytes_written": ok[-1]["bytes_written"], "files": ok[-1]["files"],
          "command": ok[-1]["command"], "versions": ok[-1]["versions"],
          "failed_runs": len(runs) - len(ok), "runs": runs}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_out", help="working directory (checkpoints, JSON)")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--small", action="store_true", help="~30M parameters, for a quick check")
  for mode in ("--convert", "--check"):
    parser.add_argument(mode, nargs=3, metavar=("SIDE", "SRC", "DST"), help=argparse.SUPPRESS)
  parser.add_argument("--make", nargs=2, metavar=("PATH", "SIZE"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.convert or args.check:
    result = convert_child(*args.convert) if args.convert else check_child(*args.check)
    print(RESULT + json.dumps(result), flush=True)
    return
  if args.make:
    path, size = args.make
    if size == "small":
      import_checkpoint.CONFIG = SMALL  # make_checkpoint builds from this module global
    import_checkpoint.make_checkpoint(path)
    return

  name = "llama-30m-bf16" if args.small else "llama-0.5b-bf16"
  src = os.path.join(args.out, name)
  work = os.path.join(args.out, "maxtext_convert")
  os.makedirs(src, exist_ok=True)
  os.makedirs(work, exist_ok=True)
  # Linux keeps a process's peak RSS across fork+exec, so the parent stays small: the
  # checkpoint is built in a child of its own.
  subprocess.run([sys.executable, __file__, "--make", src, "small" if args.small else "full"],
                 check=True)
  src_bytes = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src)
                  if f.endswith(".safetensors"))
  src_params = checkpoint_params(src)
  print(f"checkpoint: {src}, {src_params / 1e6:.1f}M parameters, {src_bytes / 1e9:.3f} GB of "
        f"safetensors", flush=True)
  for f in os.listdir(src):  # both sides then start from a warm page cache
    with open(os.path.join(src, f), "rb") as fh:
      while fh.read(1 << 24):
        pass

  runs = {side: [] for side in SIDES}
  checks = {}
  for i in range(args.repeats):
    for side in SIDES if i % 2 == 0 else SIDES[::-1]:
      dst = os.path.join(work, side)
      result = convert_once(side, src, dst, os.path.join(work, f"{side}-{i}.log"))
      runs[side].append(result)
      if "error" in result:
        print(f"{side} run {i}: FAILED ({result['error']}), log {result['log']}:\n  "
              + "\n  ".join(result["log_tail"]), flush=True)
        continue
      print(f"{side} run {i}: {result['seconds']:.2f} s converting "
            f"({result['process_seconds']:.2f} s process), peak RSS "
            f"{result['peak_rss'] / 1e9:.2f} GB, {result['bytes_written'] / 1e9:.3f} GB written",
            flush=True)
      if side not in checks:
        checks[side] = run_child("--check", side, src, dst,
                                 os.path.join(work, f"{side}-check.log"))
        checks[side]["params_match"] = checks[side].get("params") == src_params
        print(f"{side} check: {json.dumps(checks[side])}", flush=True)

  summary = {"checkpoint": src, "checkpoint_bytes": src_bytes, "checkpoint_params": src_params,
             "small": args.small, "repeats": args.repeats,
             "machine": f"{platform.machine()}, {os.cpu_count()} cores",
             "differences": DIFFERENCES, "checks": checks}
  for side in SIDES:
    summary[side] = summarize(runs[side])
  mj, mt = summary["mind_jax"], summary["maxtext"]
  if "error" not in mj and "error" not in mt:
    summary["maxtext_over_mind_jax_seconds"] = mt["seconds_median"] / mj["seconds_median"]
    summary["maxtext_over_mind_jax_peak_rss"] = mt["peak_rss_gb_median"] / mj["peak_rss_gb_median"]
  out = os.path.join(args.out, "maxtext_convert" + ("_small" if args.small else "") + ".json")
  with open(out, "w") as f:
    json.dump(summary, f, indent=2)
  print(f"\n{'side':9s} {'convert s':>9s} {'process s':>9s} {'peak GB':>8s} {'growth GB':>9s} "
        f"{'written GB':>10s}  check")
  for side in SIDES:
    s, c = summary[side], checks.get(side, {})
    if "error" in s:
      print(f"{side:9s} FAILED: {s['error']}: {s['log_tail'][-1] if s['log_tail'] else ''}")
      continue
    verdict = "params match" if c.get("params_match") else f"check failed: {c}"
    print(f"{side:9s} {s['seconds_median']:9.2f} {s['process_seconds_median']:9.2f} "
          f"{s['peak_rss_gb_median']:8.2f} {s['growth_gb_median']:9.2f} "
          f"{s['bytes_written'] / 1e9:10.3f}  {verdict}")
  print(f"JSON: {out}")


if __name__ == "__main__":
  main()
