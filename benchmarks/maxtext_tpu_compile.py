"""TPU train step compiled ahead of time: mind_jax against MaxText, no TPU needed.

Each stack builds its own continued-pretraining train step for a TPU slice described by
`jax.experimental.topologies` and has libtpu compile it on this CPU machine; nothing runs.
Every compile is its own process, one at a time:

  mind_jax      our train step as `python -m mind_jax.plan` compiles it (mind_jax.plan's
                load_job and mind_jax.planning's _train_step: the same Trainer, shardings and
                splash attention), in this repository's venv. The worker prints the compiler's
                whole memory_analysis (which the plan's JSON folds into weights / optimizer /
                temporaries) and the raw cost_analysis of the step, i.e. what
                `python -m mind_jax.plan ... --no-exact-cost --no-cache` reports.
  mind_jax@mt   the same worker run by MaxText's venv python (its jax and libtpu): separates
                the stack from the compiler's version.
  maxtext       `python -m maxtext.trainers.pre_train.train_compile <base.yml>` in its venv.

Cases (--cases; names are topology-seq): v5p-128-4096, v6e-256-4096, v5p-128-8192,
v6e-256-8192 (Llama-3.1-8B, configs/train-llama3.1-8b.yaml and tpu/configs/train-v6e-256.yaml),
v5e-256-4096 (Llama-2-7B, tpu/configs/train-v5e-256.yaml). Settings matched per case:
  - per-chip microbatch: ours batch_size / microbatches / chips sequences at a time; MaxText's
    per_device_batch_size is that microbatch (its micro_batch_size_to_train_on = chips x
    per_device_batch_size) and gradient_accumulation_steps = our microbatches (its global batch
    = micro x steps, scanned one microbatch at a time, as ours). At 8192 tokens the global
    batch is halved to 768 sequences (the same 6.3M tokens per step) with 6 microbatches on
    v5p-128 (2 sequences per chip) and 3 on v6e-256 (1 per chip).
  - remat: our dots_no_batch (jax's dots_with_no_batch_dims_saveable: every matmul without
    batch dimensions, i.e. the q, k, v, o, gate, up and down projections; splash attention is
    a custom call, not a dot, so not saved) against MaxText's `minimal` (save_only_these_names
    of query/key/value/out projections and mlpwi_0/mlpwi_1/mlpwo: the same seven tensors).
    MaxText's `full` saves none of them, `minimal_with_context` adds the attention output.
  - scan_layers true; attention: our splash kernel (model.attention auto on a TPU mesh) against
    MaxText attention=flash (its splash kernel; `autoselected` picks it too on TPU).
  - fsdp over every chip (ours mesh.axes {data: 1, fsdp: -1, tensor: 1}; MaxText
    ici_fsdp_parallelism=-1, one slice); fp32 weights and AdamW state, bf16 compute (MaxText
    weight_dtype=float32 dtype=bfloat16); AdamW b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1
    (norms excluded on both: adamw_mask=[norm]), clipping at 1.0.

Environment: DECOUPLE_GCLOUD=TRUE, JAX_PLATFORMS=cpu, ALLOW_MULTIPLE_LIBTPU_LOAD=1, and
XLA_FLAGS=--xla_cpu_enable_fast_math=false (XLA's default) unless set, so that MaxText does not
set its own (an HLO dump to /tmp/xla_dump). Compile seconds: for both stacks lowering plus
compiling the train step (MaxText: wall time between its "Jitting and compiling train step..."
and "Jitting and compilation complete!" lines, stamped as they arrive; ours: timed in the worker).

  python benchmarks/maxtext_tpu_compile.py --cases v5p-128-4096 --stacks maxtext,mind_jax
  python benchmarks/maxtext_tpu_compile.py --cases v6e-256-4096,v5p-128-8192
Results are merged into --out (default docs/results/maxtext_tpu_compile.json) per case and stack.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VENV = "/work/venvs/maxtext"
NEUTRAL_XLA_FLAGS = "--xla_cpu_enable_fast_math=false"

# name: (our config, topology, our preset, MaxText model_name, seq_len, batch, microbatches)
CASES = {
    "v5p-128-4096": ("configs/train-llama3.1-8b.yaml", "v5p-128", "llama3.1-8b", "llama3.1-8b",
                     4096, 1536, 8),
    "v6e-256-4096": ("tpu/configs/train-v6e-256.yaml", "v6e-256", "llama3.1-8b", "llama3.1-8b",
                     4096, 1536, 6),
    "v5p-128-8192": ("configs/train-llama3.1-8b.yaml", "v5p-128", "llama3.1-8b", "llama3.1-8b",
                     8192, 768, 6),
    "v6e-256-8192": ("tpu/configs/train-v6e-256.yaml", "v6e-256", "llama3.1-8b", "llama3.1-8b",
                     8192, 768, 3),
    "v5e-256-4096": ("tpu/configs/train-v5e-256.yaml", "v5e-256", "llama2-7b", "llama2-7b",
                     4096, 1536, 6),
}
CHIPS = {"v5p-128": 64, "v6e-256": 256, "v5e-256": 256}
STACKS = ("mind_jax", "mind_jax@mt", "maxtext")
MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                 "temp_size_in_bytes", "generated_code_size_in_bytes")

DIFFERENCES = [
    "Remat: our dots_no_batch saves every dot without batch dimensions; MaxText's minimal saves "
    "seven named tensors. Both come to q, k, v, attention-out projection, MLP gate, up and down "
    "per layer; MaxText names q and k after RoPE, ours the projection outputs before it (same "
    "shapes).",
    "Loss and batch: MaxText's shaped batch has inputs, targets, positions and segment ids "
    "(and their masks); ours has the tokens, positions, segment ids and loss weights of "
    "mind_jax.data.MODEL_INPUTS. MaxText's loss builds a one-hot cross-entropy with fp32 "
    "logits (cast_logits_to_fp32) of the whole microbatch; ours goes through the output head "
    "512 positions at a time (loss_chunk) with the gradient computed alongside, gathering the "
    "target logit.",
    "Step extras: MaxText also computes the raw and clipped gradient norms and the parameter "
    "norm; ours the gradient norm.",
    "Weight layout: MaxText stacks scanned weights on axis 1 (param_scan_axis), ours on axis 0; "
    "each stack's own logical-to-mesh rules (MaxText's base.yml logical_axis_rules; ours "
    "mesh.rules train).",
    "Compiler flags: MaxText's train_compile appends --xla_tpu_spmd_rng_bit_generator_unsafe=true "
    "to LIBTPU_INIT_ARGS and uses the unsafe_rbg PRNG (no dropout here, so no random numbers "
    "in the step); ours passes no flags.",
    "Versions: the mind_jax row compiles with our venv's jax/libtpu, mind_jax@mt and maxtext "
    "with MaxText's (recorded per row).",
    "Cost analysis: both are the compiler's raw count for the one program, which counts a "
    "loop's body once (the microbatch scan and the layer scan): per chip, about one layer of "
    "one microbatch plus what lies outside the loops (embedding, head, optimizer). Splash "
    "attention is a custom call the count leaves out on both sides.",
]


# --- our worker ---------------------------------------------------------------------------------
def worker(config: str, topology: str, preset: str, overrides: list[str]) -> None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from importlib import metadata
  import jax
  from mind_jax.plan import load_job
  from mind_jax.planning import compile_cache, devices, parse_topology
  from mind_jax.planning import _compile
  tpu_slice = parse_topology(topology)
  cfg, arch = load_job(config, overrides, "train", preset, devices(tpu_slice))
  mesh = cfg.mesh.build(devices(tpu_slice))
  start = time.perf_counter()
  with compile_cache(""):
    try:
      program, named = _compile._train_step(cfg, arch, mesh)
    except _compile.DoesNotFit as e:
      print("RESULT " + json.dumps({"does_not_fit": str(e), "used": e.used,
                                    "capacity": e.capacity}), flush=True)
      return
  end = time.perf_counter()
  versions = {"jax": jax.__version__, "jaxlib": metadata.version("jaxlib"),
              "libtpu": metadata.version("libtpu"), "flax": metadata.version("flax")}
  print("RESULT " + json.dumps({
      "memory": {"argument_size_in_bytes": program.argument_bytes,
                 "output_size_in_bytes": program.output_bytes,
                 "alias_size_in_bytes": program.alias_bytes,
                 "temp_size_in_bytes": program.temp_bytes,
                 "generated_code_size_in_bytes": program.code_bytes},
      "flops": program.flops, "bytes_accessed": program.bytes_accessed,
      "compile_seconds": program.compile_seconds,
      # the trainer's abstract state, lowering and compiling (MaxText's window: jit, lower,
      # compile)
      "lower_and_compile_seconds": end - start,
      "named_bytes_per_chip": named, "attention": arch.attention,
      "remat": cfg.model.remat, "versions": versions}), flush=True)


# --- launching ----------------------------------------------------------------------------------
def child_env() -> dict:
  env = dict(os.environ)
  env.update(DECOUPLE_GCLOUD="TRUE", JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
             TF_CPP_MIN_LOG_LEVEL="1", PYTHONUNBUFFERED="1",
             PYTHONPATH=REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""))
  env.setdefault("XLA_FLAGS", NEUTRAL_XLA_FLAGS)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


def overrides(case: str) -> list[str]:
  _, _, _, _, seq, batch, micro = CASES[case]
  return [f"data.seq_len={seq}", f"batch_size={batch}", f"microbatches={micro}"]


def ours_command(python: str, case: str) -> list[str]:
  config, topology, preset, *_ = CASES[case]
  return [python, os.path.abspath(__file__), "--worker", "--config", config, "--topology",
          topology, "--preset", preset, *overrides(case)]


def plan_equivalent(case: str) -> str:
  config, topology, preset, *_ = CASES[case]
  return (f"python -m mind_jax.plan --config {config} --topology {topology} --preset {preset} "
          f"--json --no-cache --no-exact-cost {' '.join(overrides(case))}")


def maxtext_settings(case: str) -> dict:
  _, topology, _, model, seq, batch, micro = CASES[case]
  per_chip = batch // micro // CHIPS[topology]
  return dict(
      run_name="compile", base_output_directory="/tmp/maxtext_tpu_compile",
      compile_topology=topology, compile_topology_num_slices=1, model_name=model,
      per_device_batch_size=per_chip, gradient_accumulation_steps=micro,
      max_target_length=seq, remat_policy="minimal", scan_layers=True, attention="flash",
      dtype="bfloat16", weight_dtype="float32", ici_fsdp_parallelism=-1,
      dataset_type="synthetic", enable_checkpointing=False, skip_jax_distributed_system=True,
      log_config=False, jax_cache_dir="", opt_type="adamw", adam_b1=0.9, adam_b2=0.95,
      adam_eps=1e-8, adam_weight_decay=0.1, gradient_clipping_threshold=1.0)


def maxtext_command(venv: str, case: str) -> list[str]:
  base = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                         "import maxtext, os; print(os.path.dirname(maxtext.__file__))"],
                        capture_output=True, text=True, check=True).stdout.strip()

  def value(v):
    return str(v).lower() if isinstance(v, bool) else str(v)
  return ([os.path.join(venv, "bin", "python"), "-m", "maxtext.trainers.pre_train.train_compile",
           os.path.join(base, "configs", "base.yml")]
          + [f"{k}={value(v)}" for k, v in maxtext_settings(case).items()]
          + ["adamw_mask=[norm]"])


def launch(cmd: list[str], log_path: str, timeout: float) -> tuple[int, float, dict, str]:
  """Runs `cmd`, its output to `log_path`; (rc, wall seconds, {marker: seconds since spawn}
  for MaxText's compile markers, the output)."""
  marks = {}
  start = time.perf_counter()
  with open(log_path, "w") as log:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
                            env=child_env(), text=True, bufsize=1)
    for line in proc.stdout:
      now = time.perf_counter() - start
      log.write(line)
      log.flush()
      if "Jitting and compiling train step" in line:
        marks["compile_start"] = now
      elif "Jitting and compilation complete" in line:
        marks["compile_end"] = now
      if now > timeout:
        proc.kill()
        break
    rc = proc.wait()
  with open(log_path) as f:
    return rc, time.perf_counter() - start, marks, f.read()


