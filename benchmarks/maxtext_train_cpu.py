"""Training step on CPU: mind_jax against MaxText, Google's reference JAX trainer.

Every contender is its own process, launched in turn, the order flipped each round, so
a slow spell on a shared machine hits both sides alike:

  maxtext          MaxText's own trainer (`python -m maxtext.trainers.pre_train.train`) in its
                   venv (benchmarks/maxtext_venv.sh), decoupled from Google Cloud
                   (DECOUPLE_GCLOUD=TRUE), hardware=cpu, dataset_type=synthetic.
  mind_jax         our train step (mind_jax.training's Trainer, the machinery of
                   benchmarks/train_cpu.py) in this repository's venv.
  mind_jax@mt      the same worker run by the MaxText venv's python, i.e. on MaxText's JAX,
                   flax and optax (needs `WITH_MIND_JAX=1 bash benchmarks/maxtext_venv.sh`;
                   --no-ours-mt-jax leaves it out). Without it a win could be a JAX upgrade.
  mind_jax-cli     (--with-cli) `python -m mind_jax.train` itself: the CHAMP text through the
                   byte tokenizer, concat packing, one checkpoint and the HF export at the end.

Models (--models): `tiny` is our tiny preset (vocab 512, width 64, MLP 160, 2 layers, 4 heads,
2 KV heads; 8 x 256 tokens, the `python -m mind_jax.train` default); `56m` is the Llama of
benchmarks/train_cpu.py (vocab 32000, width 512, MLP 1408, 8 layers, 8 heads, 4 KV heads,
head 64, untied head; 8 x 512 tokens). fp32 weights and compute on both sides; AdamW
b1 0.9, b2 0.95, eps 1e-8, weight decay 0.1 on everything but the norm scales (embeddings and
head included; MaxText gets adamw_mask=[norm], its default decays the norms too), global-norm
clipping at 1.0, a constant learning rate of 3e-4 (no warmup); one document per row.

Measured per run: the seconds of each step, the steady state being the steps after the
first --warmup ones (tokens/s = batch x seq_len x steady steps / their summed seconds; the
two loops time a step differently, see the differences); the whole process's wall time,
spawn to exit (interpreter start, imports, initialisation, compilation, every step, exit);
and the time from spawn to the end of the first step ("to step 1": everything before
training plus one step; for MaxText read from its log's time stamp of step 0's metrics,
not available for the CLI, whose first step_seconds, compilation included, is recorded).

Config differences that remain (also printed and written to the JSON):
  - Remat: MaxText wraps every decoder layer in jax.checkpoint whatever the policy; it has no
    "no remat". --remat full (default) is its `full` against our `full`: both keep only the
    layer inputs. --remat minimal is its `minimal` (saves the named projection outputs:
    q, k, v, out, MLP in and out) against our `dots_no_batch` (saves every dot without batch
    dimensions, i.e. the same projections; neither saves attention scores).
  - Scan: --scan (default) is scan_layers=true on both; --no-scan unrolls both. MaxText stacks
    scanned weights on axis 1 (param_scan_axis), ours on axis 0.
  - Attention: MaxText on CPU runs its dot_product attention (the whole [T, T] score matrix,
    masked); ours runs blocked causal attention (128-row query blocks against the keys up to
    the block's end). Both are each stack's CPU path; the difference is part of what is
    measured.
  - Loss: MaxText's synthetic batch has T+1 random tokens per row, so all T positions carry
    a target; ours feeds T tokens and the last position has none (T-1 targets). Both count
    B x T tokens per step. MaxText builds the cross-entropy from a one-hot of the targets;
    ours gathers the target logit.
  - Step extras: MaxText's step also computes the clipped and raw gradient norms and the
    parameter norm; ours computes the gradient norm.
  - Timing: MaxText dispatches step k, notes the time, then reads step k-1's metrics (waiting
    for step k-1); so the interval it logs for step k mostly holds step k-2's execution.
    Its steady window therefore starts two logged steps later (--warmup + 2) and covers two
    fewer steps; both runs execute --steps steps. Our worker (and our trainer) waits for each
    step's metrics before the next dispatch, so its interval holds that step.
  - Data: MaxText's synthetic iterator slices the same device-resident tokens every step
    (its loss falls fast: it learns the one batch); ours puts a fresh host batch of random
    tokens on the device before each step (outside the timed call, as
    benchmarks/train_cpu.py does); the CLI reads and packs CHAMP text.
  - Initialisation: each stack's own random init (MaxText: its initializers, seed 0, the
    unsafe_rbg PRNG it selects; ours: the preset's, seed 0). Values differ; shapes match.
  - RoPE (tiny only): ours scales the frequencies Llama 3.1's way with an original context of
    64 positions; MaxText's llama3.1 RoPE hard-codes 8192. Same cost, different constants.
  - Versions: MaxText's venv resolves its own jax/flax/optax (printed per run); mind_jax@mt
    is there to separate the stack from the JAX release.
  - MaxText settings beyond the architecture: enable_checkpointing=false,
    enable_tensorboard=false, log_config=false, jax_cache_dir='' (no persistent compilation
    cache; ours is off too), skip_jax_distributed_system=true (its CPU path otherwise asks
    for a launcher's JOB_INDEX and coordinator), packing=false. Every process gets
    XLA_FLAGS=--xla_cpu_enable_fast_math=false (XLA's default; a value set already is kept):
    with XLA_FLAGS unset MaxText sets it to dump the train step's HLO under /tmp/xla_dump,
    which would bill MaxText's process for the writing.

  python benchmarks/maxtext_train_cpu.py --models tiny,56m --rounds 2
  python benchmarks/maxtext_train_cpu.py --models tiny --rounds 1 --steps 6 --label smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_VENV = "/work/venvs/maxtext"
DEFAULT_OUT = os.path.join(REPO, "docs", "results", "maxtext_train_cpu.json")

OPTIMIZER = dict(learning_rate=3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)

# Per model: the batch, and the architecture in MaxText's base.yml keys. Our side builds its
# config from the preset / train_cpu.py's dict, so the two are written down independently and
# checked against each other (check_same_shapes) before anything runs.
MODELS = {
    "tiny": dict(batch=8, seq_len=256, maxtext=dict(
        base_emb_dim=64, base_num_query_heads=4, base_num_kv_heads=2, base_mlp_dim=160,
        base_num_decoder_layers=2, head_dim=16, vocab_size=512, normalization_layer_epsilon=1e-5,
        logits_via_embedding=False, rope_type="llama3.1", rope_max_timescale=500000)),
    "56m": dict(batch=8, seq_len=512, maxtext=dict(
        base_emb_dim=512, base_num_query_heads=8, base_num_kv_heads=4, base_mlp_dim=1408,
        base_num_decoder_layers=8, head_dim=64, vocab_size=32000, normalization_layer_epsilon=1e-5,
        logits_via_embedding=False, rope_type="default", rope_max_timescale=10000)),
}

NEUTRAL_XLA_FLAGS = "--xla_cpu_enable_fast_math=false"

REMAT = {"full": ("full", "full"), "minimal": ("dots_no_batch", "minimal")}  # ours, MaxText


def _differences() -> list[str]:
  """The docstring's list, each item joined back onto one line."""
  block = __doc__.split("Config differences that remain")[1].split("\n\n  python")[0]
  items, current = [], None
  for line in block.split("\n")[1:]:
    text = line.strip()
    if text.startswith("- "):
      if current:
        items.append(current)
      current = text[2:]
    elif text and current is not None:
      current += " " + text
  if current:
    items.append(current)
  return items


