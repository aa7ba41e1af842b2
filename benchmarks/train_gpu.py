"""Training MFU on one accelerator: the train step of a 1B-class Llama at sequences of 2,048.

A Llama-3.2-1B-shaped model (the `llama3.2-1b` preset: bf16 compute, fp32 master weights and
AdamW state) is initialised with random weights on the device (no checkpoint), and the jitted
train step (forward, backward, clipping, AdamW) runs on random token batches. MFU = the step's
FLOPs as the training metrics count them (6 per parameter per token plus causal attention) /
step time / the chip's peak bf16 FLOP/s (mind_jax._devices; --peak-flops for another card).
Writes OUT/train_gpu.json.

  python benchmarks/train_gpu.py --out bench_out                        # on the GPU / TPU host
  python benchmarks/train_gpu.py --preset tiny --batch 2 --seq 128 --steps 3   # a check on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--preset", default="llama3.2-1b")
  parser.add_argument("--batch", type=int, default=8, help="sequences per step")
  parser.add_argument("--seq", type=int, default=2048)
  parser.add_argument("--microbatches", type=int, default=1)
  parser.add_argument("--remat", default="dots_no_batch",
                      choices=["none", "full", "dots", "dots_no_batch"])
  parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
  parser.add_argument("--peak-flops", type=float, help="the chip's peak FLOP/s, where the table "
                      "lacks it")
  args = parser.parse_args(argv)
  from mind_jax._devices import peak_flops
  from mind_jax.config import ModelSection
  from mind_jax.data import whole_document_rows
  from mind_jax.ckpts import architecture
  from mind_jax.sharding import make_mesh
  from mind_jax.training._config import OptimizerSection
  from mind_jax.training._step import Trainer, host_metrics, step_flops

  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  section = ModelSection(preset=args.preset, dtype="bfloat16", param_dtype="float32",
                         scan_layers=True, remat=args.remat)
  config = architecture(section, mesh.devices.flat)
  opt = OptimizerSection(warmup_steps=0, schedule="constant")
  trainer = Trainer.create(config, mesh, opt.build(100),
                           microbatches=args.microbatches)
  state = trainer.init_state(trainer.init_params(0))
  rs = np.random.RandomState(0)
  times = []
  for _ in range(2 + args.steps):
    tokens = rs.randint(0, config.vocab_size, (args.batch, args.seq)).astype(np.int32)
    batch = {k: jax.device_put(v, trainer.batch_sharding)
             for k, v in whole_document_rows(tokens).items()}
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    metrics = host_metrics(metrics)  # waits for the step
    times.append(time.perf_counter() - start)
  device = jax.devices()[0]
  peak = args.peak_flops or peak_flops(device.device_kind)
  step = float(np.median(times[2:]))
  flops = step_flops(config, args.batch * args.seq, args.seq)
  result = {"device": device.device_kind, "platform": device.platform, "preset": args.preset,
            "batch": args.batch, "seq_len": args.seq, "microbatches": args.microbatches,
            "remat": args.remat, "attention": config.attention, "jax": jax.__version__,
            "first_step_s": times[0], "step_s": step, "step_flops": flops,
            "tokens_per_s": args.batch * args.seq / step, "peak_flops": peak,
            "mfu": flops / step / peak if peak else None, "final_loss": metrics["loss"]}
  print(json.dumps(result, indent=1))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "train_gpu.json"), "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
