"""Decode throughput on CPU: the mind_jax engine against transformers' generate, same weights.

Workload (the engine issue's): a ~56M-parameter Llama (random fp32 weights),
64 requests, prompts of 64-512 tokens, 128-256 new tokens each (uniform,
fixed seed), EOS ignored so every request produces exactly its length.

  engine        mind_jax Engine, continuous batching (slots, steps per call set below)
  static        on a second workload whose output lengths spread over 16-512 tokens, the same
                engine fed in waves of 16 requests (each wave runs until its longest request
                ends), against continuous batching with the same 16 slots
  transformers  LlamaForCausalLM.generate(do_sample=False) on the whole batch at once,
                left-padded, KV cache on, max_new_tokens = the longest request; only the
                tokens requests asked for count as output

Every timing includes prefill; compilation is done first (Engine.warmup()).

  python benchmarks/generate_cpu.py --out bench_out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

CONFIG = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
              num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
              rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def workload(n, seed=0):
  rs = np.random.RandomState(seed)
  prompts = [rs.randint(0, CONFIG["vocab_size"], rs.randint(64, 513)).tolist() for _ in range(n)]
  new_tokens = rs.randint(128, 257, n).tolist()
  return prompts, new_tokens


def wide_workload(n, seed=1):
  """Output lengths spread log-uniformly over 16-512 tokens: where static batching wastes most."""
  rs = np.random.RandomState(seed)
  prompts = [rs.randint(0, CONFIG["vocab_size"], rs.randint(64, 257)).tolist() for _ in range(n)]
  new_tokens = np.exp(rs.uniform(np.log(16), np.log(512), n)).astype(int).tolist()
  return prompts, new_tokens


def run_engine(model, prompts, new_tokens, slots, steps, waves=False):
  from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams
  engine = Engine(model, None, EngineConfig(slots=slots, max_len=768, steps_per_call=steps))
  requests = [Request(i, p, SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True))
              for i, (p, n) in enumerate(zip(prompts, new_tokens))]
  engine.warmup()  # compile every prefill bucket and attention window first
  start = time.perf_counter()
  if waves:
    results = []
    for i in range(0, len(requests), slots):
      wave = requests[i:i + slots]
      # Static batching: the wave holds its slots until its longest request is done.
      longest = max(r.sampling.max_new_tokens for r in wave)
      padded = [Request(r.id, r.prompt_ids, SamplingParams(max_new_tokens=longest,
                                                            temperature=0.0, ignore_eos=True))
                for r in wave]
      results += [r.token_ids[:req.sampling.max_new_tokens]
                  for r, req in zip(engine.generate_all(padded), wave)]
  else:
    results = [r.token_ids for r in engine.generate_all(requests)]
  seconds = time.perf_counter() - start
  return results, seconds


def run_transformers(hf_model, prompts, new_tokens):
  import torch
  width = max(map(len, prompts))
  ids = torch.zeros((len(prompts), width), dtype=torch.long)
  mask = torch.zeros_like(ids)
  for i, p in enumerate(prompts):
    ids[i, width - len(p):] = torch.tensor(p)
    mask[i, width - len(p):] = 1
  start = time.perf_counter()
  with torch.no_grad():
    out = hf_model.generate(ids, attention_mask=mask, max_new_tokens=max(new_tokens),
                            min_new_tokens=max(new_tokens), do_sample=False, eos_token_id=None,
                            pad_token_id=0)
  seconds = time.perf_counter() - start
  return [out[i, width:width + n].tolist() for i, n in enumerate(new_tokens)], seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--requests", type=int, default=64)
  parser.add_argument("--slots", type=int, default=64)
  parser.add_argument("--steps-per-call", type=int, default=16)
  parser.add_argument("--skip-transformers", action="store_true")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  import jax
  import torch
  import transformers
  import mind_jax
  torch.manual_seed(0)
  hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).eval()
  path = tempfile.mkdtemp(prefix="gen_bench_")
  hf_model.save_pretrained(path)
  model, _ = mind_jax.load_pretrained(path, dtype="float32", progress=False)
  params = model.config.num_params()
  prompts, new_tokens = workload(args.requests)
  useful = sum(new_tokens)
  print(f"model: {params / 1e6:.1f}M parameters; {len(prompts)} requests, "
        f"{sum(map(len, prompts))} prompt tokens, {useful} output tokens")

  summary = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
             "params": params, "requests": len(prompts), "output_tokens": useful,
             "prompt_tokens": sum(map(len, prompts)), "slots": args.slots,
             "steps_per_call": args.steps_per_call}
  engine_out, t_engine = run_engine(model, prompts, new_tokens, args.slots, args.steps_per_call)
  summary["engine_seconds"] = t_engine
  summary["engine_tokens_per_s"] = useful / t_engine
  print(f"engine       {t_engine:7.1f} s  {useful / t_engine:8.1f} output tok/s")
  static_slots = 16
  wide_prompts, wide_new = wide_workload(args.requests)
  static_out, t_static = run_engine(model, wide_prompts, wide_new, static_slots,
                                    args.steps_per_call, waves=True)
  continuous_out, t_cont = run_engine(model, wide_prompts, wide_new, static_slots,
                                      args.steps_per_call)
  assert static_out == continuous_out, "engine outputs differ between schedules"
  summary.update(wide_output_tokens=sum(wide_new), static_slots=static_slots,
                 static_seconds=t_static, continuous_seconds=t_cont,
                 continuous_over_static=t_static / t_cont)
  print(f"wide outputs (16-512 tokens), {static_slots} slots: static {t_static:.1f} s, "
        f"continuous {t_cont:.1f} s -> continuous is {t_static / t_cont:.2f}x faster")
  if not args.skip_transformers:
    hf_out, t_hf = run_transformers(hf_model, prompts, new_tokens)
    agree = np.mean([a == b for a, b in zip(hf_out, engine_out)])
    summary.update(transformers_seconds=t_hf, transformers_tokens_per_s=useful / t_hf,
                   transformers_raw_tokens_per_s=len(prompts) * max(new_tokens) / t_hf,
                   speedup_vs_transformers=t_hf / t_engine,
                   identical_outputs_share=float(agree))
    print(f"transformers {t_hf:7.1f} s  {useful / t_hf:8.1f} output tok/s "
          f"({len(prompts) * max(new_tokens) / t_hf:.1f} tok/s counting padding steps)")
    print(f"speedup: {t_hf / t_engine:.2f}x; identical greedy outputs: {agree:.0%}")
  summary.update(jax=jax.__version__, torch=torch.__version__,
                 transformers=transformers.__version__)
  with open(os.path.join(args.out, "generate_cpu.json"), "w") as f:
    json.dump(summary, f, indent=2)


if __name__ == "__main__":
  main()
