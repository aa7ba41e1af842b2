"""What the MIND job costs beyond decoding: the pipeline against the engine alone.

Both decode the same requests (every (chunk, style) unit of the first N CHAMP
problems) with the same ~56M-parameter random Llama, engine settings and seed,
so they produce the same tokens. The pipeline also reads and chunks the
corpus (twice: once to plan, once to feed), formats prompts and writes the
JSONL part files. Both timings start from a loaded model and include
compilation (the same prefill buckets and windows on both sides).

  python benchmarks/pipeline_overhead.py --out bench_out
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

CONFIG = dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
              num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
              rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="bench_out")
  parser.add_argument("--documents", type=int, default=8)
  parser.add_argument("--max-new-tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  import torch
  import transformers
  from mind_jax import config
  from mind_jax.data import ReadStats
  from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams
  from mind_jax.mind import GenerateConfig, load_styles, plan_units, run
  from mind_jax.ckpts import load_model
  from mind_jax.testing import byte_tokenizer

  ckpt = tempfile.mkdtemp(prefix="pipe_bench_")
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).save_pretrained(ckpt)
  byte_tokenizer().save(ckpt)
  out_dir = tempfile.mkdtemp(prefix="pipe_out_")
  overrides = [f"model.path={ckpt}", "model.dtype=float32", f"input.limit={args.documents}",
               f"sampling.max_new_tokens={args.max_new_tokens}", "sampling.context_limit=2048",
               "engine.slots=16", "engine.steps_per_call=16", f"output.dir={out_dir}"]
  cfg = config.load_config(GenerateConfig, None, overrides)
  mesh = cfg.mesh.build()
  model, tokenizer, _ = load_model(cfg.model, mesh, cfg.mesh.rules)
  styles = list(load_styles().values())
  units = list(plan_units(cfg, tokenizer, styles, ReadStats()))
  sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.9)
  engine_config = EngineConfig(slots=16, max_len=2048, steps_per_call=16, seed=cfg.seed)

  engine_times, pipeline_times, tokens = [], [], 0
  for _ in range(args.repeats):
    start = time.perf_counter()
    engine = Engine(model, tokenizer, engine_config, mesh=mesh)
    results = engine.generate_all(Request(u.id, u.prompt_ids, sampling) for u in units)
    engine_times.append(time.perf_counter() - start)
    tokens = sum(r.output_tokens for r in results)

    shutil.rmtree(out_dir)
    start = time.perf_counter()
    # Handing run() the loaded model makes both sides start equal.
    summary = run(cfg, loaded=Loaded(model, tokenizer, cfg.model.path, mesh))
    pipeline_times.append(time.perf_counter() - start)
    assert summary["output_tokens"] == tokens, "pipeline and engine decoded different tokens"

  t_engine, t_pipe = min(engine_times), min(pipeline_times)
  result = {
      "machine": f"{platform.machine()}, {os.cpu_count()} cores", "documents": args.documents,
      "units": len(units), "output_tokens": tokens, "engine_seconds": t_engine,
      "pipeline_seconds": t_pipe, "engine_tokens_per_s": tokens / t_engine,
      "pipeline_tokens_per_s": tokens / t_pipe, "overhead": t_pipe / t_engine - 1,
  }
  print(json.dumps(result, indent=2))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "pipeline_overhead.json"), "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
