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
SPLITS = ("train", "validation", "test", "dev")

# Harness tasks with one dataset configuration per subject: SOURCE/NAME/SUBJECT/ holds each
# subject's split files. name -> (built-in folder, {subject: task}, hub dataset, group files).
MATH_SUBJECTS = {
    "algebra": "minerva_math_algebra", "counting_and_probability": "minerva_math_counting_and_prob",
    "geometry": "minerva_math_geometry", "intermediate_algebra": "minerva_math_intermediate_algebra",
    "number_theory": "minerva_math_num_theory", "prealgebra": "minerva_math_prealgebra",
    "precalculus": "minerva_math_precalc"}
SUBJECT_TASKS: dict[str, tuple[str, dict[str, str] | None, str]] = {
    # MMLU's 57 subjects: task mmlu_SUBJECT, grouped as the harness groups them (mmlu, and
    # mmlu_stem for its STEM subjects) over the subjects present, weighted by size.
    "mmlu": ("mmlu/default", None, "cais/mmlu (one configuration per subject)"),
    "hendrycks_math": ("minerva_math", MATH_SUBJECTS,
                       "EleutherAI/hendrycks_math (one configuration per subject)"),
}

def _suite() -> dict:
  """suite.yaml: the few-shot counts (with where each comes from) and the reasoning tasks."""
  import yaml
  with open(os.path.join(os.path.dirname(__file__), "suite.yaml")) as f:
    return yaml.safe_load(f)


SUITE = _suite()
# Set on the leaf tasks (the harness does not carry a count given to a group down to it).
SUITE_FEWSHOT: dict[str, int] = SUITE["few_shot"]
REASONING: tuple[str, ...] = tuple(SUITE["general_reasoning"])


def _split_of(name: str) -> str | None:
  head = re.split(r"[.\-]", name, maxsplit=1)[0]
  return head if head in SPLITS else None


def prepare(source: str, data_dir: str) -> list[str]:
  """Writes the local tasks for every known task SOURCE has a folder for; returns their names."""
  import lm_eval
  if not os.path.isdir(source):
    raise MindJaxError(f"{source}: not a directory (expected one folder per task: "
                       f"{', '.join(SINGLE_DATASET_TASKS)})")
  builtin_root = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
  prepared = []
  for task, (builtin, _) in SINGLE_DATASET_TASKS.items():
    folder = os.path.join(source, task)
    if os.path.isdir(folder):
      _write_task(task, os.path.join(builtin_root, builtin), folder, data_dir)
      prepared.append(task)
  for name, (folder, subjects, _) in SUBJECT_TASKS.items():
    root = os.path.join(source, name)
    if not os.path.isdir(root):
      continue
    tasks = []
    for subject in sorted(os.listdir(root)):
      task = subjects.get(subject) if subjects is not None else f"mmlu_{subject}"
      builtin = os.path.join(builtin_root, folder, f"{task}.yaml") if task else ""
      if not os.path.isfile(builtin):
        raise MindJaxError(f"{os.path.join(root, subject)}: not a {name} subject the harness "
                           "knows")
      _write_task(task, builtin, os.path.join(root, subject), os.path.join(data_dir, name))
      tasks.append(task)
    prepared += tasks
  if not prepared:
    raise MindJaxError(f"{source}: no task folders (known: "
                       f"{', '.join([*SINGLE_DATASET_TASKS, *SUBJECT_TASKS])})")
  write_suite(data_dir, prepared, builtin_root)
  return prepared


def load_task_yaml(path: str):
  """A harness task YAML as plain data; its `!function` tags (code) read as None."""
  import yaml

  class Permissive(yaml.SafeLoader):
    pass

  Permissive.add_multi_constructor("!", lambda loader, suffix, node: None)
  with open(path) as f:
    try:
      return yaml.load(f, Loader=Permissive) or {}
    except yaml.YAMLError as e:
      raise MindJaxError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from e


def _tags(path: str) -> list[str]:
  tag = load_task_yaml(path).get("tag") or []
  return [tag] if isinstance(tag, str) else list(tag)


