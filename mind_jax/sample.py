"""Sample continuations from a checkpoint with the continuous-batching engine.

  python -m mind_jax.sample --model /ckpt/Llama-3.1-8B-Instruct --chat \\
      --prompt "Explain why the sum of two odd numbers is even." --max-new-tokens 200
  python -m mind_jax.sample --model ./ckpt --prompt-ids 1,2,3 --prompt-ids 4,5 --json
  python -m mind_jax.sample --model /ckpt/70b --prompt hi mesh.axes.tensor=8

--prompt text is encoded with a BOS token (with --chat, the checkpoint's chat
template decides); --prompt-ids are sent exactly as given. With --json each
prompt prints one JSON object (prompt_ids, token_ids, text, finish_reason),
in the order given. A bad prompt prints one error line; the others still run.

By default every prompt gets its own decode slot (as many as the KV cache may
hold in 90% of a device's free memory), the context limit is the longest
prompt plus max_new_tokens (rounded up to a power of two), and each device
call advances every slot 16 tokens.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Literal

import pydantic

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError, run_cli
from mind_jax._progress import setup_logging

log = logging.getLogger("mind_jax.sample")

AUTO_STEPS_PER_CALL = 16  # measured: 1.66x transformers with 16 against 1.25x with 8 (issue 11)


class SamplingSection(config_lib.Section):
  max_new_tokens: int = pydantic.Field(128, ge=1)
  temperature: float = pydantic.Field(1.0, ge=0.0, description="0: greedy")
  top_p: float = pydantic.Field(1.0, gt=0.0, le=1.0, description="nucleus mass (1: off)")
  top_k: int = pydantic.Field(0, ge=0, description="keep the k most likely (0: off)")
  ignore_eos: bool = pydantic.Field(False, description="do not stop at EOS")
  seed: int = pydantic.Field(0, description="global seed")


class EngineSection(config_lib.Section):
  slots: int | None = pydantic.Field(
      None, ge=1, description="decode slots (default: one per prompt, as many as fit)")
  max_len: int | None = pydantic.Field(
      None, ge=2, description="context limit, prompt + output (default: the longest prompt "
      "+ max_new_tokens, rounded up to a power of two, within max_position_embeddings)")
  steps_per_call: int | None = pydantic.Field(
      None, ge=1, description=f"tokens per slot per device call (default: {AUTO_STEPS_PER_CALL})")
  prefill_buckets: list[int] | None = pydantic.Field(
      None, description="prompt lengths compiled for; a prompt pads up to the next (default: "
      "one, the longest prompt rounded up to a power of two, when padding to it at most doubles "
      "the prefill; else powers of two from 32)")
  kv_dtype: Literal["int8"] | None = config_lib.kv_dtype_field()


class SampleConfig(config_lib.Section):
  model: config_lib.ModelSection = pydantic.Field(
      default_factory=lambda: config_lib.ModelSection(dtype="bfloat16"))
  mesh: config_lib.MeshSection = pydantic.Field(
      default_factory=lambda: config_lib.MeshSection(axes={"data": 1}),
      description="devices (default: one; e.g. mesh.axes.tensor=8)")
  sampling: SamplingSection = pydantic.Field(default_factory=SamplingSection)
  engine: EngineSection = pydantic.Field(default_factory=EngineSection)
  runtime: config_lib.RuntimeSection = pydantic.Field(default_factory=config_lib.RuntimeSection)
  chat: bool = pydantic.Field(False, description="apply the checkpoint's chat template")
  output: Literal["text", "json"] = pydantic.Field(
      "text", description="text, or one JSON object per prompt")


def parse_ids(text: str) -> list[int]:
  try:
    return [int(part) for part in text.replace(" ", "").split(",") if part]
  except ValueError as e:
    raise MindJaxError(f"--prompt-ids: {text!r} is not a comma-separated list of integers") from e


def build_requests(cfg: SampleConfig, prompts, tokenizer) -> list:
  from mind_jax.engine import Request, SamplingParams
  s = cfg.sampling
  params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                          top_p=s.top_p, top_k=s.top_k, ignore_eos=s.ignore_eos)
  ids = []
  for kind, value in prompts:
    if kind == "ids":
      ids.append(parse_ids(value))
    elif tokenizer is None:
      raise MindJaxError(f"{cfg.model.path}: no tokenizer files, so --prompt cannot be encoded; "
                         "use --prompt-ids")
    elif cfg.chat:
      ids.append(tokenizer.apply_chat_template([{"role": "user", "content": value}]))
    else:
      ids.append(tokenizer.encode(value, add_bos=True))
  return [Request(i, p, params) for i, p in enumerate(ids)]


def engine_config(cfg: SampleConfig, requests, model_config, mesh):
  """The engine's shape for these prompts: what is not set is sized from them and the memory."""
  from mind_jax.engine import EngineConfig
  from mind_jax.engine import one_prefill_bucket, slots_that_fit
  limit = model_config.max_position_embeddings
  longest = max(len(r.prompt_ids) for r in requests) + cfg.sampling.max_new_tokens
  max_len = cfg.engine.max_len or min(limit, 1 << max(6, (longest - 1).bit_length()))
  data = mesh.shape.get("data", 1)
  slots = cfg.engine.slots
  if slots is None:
    slots = -(-len(requests) // data) * data
    fit = slots_that_fit(model_config, mesh, max_len, cache_dtype=cfg.engine.kv_dtype)
    if fit is not None and fit < slots:
      log.info("%d prompts, but the KV cache holds %d slots at max_len=%d", len(requests),
               fit, max_len)
      slots = max(data, fit)
  steps = cfg.engine.steps_per_call or min(AUTO_STEPS_PER_CALL, cfg.sampling.max_new_tokens)
  buckets = tuple(cfg.engine.prefill_buckets or ()) or one_prefill_bucket(
      [len(r.prompt_ids) for r in requests], max_len)
  log.info("engine: %d slots, max_len %d, %d steps per call, prefill buckets %s", slots, max_len,
           steps, list(buckets) if buckets else "powers of two")
  return EngineConfig(slots=slots, max_len=max_len, steps_per_call=steps, seed=cfg.sampling.seed,
                      prefill_buckets=buckets, cache_dtype=cfg.engine.kv_dtype)


def run(cfg: SampleConfig, prompts) -> int:
  """Samples every prompt ((kind, value) pairs: "text" or "ids"); the exit status."""
  from mind_jax.ckpts import load_model
  from mind_jax.engine import Engine
  if not cfg.model.path:
    raise MindJaxError("give --model DIR (or model.path=DIR)")
  if not prompts:
    raise MindJaxError("give at least one --prompt or --prompt-ids")
  cfg.model.check_inference()
  cfg.runtime.apply()
  mesh = cfg.mesh.build(use_first=True)
  model, tokenizer, _ = load_model(cfg.model, mesh, cfg.mesh.rules, progress=cfg.output == "text")
  requests = build_requests(cfg, prompts, tokenizer)
  engine = Engine(model, tokenizer, engine_config(cfg, requests, model.config, mesh), mesh=mesh)
  failures = 0
  for result in engine.generate_all(requests):
    if result.error:
      failures += 1
      print(f"error: prompt {result.id}: {result.error}", file=sys.stderr)
    if cfg.output == "json":
      record = {"prompt_ids": result.prompt_ids, "token_ids": result.token_ids,
                "text": result.text, "finish_reason": result.finish_reason}
      if result.error:
        record["error"] = result.error
      print(json.dumps(record, ensure_ascii=False), flush=True)
    elif not result.error:
      prompt_text = tokenizer.decode(result.prompt_ids) if tokenizer else result.prompt_ids
      print(f"--- prompt {result.id}: {prompt_text!r}")
      print(result.text if result.text is not None else result.token_ids)
      print(f"--- [{result.finish_reason}, {result.output_tokens} tokens]")
  return 1 if failures else 0


class _Tagged(argparse.Action):
  """Collects --prompt and --prompt-ids into one list, keeping their command-line order."""

  def __init__(self, option_strings, dest, const=None, **kwargs):
    super().__init__(option_strings, dest, nargs=None, const=const, **kwargs)

  def __call__(self, parser, namespace, value, option_string=None):
    items = list(getattr(namespace, self.dest) or [])
    setattr(namespace, self.dest, items + [(self.const, value)])


def main(argv=None) -> int:
  parser = config_lib.argument_parser("python -m mind_jax.sample", __doc__, SampleConfig)
  parser.usage = "python -m mind_jax.sample --model DIR --prompt TEXT [options] [key=value ...]"
  parser.add_argument("--model", help="HF model directory or mind_jax Orbax checkpoint "
                      "(same as model.path=...)")
  parser.add_argument("--prompt", dest="prompts", action=_Tagged, const="text",
                      help="prompt text (repeatable)")
  parser.add_argument("--prompt-ids", dest="prompts", action=_Tagged, const="ids",
                      help="prompt as comma-separated token ids, sent as given (repeatable)")
  for flag, kind in (("max_new_tokens", int), ("temperature", float), ("top_p", float),
                     ("top_k", int), ("seed", int)):
    parser.add_argument("--" + flag.replace("_", "-"), type=kind,
                        help=f"same as sampling.{flag}=...")
  for flag in ("slots", "max_len", "steps_per_call"):
    parser.add_argument("--" + flag.replace("_", "-"), type=int, help=f"same as engine.{flag}=...")
  parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                      help="same as model.dtype=... (default: bfloat16)")
  parser.add_argument("--ignore-eos", action="store_true", help="same as sampling.ignore_eos=true")
  parser.add_argument("--allow-unused-tensors", action="store_true",
                      help="same as model.allow_unused_tensors=true")
  parser.add_argument("--chat", action="store_true", help="same as chat=true")
  parser.add_argument("--json", action="store_true", help="same as output=json")
  args = parser.parse_args(argv)
  setup_logging(args.verbose)
  flagged = config_lib.flag_overrides(args, {
      "model": "model.path", "dtype": "model.dtype", "max_new_tokens": "sampling.max_new_tokens",
      "temperature": "sampling.temperature", "top_p": "sampling.top_p",
      "top_k": "sampling.top_k", "seed": "sampling.seed", "slots": "engine.slots",
      "max_len": "engine.max_len", "steps_per_call": "engine.steps_per_call"})
  flagged += config_lib.switch_overrides(args, {
      "ignore_eos": "sampling.ignore_eos=true", "chat": "chat=true", "json": "output=json",
      "allow_unused_tensors": "model.allow_unused_tensors=true"})
  return run_cli(lambda: run(config_lib.load_config(
      SampleConfig, args.config, config_lib.combine_overrides(args.overrides, flagged)),
      args.prompts))


if __name__ == "__main__":
  sys.exit(main())
