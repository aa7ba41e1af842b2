"""The paper-scale cost sheet: MIND's two TPU stages planned by `python -m mind_jax.plan` from the
shipped configs, on v5e, v5p and v6e.

- generation: ~64B output tokens (the paper's corpus of conversations) with Llama-3.1-70B-
  Instruct, one engine per host;
- continued pretraining: 50B tokens of a Llama-2-7B-shaped model (the paper's run).

Every figure is the plan's: per-chip HBM from the TPU compiler, speed predicted at the stated
MFU / MBU from the compiler's FLOPs and bytes (generation) or the model's FLOPs (training),
chip-hours for the budget. Generation rows also give the sequences decoding at once: what the
paged KV pool holds at the paper's lengths (prompts of a 500-token chunk shared by its seven
styles, conversations of the paper's per-style means), up to the config's slots. Needs the
TPU compiler (pip install 'mind_jax[tpu]'); about half an hour on 2 CPU cores.

  python benchmarks/cost_sheet.py --out bench_out [--price-v4 P --price-v5e P --price-v5p P --price-v6e P]
  python benchmarks/cost_sheet.py --out bench_out --only v5p-32 v6e-8      # some rows only
  python benchmarks/cost_sheet.py --out bench_out --stage int8             # the int8 rows
  python benchmarks/cost_sheet.py --out bench_out --stage kv8              # int8 weights + KV
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

ROOT = pathlib.Path(__file__).resolve().parents[1]
GENERATE_TOKENS, TRAIN_TOKENS = 64e9, 50e9

# (stage, generation, config, topology, preset, overrides)
ROWS = [
    ("generate 70B", "v6e", "configs/generate-llama3.1-70b-pod.yaml", "v6e-8", "llama3.1-70b", []),
    ("generate 70B", "v5p", "tpu/configs/generate-v5p-32.yaml", "v5p-32", "llama3.1-70b", []),
    ("generate 70B", "v5p", "tpu/configs/generate-v5p-32.yaml", "v5p-8", "llama3.1-70b", []),
    ("generate 70B", "v4", "tpu/configs/generate-v4-32.yaml", "v4-32", "llama3.1-70b", []),
    # 70B on v5e: one engine over the slice, weights over fsdp x tensor (8 kv heads stop tensor
    # parallelism at 8 chips, 16.4 GiB of weights each).
    ("generate 70B", "v5e", "tpu/configs/generate-v5p-32.yaml", "v5e-16", "llama3.1-70b",
     ["engine.hosts=-1", "mesh.axes={data: 1, fsdp: 2, tensor: 8}", "mesh.rules=train",
      "engine.slots=32"]),
    ("generate 70B", "v5e", "tpu/configs/generate-v5e-32-global.yaml", "v5e-32", "llama3.1-70b", []),
    # int8 projection weights (model.quantize=int8): the targets, and the smallest slices where
    # the 70B generator then fits.
    ("generate 70B int8", "v6e", "configs/generate-llama3.1-70b-pod.yaml", "v6e-8",
     "llama3.1-70b", ["model.quantize=int8"]),
    ("generate 70B int8", "v5p", "tpu/configs/generate-v5p-32.yaml", "v5p-32", "llama3.1-70b",
     ["model.quantize=int8"]),
    ("generate 70B int8", "v6e", "configs/generate-llama3.1-70b-pod.yaml", "v6e-4",
     "llama3.1-70b", ["model.quantize=int8", "mesh.axes={data: 1, tensor: 4}"]),
    # int8 weights and an int8 KV cache (engine.kv_dtype=int8): twice the tokens per pool byte.
    ("generate 70B int8+kv8", "v6e", "configs/generate-llama3.1-70b-pod.yaml", "v6e-8",
     "llama3.1-70b", ["model.quantize=int8", "engine.kv_dtype=int8"]),
    ("generate 70B int8+kv8", "v5p", "tpu/configs/generate-v5p-32.yaml", "v5p-32",
     "llama3.1-70b", ["model.quantize=int8", "engine.kv_dtype=int8"]),
    ("generate 70B int8+kv8", "v6e", "configs/generate-llama3.1-70b-pod.yaml", "v6e-4",
     "llama3.1-70b", ["model.quantize=int8", "engine.kv_dtype=int8",
                      "mesh.axes={data: 1, tensor: 4}"]),
    ("train 7B", "v6e", "configs/train-llama2-7b.yaml", "v6e-256", "llama2-7b", ["microbatches=6"]),
    ("train 7B", "v5p", "configs/train-llama2-7b.yaml", "v5p-128", "llama2-7b", []),
    ("train 7B", "v5e", "tpu/configs/train-v5e-256.yaml", "v5e-256", "llama2-7b", []),
]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True)
  parser.add_argument("--only", nargs="+", metavar="SLICE",
                      help="plan only the rows of these slices (e.g. v5p-32 v6e-8)")
  parser.add_argument("--stage", help="plan only the rows whose stage contains this (e.g. int8)")
  for gen in ("v4", "v5e", "v5p", "v6e"):
    parser.add_argument(f"--price-{gen}", type=float, help=f"price per {gen} chip-hour")
  args = parser.parse_args()
  from mind_jax.plan import plan
  results = []
  for stage, gen, config, topology, preset, overrides in ROWS:
    if (args.only and topology not in args.only) or (args.stage and args.stage not in stage):
      continue
    tokens = GENERATE_TOKENS if stage.startswith("generate") else TRAIN_TOKENS
    ns = argparse.Namespace(config=str(ROOT / config), overrides=overrides, topology=topology,
                            num_slices=1, job=None, preset=preset, tokens=tokens, mfu=0.45,
                            mbu=0.6, price=getattr(args, f"price_{gen}"), exact_cost=True,
                            compare_modes=False)  # each mode is a row of its own here
    result = plan(ns)
    result["stage"], result["config"] = stage, config
    results.append(result)
    print(_row(result, overrides), flush=True)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "cost_sheet.json"), "w") as f:
    json.dump(results, f, indent=2, default=str)


def _row(r: dict, overrides) -> str:
  gib = r["memory"]["total_bytes_per_chip"]
  gib = f"{gib / 2 ** 30:.1f}" if gib else "?"
  cap = r["memory"]["capacity_bytes_per_chip"] / 2 ** 30
  config = r["config"] + (f" {' '.join(overrides)}" if overrides else "")
  if not r["fits"]:
    return f"| {r['stage']} | {r['topology']} | `{config}` | {gib} of {cap:.0f}: does not fit | | | | |"
  s, b = r["step"], r["budget"]
  cost = f"{b['cost']:,.0f}" if "cost" in b else ""
  sequences = f"{s['sequences_at_once']:,}" if "sequences_at_once" in s else ""
  return (f"| {r['stage']} | {r['topology']} | `{config}` | {gib} of {cap:.0f} | {sequences} | "
          f"{s['predicted_tokens_per_second_per_chip']:,.0f} | {b['chip_hours']:,.0f} | {cost} |")


if __name__ == "__main__":
  main()
