"""The peer of decode_gpu.py: Hugging Face transformers (PyTorch) decoding the same model.

Same shapes as decode_gpu.py (a Llama-3.1-8B-shaped model, random bf16 weights made on the
device, every sequence a 512-token prompt, greedy, no stop), through `model.generate` with a
static KV cache, which transformers compiles (torch.compile, CUDA graphs) on its first call:
HF's fastest documented decoding path. Time per decode step = (generate of 1 + N tokens -
generate of 1 token) / N, each after an untimed warm-up of the same call, so prefill and
compilation are excluded as in decode_gpu.py. Results go to OUT/decode_gpu_hf.json after each
batch size.

  python benchmarks/decode_gpu_hf.py --out bench_out                    # on the GPU host
  python benchmarks/decode_gpu_hf.py --preset tiny --slots 1 2 --new 8  # a quick check on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import transformers

import mind_jax


def timed_generate(model, prompts, new_tokens: int, cache: str) -> float:
  kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                cache_implementation=cache, pad_token_id=0)
  model.generate(prompts, **kwargs)  # warm-up: compiles for this batch and length
  sync()
  start = time.perf_counter()
  model.generate(prompts, **kwargs)
  sync()
  return time.perf_counter() - start


def sync():
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--preset", default="llama3.1-8b")
  parser.add_argument("--slots", type=int, nargs="+", default=[1, 64])
  parser.add_argument("--prompt-len", type=int, default=512)
  parser.add_argument("--new", type=int, default=64, help="timed decode steps")
  parser.add_argument("--cache", default="static", help="transformers' cache_implementation")
  args = parser.parse_args()
  device = "cuda" if torch.cuda.is_available() else "cpu"
  name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
  print(f"{name}, torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
  hf = mind_jax.preset(args.preset).to_hf_dict()
  config = transformers.LlamaConfig(**hf)
  torch.manual_seed(0)
  with torch.device(device):
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
  rows = []
  os.makedirs(args.out, exist_ok=True)
  for slots in args.slots:
    prompts = torch.ones((slots, args.prompt_len), dtype=torch.long, device=device)
    with torch.inference_mode():
      prefill = timed_generate(model, prompts, 1, args.cache)
      whole = timed_generate(model, prompts, 1 + args.new, args.cache)
    step = (whole - prefill) / args.new
    rows.append({"slots": slots, "step_ms": step * 1e3, "tokens_per_s": slots / step,
                 "prefill_s": prefill})
    print(f"{name}: {slots} slots, {step * 1e3:.2f} ms/step, {slots / step:.0f} tok/s "
          f"(prefill {prefill:.2f} s)", flush=True)
    with open(os.path.join(args.out, "decode_gpu_hf.json"), "w") as f:
      json.dump({"device": name, "torch": torch.__version__,
                 "transformers": transformers.__version__, "preset": args.preset,
                 "prompt_len": args.prompt_len, "cache": args.cache, "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
