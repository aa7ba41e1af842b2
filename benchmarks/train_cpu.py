"""Training throughput on CPU: mind_jax's train step against transformers + torch AdamW.

Same model (the 56.4M-parameter Llama of generate_cpu.py, fp32), same batch (8 sequences of
512 tokens, no padding), same optimizer (AdamW 0.9/0.95, weight decay 0.1 off the norms,
clipping at 1.0); both time 10 steps after 2 warm-up steps (mind_jax's first step compiles).
MFU is against this machine's measured matmul roofline (fp32, 2048 x 2048, best of 5), with
the step's FLOPs counted as mind_jax counts them for its metrics (6 per parameter per token
for the matmuls, plus causal attention).

  python benchmarks/train_cpu.py --out bench_out

With --loop, the whole training loop instead (`python -m mind_jax.train`: data, step, metrics
records, the final checkpoint; the tiny preset, where the host's work per step is a large part
of the step): seconds per step between the TensorBoard events of step LOOP_WARMUP and the last,
so the time the host spends between steps counts, however the loop measures its own
step_seconds. Run it against another checkout with PYTHONPATH=that checkout.

  python benchmarks/train_cpu.py --loop --out bench_out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from generate_cpu import CONFIG  # the same model (the script's folder is on sys.path)

BATCH, SEQ, WARMUP, TIMED = 8, 512, 2, 10
LOOP_STEPS, LOOP_WARMUP = 200, 20
LOOP_ARGS = ["model.preset=tiny", "batch_size=8", "data.seq_len=128", f"steps={LOOP_STEPS}",
             f"checkpoint.every={LOOP_STEPS}", "optimizer.warmup_steps=2"]


def roofline() -> float:
  import jax
  import jax.numpy as jnp
  a = jnp.ones((2048, 2048), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = min(_timed(lambda: matmul(a).block_until_ready()) for _ in range(5))
  return 2 * 2048 ** 3 / best


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def batches(n, seed=0):
  rs = np.random.RandomState(seed)
  return [rs.randint(0, CONFIG["vocab_size"], (BATCH, SEQ)).astype(np.int32) for _ in range(n)]


def run_mind_jax(model_dir, data):
  import jax
  from mind_jax.ckpts import load_model
  from mind_jax.config import ModelSection
  from mind_jax.data import whole_document_rows
  from mind_jax.sharding import make_mesh
  from mind_jax.training._config import OptimizerSection
  from mind_jax.training._step import Trainer, flat_params, host_metrics, step_flops
  opt = OptimizerSection(warmup_steps=0, schedule="constant")
  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  model, _, _ = load_model(ModelSection(path=model_dir), mesh, "train", progress=False)
  trainer = Trainer.create(model.config, mesh, opt.build(100))
  state = trainer.init_state(flat_params(model))
  del model
  times = []
  for tokens in data:
    batch = {k: jax.device_put(v, trainer.batch_sharding)
             for k, v in whole_document_rows(tokens).items()}
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    host_metrics(metrics)
    times.append(time.perf_counter() - start)
  return times, step_flops(trainer.config, BATCH * SEQ, SEQ)


def run_torch(model_dir, data):
  import torch
  import transformers
  model = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  named = dict(model.named_parameters())
  adamw = torch.optim.AdamW(
      [{"params": [p for n, p in named.items() if "norm" not in n], "weight_decay": 0.1},
       {"params": [p for n, p in named.items() if "norm" in n], "weight_decay": 0.0}],
      lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
  model.train()
  times = []
  for tokens in data:
    ids = torch.tensor(tokens, dtype=torch.long)
    start = time.perf_counter()
    loss = model(ids, labels=ids).loss
    adamw.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    adamw.step()
    times.append(time.perf_counter() - start)
  return times


def run_loop() -> dict:
  """The training job on one CPU device: its seconds per step, host time between steps in."""
  import subprocess
  import sys
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  workdir = os.path.join(tempfile.mkdtemp(prefix="train_loop_bench_"), "run")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  began = time.perf_counter()
  subprocess.run([sys.executable, "-m", "mind_jax.train", f"workdir={workdir}", *LOOP_ARGS],
                 check=True, capture_output=True, env=env)
  job_s = time.perf_counter() - began
  events = EventAccumulator(os.path.join(workdir, "tensorboard"))
  events.Reload()
  wall = {e.step: e.wall_time for e in events.Scalars("train/loss")}
  step_s = (wall[LOOP_STEPS] - wall[LOOP_WARMUP]) / (LOOP_STEPS - LOOP_WARMUP)
  return {"loop_args": LOOP_ARGS, "loop_step_s": step_s, "loop_steps_per_s": 1 / step_s,
          "job_s": job_s}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--loop", action="store_true", help="time the whole training loop")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  if args.loop:
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", **run_loop()}
    print(json.dumps(result, indent=1))
    with open(os.path.join(args.out, "train_loop_cpu.json"), "w") as f:
      json.dump(result, f, indent=1)
    return
  import torch
  import transformers
  model_dir = tempfile.mkdtemp(prefix="train_bench_")
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).save_pretrained(model_dir)
  data = batches(WARMUP + TIMED)
  peak = roofline()
  ours, flops = run_mind_jax(model_dir, data)
  theirs = run_torch(model_dir, data)
  tokens = BATCH * SEQ
  result = {
      "machine": f"{platform.machine()}, {os.cpu_count()} cores", "batch": BATCH, "seq_len": SEQ,
      "params": sum(p.numel() for p in transformers.LlamaForCausalLM.from_pretrained(
          model_dir).parameters()),
      "roofline_flops_per_s": peak, "step_flops": flops,
      "mind_jax_first_step_s": ours[0], "mind_jax_step_s": float(np.median(ours[WARMUP:])),
      "torch_step_s": float(np.median(theirs[WARMUP:])),
  }
  result["mind_jax_tokens_per_s"] = tokens / result["mind_jax_step_s"]
  result["torch_tokens_per_s"] = tokens / result["torch_step_s"]
  result["speedup"] = result["torch_step_s"] / result["mind_jax_step_s"]
  result["mind_jax_mfu"] = flops / result["mind_jax_step_s"] / peak
  result["torch_mfu"] = flops / result["torch_step_s"] / peak
  result["torch"], result["transformers"] = torch.__version__, transformers.__version__
  print(json.dumps(result, indent=1))
  with open(os.path.join(args.out, "train_cpu.json"), "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