# --- our side --------------------------------------------------------------------------------
def our_config(name: str, scan: bool, remat: str):
  from mind_jax.nn import LlamaConfig
  from mind_jax.nn._config import preset
  if name == "tiny":
    config = preset("tiny")
  else:
    sys.path.insert(0, HERE)
    from generate_cpu import CONFIG  # the 56.4M model of train_cpu.py
    config = LlamaConfig.from_hf_dict({**CONFIG, "model_type": "llama",
                                       "architectures": ["LlamaForCausalLM"]})
  return config.replace(scan_layers=scan, remat=remat, dtype="float32", param_dtype="float32")


def check_same_shapes(name: str, config) -> None:
  """Refuses to run when the MaxText keys above do not describe our config."""
  mt = MODELS[name]["maxtext"]
  ours = dict(base_emb_dim=config.hidden_size, base_num_query_heads=config.num_attention_heads,
              base_num_kv_heads=config.num_key_value_heads, base_mlp_dim=config.intermediate_size,
              base_num_decoder_layers=config.num_hidden_layers, head_dim=config.resolved_head_dim,
              vocab_size=config.vocab_size, normalization_layer_epsilon=config.rms_norm_eps,
              logits_via_embedding=config.tie_word_embeddings,
              rope_max_timescale=config.rope.theta)
  wrong = {k: (v, mt[k]) for k, v in ours.items() if float(v) != float(mt[k])}
  if wrong:
    raise SystemExit(f"{name}: MaxText keys disagree with our config (ours, MaxText): {wrong}")


