"""Plans a generate or train job for a TPU slice on this machine, before renting the slice.

  python -m mind_jax.plan --config configs/train-llama3.1-8b.yaml --topology v5p-128 --preset llama3.1-8b
  python -m mind_jax.plan --config configs/generate-llama3.1-70b-pod.yaml --topology v6e-8 \
      --preset llama3.1-70b --tokens 64e9
  python -m mind_jax.plan --config configs/train-llama2-7b.yaml --topology v6e-256 --num-slices 2 \
      --preset llama2-7b --json
  python -m mind_jax.plan --config configs/recipe-mind-7b.yaml --job train --variant mind \
      --topology v5p-128 --preset llama2-7b
  python -m mind_jax.plan --topologies            # the known slices and their chips

It compiles the programs the job would run (the train step; or the engine's prefill and
decode) with the real TPU compiler, for the slice's devices, from abstract inputs: nothing is
allocated and no weights are read (only model.path's config.json, or --preset where the
checkpoint is not on this machine). It prints per-chip HBM (weights, optimizer state or KV
cache, activations and temporaries, total against the chip; if it does not fit, by how much
and which key to change), FLOPs and bytes per step from the compiler's cost analysis, a
predicted speed at the stated MFU / MBU, and chip-hours (and cost with --price) for the
budget: a train config's steps x batch tokens, or --tokens output tokens to generate. For a
generate job it also sets the KV pool's pages against the job's lengths (prompts from its
chunking, conversations from --records or the paper's per-style means): the sequences that
decode at once, the KV bytes they hold and read per chip, and the prefill that sharing a
chunk's prompt prefix across its styles saves.

Needs the TPU compiler: pip install 'mind_jax[tpu]'. Exit status: 0 fits, 1 does not fit,
2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mind_jax._errors import MindJaxError, run_cli
from mind_jax._progress import setup_logging

# Top-level keys only one of the two job configs has: how a config file says which job it is.
_TRAIN_KEYS = {"steps", "optimizer", "batch_size", "workdir", "data", "checkpoint", "export",
               "microbatches", "eval", "z_loss"}
_GENERATE_KEYS = {"input", "sampling", "engine", "chunking", "prompt", "output"}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m mind_jax.plan", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", help="a generate or train YAML config")
  parser.add_argument("overrides", nargs="*", metavar="key=value",
                      help="config overrides, as the job itself takes them")
  parser.add_argument("--topology", help="TPU slice as Cloud TPU names it: v4-8 ... v4-1024, "
                      "v5e-1 ... v5e-256, v5p-8 ... v5p-1024, v6e-1 ... v6e-256")
  parser.add_argument("--num-slices", type=int, default=1,
                      help="slices joined by the data-center network (train: the data axis "
                      "spans them; generate: one engine per host on each)")
  parser.add_argument("--job", choices=("train", "generate"),
                      help="which job the config is for (default: from its keys; a recipe "
                      "config needs it)")
  parser.add_argument("--variant", help="a recipe config: the variant whose generate or train "
                      "section is planned (default: the first variant)")
  parser.add_argument("--preset", help="the architecture to plan when model.path is not on this "
                      "machine (e.g. llama3.1-8b, llama3.1-70b, llama2-7b)")
  parser.add_argument("--tokens", type=float, help="the budget: output tokens to generate "
                      "(default 1e9), or training tokens (default steps x batch_size x seq_len)")
  parser.add_argument("--mfu", type=float, default=0.45,
                      help="assumed model FLOPs utilisation of training and prefill (default 0.45)")
  parser.add_argument("--mbu", type=float, default=0.6,
                      help="assumed HBM bandwidth utilisation of decoding (default 0.6)")
  parser.add_argument("--price", type=float, help="price per chip-hour, for a cost line")
  parser.add_argument("--records", metavar="DIR", help="generate: a previous run's output.dir; "
                      "its conversations' lengths size the KV pages and the prediction "
                      "(default: the paper's mean per style)")
  parser.add_argument("--no-exact-cost", dest="exact_cost", action="store_false",
                      help="skip the extra compile that exact FLOPs and bytes per step need "
                      "(train: layers unrolled; generate: a one-step decode); memory is unchanged")
  parser.add_argument("--cache", metavar="DIR", help="where compile results are remembered, "
                      "one small JSON per program, keyed by the program's text, the jax, jaxlib "
                      "and libtpu versions, XLA_FLAGS/LIBTPU_INIT_ARGS and the devices: an "
                      "unchanged program is not compiled again (default: "
                      "$MIND_JAX_PLAN_CACHE, else $XDG_CACHE_HOME/mind_jax/plan, else "
                      "~/.cache/mind_jax/plan)")
  parser.add_argument("--no-cache", dest="cache", action="store_const", const="",
                      help="compile every program, reading and writing no cache")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--topologies", action="store_true", help="list the known slices and exit")
  parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  return parser


def _is_recipe(path: str) -> bool:
  from mind_jax.config import _read_yaml
  return "variants" in _read_yaml(path) or {"generate", "train"} <= set(_read_yaml(path))


def job_kind(path: str, given: str | None) -> str:
  if given:
    return given
  from mind_jax.config import _read_yaml
  if _is_recipe(path):
    raise MindJaxError(f"{path}: a recipe config; pass --job generate or --job train (and "
                       "--variant NAME) to plan one of its stages")
  keys = set(_read_yaml(path))
  train, generate = keys & _TRAIN_KEYS, keys & _GENERATE_KEYS
  if bool(train) == bool(generate):
    raise MindJaxError(f"{path}: cannot tell a train config from a generate config by its keys; "
                       "pass --job train or --job generate")
  return "train" if train else "generate"


def load_job(path: str, overrides, job: str, preset: str | None, devices,
             variant: str | None = None):
  """(config, architecture) of the job; the architecture from model.path's config.json, or
  `preset` where model.path is not on this machine, with attention resolved for `devices`
  (the slice's: model.attention=auto plans with the TPU kernels). A recipe config gives the
  `job` section of `variant` (default: its first)."""
  from mind_jax import config as config_lib
  from mind_jax.ckpts import architecture
  if _is_recipe(path):
    from mind_jax.experiment import RecipeConfig, stage_config
    recipe = config_lib.load_config(RecipeConfig, path, list(overrides))
    chosen = [v for v in recipe.variants if v.name == (variant or recipe.variants[0].name)]
    if not chosen:
      raise MindJaxError(f"--variant {variant}: not a variant of {path} "
                         f"({', '.join(v.name for v in recipe.variants)})")
    cfg = stage_config(recipe, job, chosen[0])
  else:
    if variant:
      raise MindJaxError(f"--variant: {path} is not a recipe config")
    if job == "train":
      from mind_jax.training import TrainConfig as schema
    else:
      from mind_jax.mind import GenerateConfig as schema
    cfg = config_lib.load_config(schema, path, list(overrides))
  section = cfg.model
  if section.path and not os.path.isdir(section.path):
    if not preset:
      raise MindJaxError(f"model.path={section.path}: not on this machine; pass --preset NAME "
                         "(the checkpoint's architecture) to plan without it")
    section = section.model_copy(update={"path": None, "preset": preset})
  return cfg, architecture(section, devices)


def plan(args) -> dict:
  from mind_jax.planning import (Assumptions, compile_cache, default_cache_directory, devices,
                                 parse_topology)
  if not args.config:
    raise MindJaxError("--config: plan needs the job's config (a generate or train YAML)")
  if not args.topology:
    raise MindJaxError("--topology: name the TPU slice, e.g. --topology v5p-128 "
                       "(--topologies lists them)")
  if args.num_slices < 1:
    raise MindJaxError(f"--num-slices {args.num_slices}: must be at least 1")
  tpu_slice = parse_topology(args.topology)
  job = job_kind(args.config, args.job)
  cfg, config = load_job(args.config, args.overrides, job, args.preset, devices(tpu_slice),
                         getattr(args, "variant", None))
  assumptions = Assumptions(mfu=args.mfu, mbu=args.mbu, price=args.price)
  cache = getattr(args, "cache", None)
  with compile_cache(default_cache_directory() if cache is None else cache):
    result = _plan_job(args, job, cfg, config, tpu_slice, assumptions)
  result["config"] = args.config
  return result


def _plan_job(args, job, cfg, config, tpu_slice, assumptions) -> dict:
  from mind_jax.planning import plan_generation, plan_training
  if job == "train":
    return plan_training(cfg, config, tpu_slice, args.num_slices, assumptions, args.tokens,
                         exact_cost=getattr(args, "exact_cost", True))
  return plan_generation(cfg, config, tpu_slice, args.num_slices, assumptions, args.tokens,
                         exact_cost=getattr(args, "exact_cost", True),
                         compare_modes=getattr(args, "compare_modes", True),
                         records=getattr(args, "records", None))


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  setup_logging(args.verbose)
  # Plan compiles for a TPU it does not have: JAX's own devices stay the CPU (also on a TPU
  # VM, where the chips may be busy with a job), and the TPU compiler may be loaded beside
  # another process's.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

  def job():
    from mind_jax.planning import format_plan, format_topologies
    if args.topologies:
      print(format_topologies())
      return 0
    result = plan(args)
    print(json.dumps(result, indent=2, default=str) if args.json else format_plan(result))
    return 0 if result["fits"] else 1
  return run_cli(job)


if __name__ == "__main__":
  sys.exit(main())