def parse_maxtext(text: str, marks: dict) -> dict:
  out: dict = {}
  memory = re.search(r"Memory analysis: (.*)", text)
  if memory:
    fields = dict(re.findall(r"(\w+)=(\d+)", memory.group(1)))
    out["memory"] = {k: int(fields[k]) for k in MEMORY_FIELDS if k in fields}
  cost = re.search(r"Cost analysis: (.*)", text)
  if cost:
    for key, name in (("flops", "flops"), ("bytes accessed", "bytes_accessed")):
      found = re.search(r"'" + key + r"': ([-\d.e+]+)", cost.group(1))
      if found:
        out[name] = float(found.group(1))
  if "compile_start" in marks and "compile_end" in marks:
    out["lower_and_compile_seconds"] = marks["compile_end"] - marks["compile_start"]
  return out


def versions(python: str) -> dict:
  code = ("import json; from importlib import metadata as m; print(json.dumps({p: m.version(p) "
          "for p in ('jax', 'jaxlib', 'libtpu', 'flax', 'maxtext') if _ok(p)}))")
  code = ("from importlib import metadata as m\n"
          "def _ok(p):\n  try:\n    m.version(p); return True\n  except Exception:\n"
          "    return False\n" + code)
  return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True,
                                   check=True).stdout)