def worker(args) -> None:
  """One run of our step, in whatever venv runs this file; one JSON line on stdout."""
  began = time.perf_counter()
  import jax
  import numpy as np
  from mind_jax.data import whole_document_rows
  from mind_jax.sharding import make_mesh
  from mind_jax.training._config import OptimizerSection
  from mind_jax.training._step import Trainer, host_metrics
  imported = time.perf_counter()
  spec = MODELS[args.model]
  config = our_config(args.model, args.scan, REMAT[args.remat][0])
  opt = OptimizerSection(warmup_steps=0, schedule="constant", **OPTIMIZER)
  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  trainer = Trainer.create(config, mesh, opt.build(args.steps))
  state = trainer.init_state(trainer.init_params(0))
  jax.block_until_ready(state)
  initialised = time.perf_counter()
  rs = np.random.RandomState(0)
  times, losses, first_done = [], [], None
  for _ in range(args.steps):
    tokens = rs.randint(0, config.vocab_size, (spec["batch"], spec["seq_len"])).astype(np.int32)
    batch = {k: jax.device_put(v, trainer.batch_sharding)
             for k, v in whole_document_rows(tokens).items()}
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    metrics = host_metrics(metrics)  # waits for the step, as the training loop does
    times.append(time.perf_counter() - start)
    losses.append(metrics["loss"])
    first_done = first_done or time.time()
  print("RESULT " + json.dumps({
      "step_seconds": times, "losses": losses, "import_s": imported - began,
      "init_s": initialised - imported, "jax": jax.__version__, "first_step_done": first_done,
      "params": config.num_params()}), flush=True)


# --- launching -------------------------------------------------------------------------------
def maxtext_command(venv: str, model: str, args, workdir: str) -> list[str]:
  spec = MODELS[model]
  base = subprocess.run([os.path.join(venv, "bin", "python"), "-c",
                         "import maxtext, os; print(os.path.dirname(maxtext.__file__))"],
                        capture_output=True, text=True, check=True).stdout.strip()
  keys = dict(spec["maxtext"])
  keys.update(
      run_name="bench", base_output_directory=workdir, hardware="cpu",
      skip_jax_distributed_system=True, dataset_type="synthetic", packing=False,
      enable_checkpointing=False, enable_tensorboard=False, log_config=False, jax_cache_dir="",
      metrics_file=os.path.join(workdir, "metrics.jsonl"), steps=args.steps,
      per_device_batch_size=spec["batch"], max_target_length=spec["seq_len"],
      dtype="float32", weight_dtype="float32", attention="dot_product",
      remat_policy=REMAT[args.remat][1], scan_layers=args.scan, opt_type="adamw",
      learning_rate=OPTIMIZER["learning_rate"], adam_b1=OPTIMIZER["b1"], adam_b2=OPTIMIZER["b2"],
      adam_eps=OPTIMIZER["eps"], adam_weight_decay=OPTIMIZER["weight_decay"],
      gradient_clipping_threshold=OPTIMIZER["clip_norm"],
      # constant rate: warmup-stable-decay with neither warmup nor decay
      lr_schedule_type="wsd", warmup_steps_fraction=0.0, wsd_decay_steps_fraction=0.0)

  def value(v):
    return str(v).lower() if isinstance(v, bool) else str(v)
  return ([os.path.join(venv, "bin", "python"), "-m", "maxtext.trainers.pre_train.train",
           os.path.join(base, "configs", "base.yml")]
          + [f"{k}={value(v)}" for k, v in keys.items()]
          + ["adamw_mask=[norm]"])  # no decay on norm scales, as ours


def ours_command(python: str, model: str, args) -> list[str]:
  return [python, os.path.abspath(__file__), "--worker", "--model", model, "--steps",
          str(args.steps), "--remat", args.remat, "--scan" if args.scan else "--no-scan"]