def _write_task(task: str, builtin: str, folder: str, out_dir: str) -> None:
  from mind_jax.data import iter_records
  files: dict[str, list[str]] = {}
  for name in sorted(os.listdir(folder)):
    split = _split_of(name)
    if split and name.endswith((".jsonl", ".json", ".parquet", ".jsonl.gz")):
      files.setdefault(split, []).append(os.path.join(folder, name))
  if not files:
    raise MindJaxError(f"{folder}: no split files (train/validation/test/dev .jsonl or .parquet)")
  os.makedirs(os.path.join(out_dir, task), exist_ok=True)
  data_files = {}
  for split, paths in files.items():
    target = os.path.join(out_dir, task, f"{split}.jsonl")
    with open(target, "w") as f:
      for path in paths:
        for where, record, problem in iter_records(path):
          if problem:
            raise MindJaxError(f"{where}: {problem}")
          f.write(json.dumps(record, default=str) + "\n")
    data_files[split] = os.path.abspath(target)
  spec = {"include": builtin, "task": task, "dataset_path": "json", "dataset_name": None,
          "dataset_kwargs": {"data_files": data_files}}
  with open(os.path.join(out_dir, f"{task}.yaml"), "w") as f:
    json.dump(spec, f, indent=1)  # JSON is YAML; every value here is plain data


def _write_group(path: str, group: str, tasks, metric: str, by_size: bool,
                 fewshot: dict | None = None) -> None:
  entries = [{"task": t, "num_fewshot": fewshot[t]} if fewshot and t in fewshot else t
             for t in tasks]
  spec = {"group": group, "task": entries,
          "aggregate_metric_list": [{"metric": metric, "weight_by_size": by_size}],
          "metadata": {"version": 1}}
  with open(path, "w") as f:
    json.dump(spec, f, indent=1)


def write_suite(directory: str, tasks: list[str], builtin_root: str) -> None:
  """The group `mind` over `tasks` (harness task names), written into `directory`: GSM8K,
  MATH (its subjects, `mind_math`), MMLU and its STEM subjects (`mind_mmlu`,
  `mind_mmlu_stem`, weighted by size) and the unweighted mean accuracy of the
  general-reasoning tasks (`mind_reasoning`), the few-shot counts set on the leaf tasks."""
  present = list(dict.fromkeys(tasks))
  mmlu = [t for t in present if t.startswith("mmlu_")]
  math = [t for t in present if t.startswith("minerva_math_")]
  reasoning = [t for t in REASONING if t in present]
  members = [{"task": "gsm8k", "num_fewshot": SUITE_FEWSHOT["gsm8k"]}] if "gsm8k" in present else []
  if math:
    _write_group(os.path.join(directory, "mind_math.yaml"), "mind_math", math, "exact_match",
                 True, {t: SUITE_FEWSHOT["math"] for t in math})
    members.append("mind_math")
  if mmlu:
    shots = {t: SUITE_FEWSHOT["mmlu"] for t in mmlu}
    _write_group(os.path.join(directory, "mind_mmlu.yaml"), "mind_mmlu", mmlu, "acc", True, shots)
    members.append("mind_mmlu")
    stem = [t for t in mmlu if "mmlu_stem_tasks" in _tags(
        os.path.join(builtin_root, "mmlu", "default", f"{t}.yaml"))]
    if stem:
      _write_group(os.path.join(directory, "mind_mmlu_stem.yaml"), "mind_mmlu_stem", stem, "acc",
                   True, shots)
      members.append("mind_mmlu_stem")
  if reasoning:
    _write_group(os.path.join(directory, "mind_reasoning.yaml"), "mind_reasoning", reasoning,
                 "acc", by_size=False)
    members.append("mind_reasoning")
  with open(os.path.join(directory, "mind.yaml"), "w") as f:
    json.dump({"group": "mind", "task": members, "metadata": {"version": 1}}, f, indent=1)


def hub_suite_tasks(builtin_root: str) -> list[str]:
  """Every task of the suite as the harness defines it on the hub (no data directory)."""
  subjects = sorted(os.path.basename(p)[:-5] for p in os.listdir(
      os.path.join(builtin_root, "mmlu", "default")) if p.startswith("mmlu_") and p.endswith(".yaml"))
  return ["gsm8k", *MATH_SUBJECTS.values(), *subjects, *REASONING]