def summarise(result: dict) -> dict:
  memory = result.get("memory")
  if memory:
    total = (memory["argument_size_in_bytes"] + memory["output_size_in_bytes"]
             - memory["alias_size_in_bytes"] + memory["temp_size_in_bytes"]
             + memory["generated_code_size_in_bytes"])
    result["total_bytes_per_chip"] = total
    result["total_gib_per_chip"] = round(total / 2 ** 30, 2)
  return result


def run_case(case: str, stack: str, args) -> dict:
  os.makedirs(args.logs, exist_ok=True)
  log = os.path.join(args.logs, f"{case}.{stack}.log")
  mt_python = os.path.join(args.venv, "bin", "python")
  if stack == "maxtext":
    cmd = maxtext_command(args.venv, case)
  else:
    cmd = ours_command(sys.executable if stack == "mind_jax" else mt_python, case)
  print(f"[{case} {stack}] {' '.join(cmd)}", flush=True)
  rc, wall, marks, text = launch(cmd, log, args.timeout)
  row: dict = {"command": cmd, "returncode": rc, "process_seconds": round(wall, 1),
               "log": log}
  if stack == "maxtext":
    row["settings"] = {**maxtext_settings(case), "adamw_mask": ["norm"]}
    row["versions"] = versions(mt_python)
    row.update(parse_maxtext(text, marks))
  else:
    row["plan_equivalent"] = plan_equivalent(case)
    found = [line for line in text.splitlines() if line.startswith("RESULT ")]
    if found:
      row.update(json.loads(found[-1][len("RESULT "):]))
  if rc != 0 or "memory" not in row:
    row["error"] = "\n".join(text.strip().splitlines()[-25:])
  summarise(row)
  print(f"[{case} {stack}] rc={rc} {wall:.0f}s total={row.get('total_gib_per_chip')} GiB "
        f"compile={row.get('lower_and_compile_seconds')}", flush=True)
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cases", default="v5p-128-4096")
  parser.add_argument("--stacks", default="mind_jax,mind_jax@mt,maxtext")
  parser.add_argument("--venv", default=DEFAULT_VENV)
  parser.add_argument("--out", default=os.path.join(REPO, "docs", "results",
                                                    "maxtext_tpu_compile.json"))
  parser.add_argument("--logs", default="/tmp/maxtext_tpu_compile_logs")
  parser.add_argument("--timeout", type=float, default=1200)
  parser.add_argument("--machine", default="2-core CPU VM, shared")
  # worker mode
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--config")
  parser.add_argument("--topology")
  parser.add_argument("--preset")
  parser.add_argument("overrides", nargs="*")
  args = parser.parse_args()
  if args.worker:
    worker(args.config, args.topology, args.preset, args.overrides)
    return
  results = {}
  if os.path.exists(args.out):
    with open(args.out) as f:
      results = json.load(f)
  results.update(machine=args.machine, differences=DIFFERENCES)
  cases = results.setdefault("cases", {})
  for case in args.cases.split(","):
    config, topology, preset, model, seq, batch, micro = CASES[case]
    entry = cases.setdefault(case, {})
    entry["settings"] = {
        "topology": topology, "chips": CHIPS[topology], "model": preset, "seq_len": seq,
        "batch_size": batch, "microbatches": micro,
        "sequences_per_chip_per_microbatch": batch // micro // CHIPS[topology],
        "our_config": config, "our_overrides": overrides(case), "remat": "dots_no_batch / minimal",
        "scan_layers": True, "weights": "float32", "compute": "bfloat16", "optimizer": "adamw",
        "mesh": "fsdp over every chip"}
    stacks = entry.setdefault("stacks", {})
    for stack in args.stacks.split(","):
      row = run_case(case, stack, args)
      row["date"] = datetime.date.today().isoformat()
      stacks[stack] = row
      with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
  main()
