"""The MIND experiment end to end, in one work dir: generate conversations from a math corpus,
filter them, report on them, continue pretraining one model per variant (raw text against
conversations, say), export each to Hugging Face format, evaluate each, and compare.

  python -m mind_jax.recipe                       # the embedded default: a few CPU minutes
  python -m mind_jax.recipe --config configs/recipe-mind-7b.yaml
  python -m mind_jax.recipe --config configs/recipe-mind-7b.yaml --stages generate
  python -m mind_jax.recipe filter.min_tokens=80  # redoes filter and what reads it

The default (mind_jax/experiment/default.yaml): 8 CHAMP problems, the tiny model, variants
`raw` (the corpus as raw text) and `mind` (the kept conversations), the offline CHAMP task
and the loss on CHAMP. Its numbers are noise by design; it proves the machinery and the
report. A --config replaces it: keys the file leaves out take each command's own defaults
(listed below).

Sections generate, filter, report, train and evaluate are those commands' own configs (see
their --help); the recipe sets their directories. `variants` is a list of
{name, description, generate, filter, train}: overrides of those sections. In a variant's
train.data.sources (and train.eval.sources) the paths @corpus (generate's input as raw text),
@generated and @conversations (the variant's generation and filter outputs) name its data;
variants needing the same conversations share one generation.

WORKDIR gets generate/, filter/ (with the dataset report in filter/report/), train/VARIANT/
(checkpoints, metrics, hf/ export), evaluate/VARIANT/, and report/index.html (self-contained)
with report.md and report.json. A rerun skips finished stages, resumes a cut-off one, and
redoes a stage whose settings changed, with everything downstream of it, saying why.
"""

from __future__ import annotations

import sys

from mind_jax import config as config_lib
from mind_jax._errors import run_cli
from mind_jax._progress import setup_logging
from mind_jax.experiment import DEFAULT_CONFIG, OWNED_KEYS, RecipeConfig


def main(argv=None) -> int:
  parser = config_lib.argument_parser("python -m mind_jax.recipe", __doc__, RecipeConfig,
                                      default_config=DEFAULT_CONFIG)
  # The keys the recipe sets itself (each stage's directories) are refused, so not listed.
  owned = {f"{stage}.{key}" for stage, keys in OWNED_KEYS.items() for key in keys}
  parser.epilog = "\n".join(line for line in parser.epilog.splitlines()
                            if line.strip().split(" = ")[0] not in owned)
  parser.add_argument("--workdir", help="same as workdir=DIR")
  parser.add_argument("--stages", help="comma-separated stages to run (their inputs must be "
                      "done): e.g. generate on the generation slice, train/mind on the training "
                      "slice; --list shows them")
  parser.add_argument("--list", action="store_true",
                      help="print the stages, their directories and state, and exit")
  args = parser.parse_args(argv)
  setup_logging(args.verbose)
  flagged = config_lib.flag_overrides(args, {"workdir": "workdir"})

  def job():
    from mind_jax.experiment import decide, plan, run
    cfg = config_lib.load_config(RecipeConfig, args.config,
                                 config_lib.combine_overrides(args.overrides, flagged))
    if args.list:
      stages = plan(cfg)
      decisions = decide(cfg.workdir, stages)
      state = {"skip": "done", "resume": "started", "run": "to do", "redo": "to redo"}
      for stage in stages:
        print(f"  {stage.name:28s} {state[decisions[stage.name]]:8s} {stage.directory}")
      return
    only = [s.strip() for s in args.stages.split(",")] if args.stages else None
    done = run(cfg, only)
    for stage, what in done.items():
      print(f"  {stage}: {what}")
    if "preempted" in done.values():
      print("preempted: rerun the same command to resume")
    else:
      print(f"report: {cfg.workdir}/report/index.html")
  return run_cli(job)


if __name__ == "__main__":
  sys.exit(main())