def cli_command(python: str, model: str, args, workdir: str, hf_dir: str | None) -> list[str]:
  spec = MODELS[model]
  model_keys = ["model.preset=tiny"] if model == "tiny" else [f"model.path={hf_dir}",
                                                              "data.tokenizer=byte"]
  return [python, "-m", "mind_jax.train", *model_keys, f"workdir={workdir}",
          f"steps={args.steps}", f"batch_size={spec['batch']}", f"data.seq_len={spec['seq_len']}",
          "data.packing=concat", f"model.scan_layers={str(args.scan).lower()}",
          f"model.remat={REMAT[args.remat][0]}", "model.dtype=float32", "runtime.compile_cache=",
          "optimizer.schedule=constant", "optimizer.warmup_steps=0",
          f"optimizer.learning_rate={OPTIMIZER['learning_rate']}",
          f"optimizer.b1={OPTIMIZER['b1']}", f"optimizer.b2={OPTIMIZER['b2']}",
          f"optimizer.eps={OPTIMIZER['eps']}",
          f"optimizer.weight_decay={OPTIMIZER['weight_decay']}",
          f"optimizer.clip_norm={OPTIMIZER['clip_norm']}", f"checkpoint.every={args.steps}"]


def make_hf_dir(model: str, out: str) -> None:
  """A random HF checkpoint of the 56m model for the CLI (it has no preset)."""
  from flax import nnx
  from mind_jax.ckpts import save_pretrained
  from mind_jax.nn import Llama
  save_pretrained(Llama(our_config(model, False, "none"), rngs=nnx.Rngs(0)), out, progress=False)


def child_env() -> dict:
  env = dict(os.environ)
  env.update(DECOUPLE_GCLOUD="TRUE", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="1")
  # Any XLA_FLAGS keeps MaxText from setting its own (an HLO dump); this one restates XLA's
  # default, so no process compiles differently for it.
  env.setdefault("XLA_FLAGS", NEUTRAL_XLA_FLAGS)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


def launch(cmd: list[str], log_path: str, cwd: str) -> tuple[float, float, int, str]:
  spawned = time.time()
  start = time.perf_counter()
  with open(log_path, "w") as log:
    rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                        env=child_env()).returncode
  wall = time.perf_counter() - start
  with open(log_path) as f:
    return spawned, wall, rc, f.read()


def maxtext_first_step_done(text: str, spawned: float) -> float | None:
  """When MaxText logged step 0's metrics, from the line's absl time stamp (local time, to the
  microsecond). It reads them after dispatching step 1, waiting for step 0 to finish, so the
  stamp marks step 0's end."""
  found = re.search(r"^I(\d\d)(\d\d) (\d\d:\d\d:\d\d\.\d+) .*completed step: 0,", text, re.M)
  if not found:
    return None
  year = datetime.datetime.fromtimestamp(spawned).year
  stamp = datetime.datetime.strptime(f"{year}-{found.group(1)}-{found.group(2)} {found.group(3)}",
                                     "%Y-%m-%d %H:%M:%S.%f")
  return stamp.timestamp()


def maxtext_result(workdir: str, text: str) -> dict:
  rows = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      if line.strip():
        rows.append(json.loads(line))
  rows.sort(key=lambda r: r["step"])
  jax_version = re.search(r"Jax Version: (\S+)", text)
  return {"step_seconds": [r["perf/step_time_seconds"] for r in rows],
          "losses": [r["learning/loss"] for r in rows],
          "jax": jax_version.group(1) if jax_version else None}


def cli_result(workdir: str) -> dict:
  rows = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "step_seconds" in row:
        rows.append(row)
  return {"step_seconds": [r["step_seconds"] for r in rows], "losses": [r["loss"] for r in rows]}


# Logged steps by which MaxText's intervals trail the steps they time (see the docstring).
MAXTEXT_LAG = 2


def summarise(result: dict, tokens: int, skip: int) -> dict:
  steady = result["step_seconds"][skip:]
  out = dict(result)
  if steady:
    out["steady_steps"] = len(steady)
    out["steady_mean_step_s"] = sum(steady) / len(steady)
    out["steady_median_step_s"] = statistics.median(steady)
    out["tokens_per_s"] = tokens * len(steady) / sum(steady)
  return out


