"""Harness tasks on local files: a data directory that needs no hub access.

`prepare(SOURCE, DATA_DIR)` takes the files a user has for each task (the hub dataset's split
files, Parquet or JSONL, in SOURCE/TASK/: `test-00000-of-00001.parquet`, `train.jsonl`, ...)
and writes DATA_DIR/TASK/SPLIT.jsonl plus DATA_DIR/TASK.yaml, a task that includes the
harness's own definition (prompt, choices, metrics, filters) and only points its data at the
local files. `python -m mind_jax.evaluate --data-dir DATA_DIR` then loads tasks from there and
nothing else, offline.
"""

from __future__ import annotations

import json
import os
import re

from mind_jax._errors import MindJaxError

# Harness tasks whose data is one hub dataset, with the built-in definition each includes
# (relative to lm_eval/tasks/) and the hub dataset its files come from.
SINGLE_DATASET_TASKS: dict[str, tuple[str, str]] = {
    "gsm8k": ("gsm8k/gsm8k.yaml", "openai/gsm8k (main)"),
    "arc_easy": ("arc/arc_easy.yaml", "allenai/ai2_arc (ARC-Easy)"),
    "arc_challenge": ("arc/arc_challenge.yaml", "allenai/ai2_arc (ARC-Challenge)"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "Rowan/hellaswag"),
    "piqa": ("piqa/piqa.yaml", "baber/piqa"),
    "winogrande": ("winogrande/default.yaml", "allenai/winogrande (winogrande_xl)"),
    "race": ("race/race.yaml", "EleutherAI/race (high)"),
}
SPLITS = ("train", "validation", "test")


def _split_of(name: str) -> str | None:
  head = re.split(r"[.\-]", name, maxsplit=1)[0]
  return head if head in SPLITS else None


def prepare(source: str, data_dir: str) -> list[str]:
  """Writes the local tasks for every known task SOURCE has a folder for; returns their names."""
  import lm_eval

  from mind_jax.data import iter_records
  if not os.path.isdir(source):
    raise MindJaxError(f"{source}: not a directory (expected one folder per task: "
                       f"{', '.join(SINGLE_DATASET_TASKS)})")
  builtin_root = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
  prepared = []
  for task, (builtin, _) in SINGLE_DATASET_TASKS.items():
    folder = os.path.join(source, task)
    if not os.path.isdir(folder):
      continue
    files: dict[str, list[str]] = {}
    for name in sorted(os.listdir(folder)):
      split = _split_of(name)
      if split and name.endswith((".jsonl", ".json", ".parquet", ".jsonl.gz")):
        files.setdefault(split, []).append(os.path.join(folder, name))
    if not files:
      raise MindJaxError(f"{folder}: no split files (train/validation/test .jsonl or .parquet)")
    out = os.path.join(data_dir, task)
    os.makedirs(out, exist_ok=True)
    data_files = {}
    for split, paths in files.items():
      target = os.path.join(out, f"{split}.jsonl")
      with open(target, "w") as f:
        for path in paths:
          for where, record, problem in iter_records(path):
            if problem:
              raise MindJaxError(f"{where}: {problem}")
            f.write(json.dumps(record, default=str) + "\n")
      data_files[split] = os.path.abspath(target)
    spec = {"include": os.path.join(builtin_root, builtin), "task": task,
            "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": data_files}}
    with open(os.path.join(data_dir, f"{task}.yaml"), "w") as f:
      json.dump(spec, f, indent=1)  # JSON is YAML; every value here is plain data
    prepared.append(task)
  if not prepared:
    raise MindJaxError(f"{source}: no task folders (known tasks: "
                       f"{', '.join(SINGLE_DATASET_TASKS)})")
  return prepared
