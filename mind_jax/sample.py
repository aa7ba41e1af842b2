"""Sample continuations from a checkpoint with the continuous-batching engine.

  python -m mind_jax.sample --model /ckpt/Llama-3.1-8B-Instruct --chat \\
      --prompt "Explain why the sum of two odd numbers is even." --max-new-tokens 200
  python -m mind_jax.sample --model ./ckpt --prompt-ids 1,2,3 --prompt-ids 4,5 --json

--prompt text is encoded with a BOS token (with --chat, the checkpoint's chat
template decides); --prompt-ids are sent exactly as given. With --json each
prompt prints one JSON object (prompt_ids, token_ids, text, finish_reason),
in the order given. A bad prompt prints one error line; the others still run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from mind_jax import sharding
from mind_jax._errors import MindJaxError, run_cli
from mind_jax._progress import setup_logging
from mind_jax.ckpts import load_pretrained
from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams

log = logging.getLogger("mind_jax.sample")


def parse_ids(text: str) -> list[int]:
  try:
    return [int(part) for part in text.replace(" ", "").split(",") if part]
  except ValueError:
    raise MindJaxError(f"--prompt-ids: {text!r} is not a comma-separated list of integers") from None


def build_requests(args, tokenizer) -> list[Request]:
  params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_p=args.top_p, top_k=args.top_k, ignore_eos=args.ignore_eos)
  prompts = []
  for kind, value in args.prompts or []:
    if kind == "ids":
      prompts.append(parse_ids(value))
    elif tokenizer is None:
      raise MindJaxError(f"{args.model}: no tokenizer files, so --prompt cannot be encoded; "
                         "use --prompt-ids")
    elif args.chat:
      prompts.append(tokenizer.apply_chat_template([{"role": "user", "content": value}]))
    else:
      prompts.append(tokenizer.encode(value, add_bos=True))
  if not prompts:
    raise MindJaxError("give at least one --prompt or --prompt-ids")
  return [Request(i, ids, params) for i, ids in enumerate(prompts)]


def run(args) -> int:
  mesh = sharding.make_mesh(sharding.parse_axes(args.mesh)) if args.mesh else None
  model, tokenizer = load_pretrained(args.model, dtype=args.dtype, mesh=mesh, rules="generate",
                                     progress=not args.json,
                                     allow_unused=args.allow_unused_tensors)
  requests = build_requests(args, tokenizer)
  slots = args.slots or min(len(requests), 8)
  if mesh is not None:
    slots = -(-slots // mesh.shape["data"]) * mesh.shape["data"]
  max_len = args.max_len or min(4096, model.config.max_position_embeddings)
  engine = Engine(model, tokenizer, EngineConfig(slots=slots, max_len=max_len,
                                                 steps_per_call=args.steps_per_call,
                                                 seed=args.seed), mesh=mesh)
  failures = 0
  for result in engine.generate_all(requests):
    if result.error:
      failures += 1
      print(f"error: prompt {result.id}: {result.error}", file=sys.stderr)
    if args.json:
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
  parser = argparse.ArgumentParser(prog="python -m mind_jax.sample", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", required=True, help="HF model directory or mind_jax Orbax checkpoint")
  parser.add_argument("--prompt", dest="prompts", action=_Tagged, const="text",
                      help="prompt text (repeatable)")
  parser.add_argument("--prompt-ids", dest="prompts", action=_Tagged, const="ids",
                      help="prompt as comma-separated token ids, sent as given (repeatable)")
  parser.add_argument("--chat", action="store_true", help="apply the checkpoint's chat template")
  parser.add_argument("--max-new-tokens", type=int, default=128, help="default: 128")
  parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: 1.0)")
  parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default: 1.0 = off)")
  parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely (default: 0 = off)")
  parser.add_argument("--seed", type=int, default=0, help="global seed (default: 0)")
  parser.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS")
  parser.add_argument("--slots", type=int, help="decode slots (default: min(prompts, 8))")
  parser.add_argument("--max-len", type=int,
                      help="context limit, prompt + output (default: 4096, or the model's "
                      "max_position_embeddings if smaller)")
  parser.add_argument("--steps-per-call", type=int, default=8,
                      help="tokens per slot per device call (default: 8)")
  parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                      help="compute and weight dtype (default: bfloat16)")
  parser.add_argument("--mesh", help="device mesh, e.g. data=2,tensor=4 (default: one device)")
  parser.add_argument("--allow-unused-tensors", action="store_true",
                      help="load an HF checkpoint even if the model its config.json describes "
                      "leaves some tensors unused (default: refuse, as config.json may not "
                      "match the weights)")
  parser.add_argument("--json", action="store_true", help="one JSON object per prompt")
  parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  args = parser.parse_args(argv)
  setup_logging(args.verbose)
  return run_cli(lambda: run(args))


if __name__ == "__main__":
  sys.exit(main())
