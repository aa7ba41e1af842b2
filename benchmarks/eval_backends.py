"""Evaluation throughput: the harness on mind_jax's JAX backend against its own HF backend.

One run, same model, same tasks, same batch size, offline: the 56.4M-parameter Llama of
generate_cpu.py (random fp32 weights, the byte-level tokenizer), a local multiple-choice task
(200 questions x 4 choices: 800 log-likelihood requests) and the bundled CHAMP task (20
problems, 1-shot, up to 64 generated tokens each). Wall time of `python -m mind_jax.evaluate`'s
library call per backend, model load included; samples/s = documents / seconds.

  python benchmarks/eval_backends.py --out bench_out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from generate_cpu import CONFIG  # the same model (the script's folder is on sys.path)

def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_out")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[name] = "1"
  import torch
  import transformers

  from mind_jax.config import load_config
  from mind_jax.evaluation import EvaluateConfig, evaluate
  from mind_jax.testing import multiple_choice_task
  from mind_jax.text import byte_tokenizer
  work = tempfile.mkdtemp(prefix="eval_bench_")
  os.environ["HF_DATASETS_CACHE"] = os.path.join(work, "hf_cache")
  model_dir, tasks = os.path.join(work, "model"), os.path.join(work, "tasks")
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(transformers.LlamaConfig(
      **{**CONFIG, "bos_token_id": 256, "eos_token_id": 257})).save_pretrained(model_dir)
  byte_tokenizer().save(model_dir)
  os.makedirs(tasks)
  multiple_choice_task(tasks, "bench_mc", questions=200)
  results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores"}
  for backend in ("hf", "jax"):
    for task, extra in (("bench_mc", []), ("champ", ["limit=20", "num_fewshot=1"])):
      cfg = load_config(EvaluateConfig, None, [
          f"model={model_dir}", f"out={os.path.join(work, backend + task)}", f"backend={backend}",
          f"tasks=[{task}]", f"tasks_dir=[{json.dumps(tasks)}]", "batch_size=16", *extra])
      start = time.perf_counter()
      out = evaluate(cfg)
      seconds = time.perf_counter() - start
      documents = out["n-samples"][task]["effective"]
      results[f"{backend}_{task}"] = {"seconds": seconds, "documents": documents,
                                      "samples_per_s": documents / seconds,
                                      "scores": out["results"][task]}
  for task in ("bench_mc", "champ"):
    results[f"speedup_{task}"] = results[f"hf_{task}"]["seconds"] / results[f"jax_{task}"]["seconds"]
  print(json.dumps(results, indent=1, default=str))
  with open(os.path.join(args.out, "eval_backends.json"), "w") as f:
    json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
  main()
