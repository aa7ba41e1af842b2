"""Evaluate a model with EleutherAI's lm-evaluation-harness, on a JAX backend or the harness's own.

  python -m mind_jax.evaluate --model mind_train/hf                 # the CHAMP problems, offline
  python -m mind_jax.evaluate --model mind_train --tasks champ,arc_easy --backend hf --limit 100
  python -m mind_jax.evaluate --model /ckpt/llama --tasks my_task --tasks-dir my_tasks/
  python -m mind_jax.evaluate compare eval_raw eval_mind --out cmp/    # side by side, deltas
  python -m mind_jax.evaluate prepare my_files/ --data-dir eval_data/   # tasks on local files
  python -m mind_jax.evaluate --model mind_train --tasks mind --data-dir eval_data/   # the paper's suite

--model is an HF directory or a mind_jax.train workdir (its hf/ export). The backend `jax`
(default) runs the model on mind_jax (TPU/GPU, no PyTorch); `hf` is the harness's transformers
model; both score alike. Writes OUT/results.json (the harness's results with the settings),
OUT/results.md (a table) and OUT/samples/TASK.jsonl (every request and response). The
bundled task `champ` (270 competition problems from the champ-dataset package, scored by final
answer) needs no download; other harness tasks fetch their data as the harness does unless
HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set (then give local task YAMLs with --tasks-dir).
"""

from __future__ import annotations

import sys

from mind_jax import config as config_lib
from mind_jax._errors import run_cli
from mind_jax._progress import setup_logging
from mind_jax.evaluation import EvaluateConfig


def compare_main(argv) -> int:
  import argparse
  parser = argparse.ArgumentParser(
      prog="python -m mind_jax.evaluate compare",
      description="Side-by-side table of evaluation outputs (the first is the baseline: the "
      "others show their difference to it), with standard errors; --out also writes "
      "compare.md and a bar chart, compare.png.")
  parser.add_argument("directories", nargs="+", help="python -m mind_jax.evaluate outputs")
  parser.add_argument("--out", help="directory for compare.md and compare.png")
  args = parser.parse_args(argv)
  from mind_jax.evaluation import compare
  return run_cli(lambda: print(compare(args.directories, args.out), end=""))


def prepare_main(argv) -> int:
  import argparse

  from mind_jax.evaluation import SINGLE_DATASET_TASKS, SUBJECT_TASKS
  parser = argparse.ArgumentParser(
      prog="python -m mind_jax.evaluate prepare", formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Make a data directory of harness tasks on local files, and the group `mind` "
      "(GSM8K 8-shot, MATH 4-shot, MMLU and MMLU-STEM 5-shot, the general-reasoning average) "
      "over what it holds. SOURCE holds one folder per task with the hub dataset's split files "
      "(train/validation/test/dev, .parquet or .jsonl, named as on the hub: "
      "test-00000-of-00001.parquet), or for mmlu and hendrycks_math one folder per subject:\n"
      + "\n".join(f"  {task:15s} {hub}" for task, (_, hub) in SINGLE_DATASET_TASKS.items())
      + "\n" + "\n".join(f"  {name:15s} {hub}" for name, (_, _, hub) in SUBJECT_TASKS.items()))
  parser.add_argument("source", help="folder with one folder of split files per task")
  parser.add_argument("--data-dir", required=True, help="where the local tasks are written")
  args = parser.parse_args(argv)
  from mind_jax.evaluation import prepare
  return run_cli(lambda: print("prepared: " + ", ".join(prepare(args.source, args.data_dir))))


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["compare"]:
    return compare_main(argv[1:])
  if argv[:1] == ["prepare"]:
    return prepare_main(argv[1:])
  parser = config_lib.argument_parser("python -m mind_jax.evaluate", __doc__, EvaluateConfig)
  parser.add_argument("--model", help="same as model=DIR")
  parser.add_argument("--tasks", help="comma-separated task names (same as tasks=[...])")
  parser.add_argument("--backend", choices=["jax", "hf"], help="same as backend=...")
  parser.add_argument("--limit", type=int, help="same as limit=N")
  parser.add_argument("--num-fewshot", type=int, help="same as num_fewshot=N")
  parser.add_argument("--tasks-dir", action="append", default=[], help="repeatable")
  parser.add_argument("--data-dir", help="same as data_dir=DIR (see `prepare`)")
  parser.add_argument("--out", help="same as out=DIR")
  parser.add_argument("--batch-size", type=int, help="same as batch_size=N")
  parser.add_argument("--seed", type=int, help="same as seed=N")
  parser.add_argument("--overwrite", action="store_true", help="same as overwrite=true")
  args = parser.parse_args(argv)
  setup_logging(args.verbose)
  flagged = config_lib.flag_overrides(args, {
      "model": "model", "backend": "backend", "limit": "limit", "num_fewshot": "num_fewshot",
      "data_dir": "data_dir",
      "out": "out", "batch_size": "batch_size", "seed": "seed"})
  flagged += config_lib.switch_overrides(args, {"overwrite": "overwrite=true"})
  if args.tasks:
    flagged.append(("--tasks", "tasks=[" + ",".join(t.strip() for t in args.tasks.split(",")) + "]"))
  if args.tasks_dir:
    flagged.append(("--tasks-dir", "tasks_dir=[" + ",".join(f'"{d}"' for d in args.tasks_dir) + "]"))

  def job():
    from mind_jax.evaluation import evaluate
    cfg = config_lib.load_config(EvaluateConfig, args.config,
                                 config_lib.combine_overrides(args.overrides, flagged))
    results = evaluate(cfg)
    from mind_jax.evaluation import results_table
    print(results_table(results), end="")
    print(f"written to {cfg.out}/")
  return run_cli(job)


if __name__ == "__main__":
  sys.exit(main())
