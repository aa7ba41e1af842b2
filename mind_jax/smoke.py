"""Smoke check of the whole model stack on a tiny random checkpoint.

Builds a small Llama with random weights (fixed seed) and the byte-level
tokenizer, exports it as a Hugging Face directory, loads it back, decodes a
few greedy tokens with the engine (KV cache, decode slots) and checks that
each is the argmax of a full forward pass over the same sequence. The weights are random, so the text is gibberish by design: this
shows the machinery works, not what a real model says.

  python -m mind_jax.smoke
  python -m mind_jax.smoke max_new_tokens=32 model.dtype=bfloat16 mesh.axes.tensor=2
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pydantic

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError, run_cli
from mind_jax._progress import setup_logging
from mind_jax.ckpts import load_model, save_pretrained
from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams

log = logging.getLogger("mind_jax.smoke")


class SmokeConfig(config_lib.Section):
  model: config_lib.ModelSection = pydantic.Field(
      default_factory=lambda: config_lib.ModelSection(preset="tiny"))
  mesh: config_lib.MeshSection = pydantic.Field(default_factory=config_lib.MeshSection)
  runtime: config_lib.RuntimeSection = pydantic.Field(default_factory=config_lib.RuntimeSection)
  seed: int = pydantic.Field(0, description="seed of the random weights")
  prompt: str = pydantic.Field("The sum of the first n odd numbers is",
                               description="text to continue")
  max_new_tokens: int = pydantic.Field(16, ge=1, description="tokens to generate")
  workdir: str | None = pydantic.Field(
      None, description="where to write the checkpoint (default: a temporary directory)")


def run(cfg: SmokeConfig) -> dict:
  """Runs the smoke check; returns what it printed as data (for tests)."""
  if cfg.model.path:
    raise MindJaxError(f"model.path={cfg.model.path}: the smoke check builds its own random "
                       "checkpoint from model.preset; to run a checkpoint, use python -m "
                       "mind_jax.sample --model DIR")
  cfg.model.check_inference()
  cfg.runtime.apply()
  if cfg.workdir:  # before anything is built: the export below never writes over a directory
    from mind_jax._outdir import check_output_dir
    check_output_dir(cfg.workdir, "workdir")
    if os.path.isdir(cfg.workdir) and os.listdir(cfg.workdir):
      raise MindJaxError(f"workdir={cfg.workdir}: not empty; give a new or empty directory for "
                         "the smoke checkpoint")
  mesh = cfg.mesh.build()
  log.info("devices: %d x %s; mesh %s", jax.device_count(), jax.devices()[0].platform,
           dict(mesh.shape))
  workdir = cfg.workdir or tempfile.mkdtemp(prefix="mind_jax_smoke_")
  model, tokenizer, _ = load_model(cfg.model, seed=cfg.seed)
  log.info("building a SMOKE-TEST model: %s preset, random weights (seed %d), %.2fM parameters",
           cfg.model.preset or "tiny", cfg.seed, model.config.num_params() / 1e6)
  save_pretrained(model, workdir, tokenizer, progress=False)
  # Reloaded through the same loader as every job, with every model key of the config.
  model, tokenizer, _ = load_model(cfg.model.model_copy(update={"path": workdir}), mesh,
                                   cfg.mesh.rules, progress=False)
  prompt = tokenizer.encode(cfg.prompt, add_bos=True)
  engine = Engine(model, tokenizer, EngineConfig(slots=mesh.shape["data"], max_len=256,
                                                 seed=cfg.seed), mesh=mesh)
  [out] = engine.generate_all([Request("smoke", prompt, SamplingParams(
      max_new_tokens=cfg.max_new_tokens, temperature=0.0))])
  full = np.asarray(model(jnp.asarray([prompt + out.token_ids])), np.float32)[0]
  teacher_forced = full[len(prompt) - 1: len(prompt) - 1 + out.output_tokens].argmax(-1).tolist()
  if teacher_forced != out.token_ids:
    raise MindJaxError(f"cached decoding {out.token_ids} differs from the full forward's "
                       f"argmax {teacher_forced}")
  result = {"checkpoint": workdir, "prompt_ids": prompt, "token_ids": out.token_ids,
            "text": out.text, "finish_reason": out.finish_reason}
  print(f"checkpoint  : {workdir} (random smoke-test weights)")
  print(f"prompt ids  : {prompt}")
  print(f"greedy ids  : {out.token_ids} ({out.finish_reason})")
  print(f"greedy text : {out.text!r}")
  print("each token is the full forward's argmax: KV-cache decoding checks out")
  return result


def main(argv=None) -> int:
  parser = config_lib.argument_parser("python -m mind_jax.smoke", __doc__, SmokeConfig)
  args = parser.parse_args(argv)
  setup_logging(args.verbose)
  return run_cli(lambda: run(config_lib.load_config(SmokeConfig, args.config, args.overrides)))


if __name__ == "__main__":
  sys.exit(main())
