"""Decode speed and memory-bandwidth utilisation on one accelerator.

A Llama-3.1-8B-shaped model with random bf16 weights (built on the device, no
checkpoint needed) decodes with the engine at 1 slot and at 64 slots. Each
measurement fills every slot with a 512-token prompt, compiles, then times
generate calls only (prefill excluded).

Bandwidth utilisation = bytes a decode step must read (every weight once, less
the embedding table of which it reads a row per slot, plus the KV cache window
every slot attends over) / step time / the card's peak memory bandwidth
(--peak-bandwidth where the card is not in mind_jax/_devices.py). Decode is
memory-bound, so this is the figure to push up. Results are written to
OUT/decode_gpu.json after each batch size.

  python benchmarks/decode_gpu.py --out bench_out                 # on the GPU / TPU host
  python benchmarks/decode_gpu.py --preset tiny --slots 1 4       # a quick check on CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import mind_jax
from mind_jax._devices import peak_bandwidth
from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams
from mind_jax.engine._engine import _Sequence


def random_model(preset: str) -> mind_jax.Llama:
  config = mind_jax.preset(preset, dtype="bfloat16", param_dtype="bfloat16")
  # Built inside jit so the weights are created on the device, not on the host.
  # One small program per distinct weight shape: jitting the model's own initializers as one
  # program took XLA's GPU compiler over four minutes for the 8B model on an H100.
  graphdef, state = nnx.split(nnx.eval_shape(lambda: mind_jax.Llama(config, rngs=nnx.Rngs(0))))
  fill = jax.jit(lambda key, shape, dtype: 0.02 * jax.random.normal(key, shape, dtype),
                 static_argnums=(1, 2))
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  leaves = [fill(key, leaf.shape, leaf.dtype) for key, leaf in zip(keys, leaves)]
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


def measure(model, slots: int, prompt_len: int, max_len: int, steps: int, calls: int) -> dict:
  setup_start = time.perf_counter()
  # One prefill bucket and no warmup: the run compiles only the two programs it uses (an 8B
  # model compiles for tens of seconds each, and a lent device's minutes are few); the untimed
  # generate call below compiles the decode step.
  config = EngineConfig(slots=slots, max_len=max_len, steps_per_call=steps,
                        prefill_buckets=(prompt_len,))
  row = config.row_pages
  engine = Engine(model, None, dataclasses.replace(config, kv_pages=slots * row))
  params = SamplingParams(max_new_tokens=max_len - prompt_len, temperature=0.0, ignore_eos=True)
  # Every slot a whole row of pages of its own, as long as the context (the pool's bytes are
  # those of the fixed-slot engine this benchmark was written for).
  pages = [list(range(slot * row, (slot + 1) * row)) for slot in range(slots)]
  for slot in range(slots):
    sequence = _Sequence(Request(slot, [1] * prompt_len, params), [], slot, pages[slot], 0)
    engine._prefill(sequence, 0, np.asarray(pages[slot:slot + 1], np.int32), None)
  window = engine._window_for(prompt_len + steps * (calls + 1))
  table = np.asarray([p[:engine._window_pages(window)] for p in pages], np.int32)
  state, emitted = engine._generate(engine._params, engine.state, table)
  jax.block_until_ready(emitted)
  setup_s = time.perf_counter() - setup_start
  start = time.perf_counter()
  for _ in range(calls):
    state, emitted = engine._generate(engine._params, state, table)
  jax.block_until_ready(emitted)
  step = (time.perf_counter() - start) / (calls * steps)
  cfg = model.config
  weight_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
  if not cfg.tie_word_embeddings:
    # A step reads one embedding row per slot, not the table (1 GB of the 8B model's 16 GB);
    # counting the table would overstate the bandwidth reached.
    weight_bytes -= cfg.vocab_size * cfg.hidden_size * jnp.dtype(cfg.param_dtype).itemsize
  kv_bytes = (2 * cfg.num_hidden_layers * slots * cfg.num_key_value_heads * window
              * cfg.resolved_head_dim * jnp.dtype(cfg.dtype).itemsize)
  return {"slots": slots, "setup_s": setup_s, "step_ms": step * 1e3, "tokens_per_s": slots / step,
          "weight_bytes": weight_bytes, "kv_bytes_per_step": kv_bytes, "window": window,
          "bytes_per_s": (weight_bytes + kv_bytes) / step}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--preset", default="llama3.1-8b")
  parser.add_argument("--slots", type=int, nargs="+", default=[1, 64])
  parser.add_argument("--prompt-len", type=int, default=512)
  parser.add_argument("--max-len", type=int, default=1024)
  parser.add_argument("--steps-per-call", type=int, default=16)
  parser.add_argument("--calls", type=int, default=4)
  parser.add_argument("--peak-bandwidth", type=float, default=None,
                      help="the card's peak memory bandwidth in bytes/s, where its name is not "
                      "in mind_jax/_devices.py or the table's figure is not this card's")
  args = parser.parse_args()
  device = jax.devices()[0]
  peak = args.peak_bandwidth or peak_bandwidth(device.device_kind)
  print(f"{device.device_kind} ({device.platform}), jax {jax.__version__}, "
        f"peak bandwidth {peak / 1e12 if peak else float('nan'):.2f} TB/s", flush=True)
  model = random_model(args.preset)
  rows = []
  os.makedirs(args.out, exist_ok=True)
  for slots in args.slots:
    row = measure(model, slots, args.prompt_len, args.max_len, args.steps_per_call, args.calls)
    row["bandwidth_utilisation"] = row["bytes_per_s"] / peak if peak else None
    rows.append(row)
    util = f"{row['bandwidth_utilisation']:.0%}" if peak else "n/a (unknown peak)"
    print(f"{device.device_kind}: {slots} slots, {row['step_ms']:.2f} ms/step "
          f"(compile and prefill {row['setup_s']:.0f} s), "
          f"{row['tokens_per_s']:.0f} tok/s, {row['bytes_per_s'] / 1e9:.0f} GB/s read, "
          f"bandwidth utilisation {util}", flush=True)
    # Written after every row, so a run stopped at its time limit still leaves its figures.
    with open(os.path.join(args.out, "decode_gpu.json"), "w") as f:
      json.dump({"device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
                 "preset": args.preset, "prompt_len": args.prompt_len,
                 "peak_bandwidth": peak, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
