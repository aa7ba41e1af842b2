"""What int8 weights (model.quantize=int8) cost in quality, on real trained weights.

Model: stories260K, llama2.c's TinyStories model (260K parameters, ../shared/reference),
read into an HF directory by `mind_jax.testing.llama2c_checkpoint` (checked against run.c's
forward in tests/test_quantize.py). The model file carries no tokenizer and no TinyStories
text is on this machine, so the held-out text is the float model's own: 32 stories of 256
tokens sampled from it (temperature 1, fixed seed) after BOS; text in the distribution the
model was trained on, which neither model has seen token for token.

Reported, float32 against int8 weights:
  nll / perplexity   mean per-token negative log-likelihood of the 32 x 255 next tokens
  greedy agreement   32 prompts (each story's first 16 tokens), 256 greedy tokens each from
                     the engine: tokens equal position by position, and the mean length of
                     the common prefix before the first difference

  python benchmarks/quantize_quality.py --out bench_out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(ROOT, "..", "shared", "reference", "stories260K.bin")


def token_nll(model, tokens: np.ndarray) -> np.ndarray:
  """Negative log-likelihood of every next token `[B, T-1]`."""
  logits = np.asarray(model(tokens), np.float64)
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  return -np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--stories", type=int, default=32)
  parser.add_argument("--length", type=int, default=256)
  parser.add_argument("--prompt", type=int, default=16)
  args = parser.parse_args()
  import jax

  from mind_jax.ckpts import load_pretrained
  from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams
  from mind_jax.testing import llama2c_checkpoint
  path = llama2c_checkpoint(STORIES, tempfile.mkdtemp(prefix="stories260K_"))
  models = {q or "float32": load_pretrained(path, quantize=q, progress=False)[0]
            for q in (None, "int8")}
  config = EngineConfig(slots=args.stories, max_len=512, steps_per_call=16)
  engines = {name: Engine(m, None, config) for name, m in models.items()}
  # Held-out text: the float model's own samples after BOS (token 1).
  sampled = engines["float32"].generate_all(
      Request(i, [1], SamplingParams(max_new_tokens=args.length - 1, temperature=1.0,
                                     ignore_eos=True)) for i in range(args.stories))
  text = np.asarray([[1] + r.token_ids for r in sampled], np.int32)
  nll = {name: token_nll(m, text) for name, m in models.items()}
  greedy = {name: [r.token_ids for r in engine.generate_all(
      Request(i, text[i, :args.prompt].tolist(),
              SamplingParams(max_new_tokens=args.length, temperature=0.0, ignore_eos=True))
      for i in range(args.stories))] for name, engine in engines.items()}
  a, b = np.asarray(greedy["float32"]), np.asarray(greedy["int8"])
  common = [int(np.argmin(np.append(x == y, False))) for x, y in zip(a, b)]
  mean = {name: float(v.mean()) for name, v in nll.items()}
  result = {
      "machine": f"{platform.machine()}, {os.cpu_count()} cores", "jax": jax.__version__,
      "model": "stories260K (llama2.c)", "stories": args.stories, "tokens_scored":
      int(nll["float32"].size),
      "nll": mean, "perplexity": {k: float(np.exp(v)) for k, v in mean.items()},
      "perplexity_change": float(np.exp(mean["int8"] - mean["float32"]) - 1),
      "greedy_tokens_equal": float((a == b).mean()),
      "greedy_common_prefix_mean": float(np.mean(common)),
      "greedy_identical_sequences": int(sum(c == args.length for c in common)),
  }
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "quantize_quality.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
