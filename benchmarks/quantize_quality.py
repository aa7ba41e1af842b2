"""What int8 weights (model.quantize=int8) and an int8 KV cache (engine.kv_dtype=int8) cost in
quality, on real trained weights.

Model: stories260K, llama2.c's TinyStories model (260K parameters, ../shared/reference),
read into an HF directory by `mind_jax.testing.llama2c_checkpoint` (checked against run.c's
forward in tests/test_quantize.py). The model file carries no tokenizer and no TinyStories
text is on this machine, so the held-out text is the float model's own: 32 stories of 256
tokens sampled from it (temperature 1, fixed seed) after BOS; text in the distribution the
model was trained on, which neither model has seen token for token.

Reported for float32, int8 weights (rounded to nearest, and chosen by GPTQ on 64 other
stories of the float model: `mind_jax.convert quantize=int8 calibration=...`), an int8 KV
cache, and both, each against float32:
  nll / perplexity   mean per-token negative log-likelihood of the 32 x 255 next tokens (with
                     an int8 cache: the text prefilled into it, so every position attends
                     over int8 keys and values, as decoding would)
  greedy agreement   32 prompts (each story's first 16 tokens), 256 greedy tokens each from
                     the engine: tokens equal position by position, and the mean length of
                     the common prefix before the first difference

  python benchmarks/quantize_quality.py --out bench_out
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(ROOT, "..", "shared", "reference", "stories260K.bin")


# name: (weights, engine.kv_dtype); weights "gptq" are int8 with values chosen by GPTQ
# (`mind_jax.nn.calibrate_int8`) on the float model's samples, not those scored.
VARIANTS = {"float32": (None, None), "int8": ("int8", None), "int8-gptq": ("gptq", None),
            "kv8": (None, "int8"), "int8+kv8": ("int8", "int8"),
            "int8-gptq+kv8": ("gptq", "int8")}


def token_nll(model, tokens: np.ndarray, kv_dtype=None) -> np.ndarray:
  """Negative log-likelihood of every next token `[B, T-1]`."""
  from mind_jax.nn import KVCache
  if kv_dtype is None:
    logits = np.asarray(model(tokens), np.float64)
  else:
    cache = KVCache.create(model.config, tokens.shape[0], tokens.shape[1], dtype=kv_dtype)
    logits = np.asarray(model(tokens, cache=cache)[0], np.float64)
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  return -np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--stories", type=int, default=32)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--prompt", type=int, default=16)
  parser.add_argument("--calibration", type=int, default=64,
                      help="stories the GPTQ variant is calibrated on")
  args = parser.parse_args()
  import jax

  from mind_jax.ckpts import load_pretrained
  from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams
  from mind_jax.nn import calibrate_int8
  from mind_jax.testing import llama2c_checkpoint
  path = llama2c_checkpoint(STORIES, tempfile.mkdtemp(prefix="stories260K_"))
  models = {q: load_pretrained(path, quantize=q, scan_layers=False, progress=False)[0]
            for q in (None, "int8")}
  config = EngineConfig(slots=args.stories, max_len=512, steps_per_call=16)

  def samples(ids):  # the float model's own stories after BOS (token 1), temperature 1
    return np.asarray([[1] + r.token_ids for r in Engine(models[None], None, config).generate_all(
        Request(i, [1], SamplingParams(max_new_tokens=args.length - 1, temperature=1.0,
                                       ignore_eos=True)) for i in ids)], np.int32)

  text = samples(range(args.stories))  # held out
  calibration = samples([f"calibration-{i}" for i in range(args.calibration)])
  models["gptq"] = calibrate_int8(load_pretrained(path, scan_layers=False, progress=False)[0],
                                  calibration)
  engines = {name: Engine(models[q], None, dataclasses.replace(config, cache_dtype=kv))
             for name, (q, kv) in VARIANTS.items()}
  nll = {name: token_nll(models[q], text, kv) for name, (q, kv) in VARIANTS.items()}
  greedy = {name: np.asarray([r.token_ids for r in engine.generate_all(
      Request(i, text[i, :args.prompt].tolist(),
              SamplingParams(max_new_tokens=args.length, temperature=0.0, ignore_eos=True))
      for i in range(args.stories))]) for name, engine in engines.items()}
  mean = {name: float(v.mean()) for name, v in nll.items()}
  result = {
      "machine": f"{platform.machine()}, {os.cpu_count()} cores", "jax": jax.__version__,
      "model": "stories260K (llama2.c)", "stories": args.stories,
      "calibration_stories": args.calibration, "tokens_scored":
      int(nll["float32"].size), "variants": {k: {"weights": q, "engine.kv_dtype": kv}
                                             for k, (q, kv) in VARIANTS.items()},
      "nll": mean, "perplexity": {k: float(np.exp(v)) for k, v in mean.items()},
      "perplexity_change": {k: float(np.exp(v - mean["float32"]) - 1) for k, v in mean.items()
                            if k != "float32"},
      "greedy": {k: _agreement(greedy["float32"], g, args.length) for k, g in greedy.items()
                 if k != "float32"},
  }
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "quantize_quality.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))


def _agreement(reference: np.ndarray, other: np.ndarray, length: int) -> dict:
  """Greedy tokens of `other` against `reference`, position by position and as common prefixes."""
  common = [int(np.argmin(np.append(x == y, False))) for x, y in zip(reference, other)]
  return {"tokens_equal": float((reference == other).mean()),
          "common_prefix_mean": float(np.mean(common)),
          "identical_sequences": int(sum(c == length for c in common))}


if __name__ == "__main__":
  main()