def run_one(contender: str, model: str, args, scratch: str, logs: str, round_: int,
            hf_dir: str | None) -> dict:
  workdir = tempfile.mkdtemp(prefix=f"{contender}-", dir=scratch)
  mt_python = os.path.join(args.maxtext_venv, "bin", "python")
  if contender == "maxtext":
    cmd = maxtext_command(args.maxtext_venv, model, args, workdir)
  elif contender == "mind_jax":
    cmd = ours_command(sys.executable, model, args)
  elif contender == "mind_jax@mt":
    cmd = ours_command(mt_python, model, args)
  else:
    cmd = cli_command(sys.executable, model, args, os.path.join(workdir, "run"), hf_dir)
  log_path = os.path.join(logs, f"{model}-{contender}-r{round_}.log")
  spawned, wall, rc, text = launch(cmd, log_path, workdir)
  record = {"contender": contender, "model": model, "round": round_, "process_wall_s": wall,
            "rc": rc, "log": log_path}
  if rc != 0:
    tail = "\n".join(text.strip().splitlines()[-15:])
    print(f"  {contender} failed (exit {rc}); last lines of {log_path}:\n{tail}", flush=True)
    record["error"] = tail
    return record
  try:
    if contender == "maxtext":
      result = maxtext_result(workdir, text)
      done = maxtext_first_step_done(text, spawned)
    elif contender == "mind_jax-cli":
      result = cli_result(os.path.join(workdir, "run"))
      result["jax"], done = None, None
      result["first_step_s"] = result["step_seconds"][0]  # compilation included
    else:
      line = [l for l in text.splitlines() if l.startswith("RESULT ")][-1]
      result = json.loads(line[len("RESULT "):])
      result["first_step_s"] = result["step_seconds"][0]  # compilation included
      done = result.pop("first_step_done")
    # spawn to the first step's end: interpreter, imports, init, compilation, one step
    result["to_first_step_s"] = done - spawned if done else None
  except (OSError, IndexError, KeyError, ValueError) as e:
    record["error"] = f"could not read the run's metrics: {e!r}"
    print(f"  {contender}: {record['error']} (log: {log_path})", flush=True)
    return record
  spec = MODELS[model]
  skip = args.warmup + (MAXTEXT_LAG if contender == "maxtext" else 0)
  record.update(summarise(result, spec["batch"] * spec["seq_len"], skip))
  shutil.rmtree(workdir, ignore_errors=True)
  return record


def versions(python: str) -> dict:
  code = ("import importlib.metadata as m, json; out = {}\n"
          "for n in ['jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'maxtext']:\n"
          "  try: out[n] = m.version(n)\n"
          "  except m.PackageNotFoundError: pass\n"
          "print(json.dumps(out))")
  done = subprocess.run([python, "-c", code], capture_output=True, text=True)
  return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-500:]}


def table(records: list[dict], contenders: list[str], models: list[str]) -> tuple[str, dict]:
  lines = [f"{'model':6s} {'contender':13s} {'rounds':>6s} {'tokens/s':>10s} {'step s':>8s} "
           f"{'wall s':>8s} {'to step 1':>10s} {'vs maxtext':>10s}"]
  summary = {}
  for model in models:
    base = None
    for contender in contenders:
      runs = [r for r in records if r["model"] == model and r["contender"] == contender
              and "tokens_per_s" in r]
      if not runs:
        lines.append(f"{model:6s} {contender:13s} {'failed or no steady steps':>40s}")
        continue
      tps = statistics.median(r["tokens_per_s"] for r in runs)
      step = statistics.median(r["steady_mean_step_s"] for r in runs)
      wall = statistics.median(r["process_wall_s"] for r in runs)
      first = [r["to_first_step_s"] for r in runs if r.get("to_first_step_s")]
      if contender == "maxtext":
        base = tps
      ratio = tps / base if base else None
      per_round = [r["tokens_per_s"] for r in runs]
      ratios = []
      for r in runs:
        ref = [m for m in records if m["model"] == model and m["contender"] == "maxtext"
               and m["round"] == r["round"] and "tokens_per_s" in m]
        if ref:
          ratios.append(r["tokens_per_s"] / ref[0]["tokens_per_s"])
      summary.setdefault(model, {})[contender] = {
          "tokens_per_s_median": tps, "tokens_per_s_per_round": per_round,
          "steady_step_s_median": step, "process_wall_s_median": wall,
          "to_first_step_s_median": statistics.median(first) if first else None,
          "tokens_per_s_vs_maxtext": ratio, "vs_maxtext_per_round": ratios}
      lines.append(f"{model:6s} {contender:13s} {len(runs):6d} {tps:10.0f} {step:8.3f} {wall:8.1f} "
                   f"{(statistics.median(first) if first else float('nan')):10.2f} "
                   f"{(f'{ratio:.2f}x' if ratio else '-'):>10s}")
  return "\n".join(lines), summary


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="tiny,56m")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=12, help="steps per run (warmup included)")
  parser.add_argument("--warmup", type=int, default=2, help="first steps left out of tokens/s")
  parser.add_argument("--remat", choices=sorted(REMAT), default="full")
  parser.add_argument("--scan", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--maxtext-venv", default=os.environ.get("MAXTEXT_VENV", DEFAULT_VENV))
  parser.add_argument("--ours-mt-jax", action=argparse.BooleanOptionalAction, default=True,
                      help="also run our step on the MaxText venv's JAX")
  parser.add_argument("--with-cli", action="store_true", help="also `python -m mind_jax.train`")
  parser.add_argument("--out", default=DEFAULT_OUT)
  parser.add_argument("--logs", default=os.path.join(REPO, "bench_out", "maxtext_train_cpu"))
  parser.add_argument("--label", default="measurement",
                      help="written into the JSON, e.g. smoke for a run on a busy machine")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--model", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker(args)
  if args.steps <= args.warmup + MAXTEXT_LAG:
    parser.error(f"--steps must exceed --warmup + {MAXTEXT_LAG} (MaxText's timing lag)")

  models = [m for m in args.models.split(",") if m]
  for m in models:
    if m not in MODELS:
      parser.error(f"--models: unknown {m!r}; choose from {', '.join(MODELS)}")
    check_same_shapes(m, our_config(m, args.scan, REMAT[args.remat][0]))
  mt_python = os.path.join(args.maxtext_venv, "bin", "python")
  if not os.access(mt_python, os.X_OK):
    raise SystemExit(f"no MaxText venv at {args.maxtext_venv}; run benchmarks/maxtext_venv.sh")
  contenders = ["maxtext", "mind_jax"]
  if args.ours_mt_jax:
    probe = subprocess.run([mt_python, "-c", "import mind_jax.training._step"],
                           capture_output=True, text=True, env=child_env())
    if probe.returncode:
      raise SystemExit("mind_jax does not import in the MaxText venv (install it with "
                       "WITH_MIND_JAX=1 bash benchmarks/maxtext_venv.sh, or pass "
                       f"--no-ours-mt-jax):\n{probe.stderr.strip()[-2000:]}")
    contenders.append("mind_jax@mt")
  if args.with_cli:
    contenders.append("mind_jax-cli")

  os.makedirs(args.logs, exist_ok=True)
  scratch = tempfile.mkdtemp(prefix="maxtext_train_cpu_")
  differences = _differences()
  print("Config differences:\n" + "\n".join(f"  - {d}" for d in differences), flush=True)
  records = []
  try:
    hf_dirs = {}
    if args.with_cli:
      for m in models:
        if m != "tiny":
          hf_dirs[m] = os.path.join(scratch, f"hf-{m}")
          make_hf_dir(m, hf_dirs[m])
    for round_ in range(args.rounds):
      for m in models:
        order = contenders if round_ % 2 == 0 else contenders[::-1]
        for contender in order:
          print(f"round {round_ + 1}/{args.rounds} {m}: {contender}", flush=True)
          record = run_one(contender, m, args, scratch, args.logs, round_, hf_dirs.get(m))
          if "tokens_per_s" in record:
            print(f"  {record['tokens_per_s']:.0f} tokens/s, steady step "
                  f"{record['steady_mean_step_s']:.3f} s, process {record['process_wall_s']:.1f} s",
                  flush=True)
          records.append(record)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)

  text, summary = table(records, contenders, models)
  print("\n" + text)
  result = {
      "label": args.label, "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "machine": f"{platform.machine()}, {os.cpu_count()} cores",
      "load_average_at_end": os.getloadavg(),
      "settings": {"models": {m: {"batch": MODELS[m]["batch"], "seq_len": MODELS[m]["seq_len"],
                                  "maxtext_keys": MODELS[m]["maxtext"]} for m in models},
                   "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
                   "remat": {"mind_jax": REMAT[args.remat][0], "maxtext": REMAT[args.remat][1]},
                   "scan_layers": args.scan, "optimizer": OPTIMIZER, "dtype": "float32"},
      "versions": {"mind_jax venv": versions(sys.executable), "maxtext venv": versions(mt_python)},
      "differences": differences, "summary": summary, "runs": records,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
