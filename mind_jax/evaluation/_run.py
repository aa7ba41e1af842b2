"""One evaluation: lm-evaluation-harness on a model directory, results written as files."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import subprocess
import tempfile
from typing import Literal


from mind_jax import config as config_lib
from mind_jax._atomic import write_json
from mind_jax._errors import MindJaxError
from mind_jax._outdir import check_output_dir, claim, dir_fingerprint
from mind_jax.evaluation._compare import markdown_table, scores

log = logging.getLogger(__name__)

RESULTS, TABLE, SAMPLES = "results.json", "results.md", "samples"


class EvaluateConfig(config_lib.Section):
  model: str | None = config_lib.source(
      None, description="HF model directory, or a mind_jax.train workdir (its hf/ export)")
  tasks: list[str] = config_lib.result(
      default_factory=lambda: ["champ"], description="harness task or group names; champ "
      "(bundled CHAMP problems, offline) by default")
  backend: Literal["jax", "hf"] = config_lib.result(
      "jax", description="jax: mind_jax's model (TPU/GPU, no PyTorch); hf: the harness's own "
      "transformers model")
  limit: int | None = config_lib.result(None, ge=1, description="documents per task (a smoke run)")
  num_fewshot: int | None = config_lib.result(None, ge=0, description="override the tasks' count")
  tasks_dir: list[str] = config_lib.result(
      default_factory=list, description="directories of your own task YAMLs (include_path)")
  data_dir: str | None = config_lib.result(
      None, description="tasks on local files only (made by `evaluate prepare`): the hub is "
      "never contacted")
  out: str = config_lib.speed("mind_eval", description="output directory")
  batch_size: int = config_lib.speed(8, ge=1, description="requests per forward pass")
  dtype: Literal["float32", "bfloat16"] = config_lib.result("float32", description="compute dtype")
  tensor: int = config_lib.speed(
      1, ge=1, description="jax backend: chips the model is split over (tensor parallel)")
  quantize: Literal["int8"] | None = config_lib.result(
      None, description="jax backend: int8 projection weights, as generation's model.quantize "
      "(to score what an int8 generator sees)")
  seed: int = config_lib.result(0, description="the harness's seeds (few-shot sampling, ...)")
  overwrite: bool = config_lib.speed(
      False, description="replace an earlier evaluation in out made with other settings")


def resolve_model(path: str | None) -> str:
  """The HF directory to evaluate: `path`, or a training workdir's export; checked up front."""
  from mind_jax.ckpts import is_orbax_dir, require_model_dir
  if not path:
    raise MindJaxError("--model: no model given (an HF directory or a mind_jax.train workdir)")
  record = os.path.join(path, "run.json")
  if os.path.isfile(record):
    with open(record) as f:
      if json.load(f).get("job") == "train":
        path = os.path.join(path, "hf")
        if not os.path.isdir(path):
          raise MindJaxError(f"--model={os.path.dirname(path)}: a training workdir with no hf/ "
                             "export yet; let the run finish (or set export.every)")
  require_model_dir(path, "--model")
  weights = glob.glob(os.path.join(path, "*.safetensors"))
  if not weights and not is_orbax_dir(path):
    raise MindJaxError(f"--model={path}: no weights (model.safetensors, its shards, or a "
                       "mind_jax Orbax checkpoint)")
  if weights:
    from mind_jax.ckpts import SafetensorsReader
    SafetensorsReader(path)  # every header and file size: a damaged file before the harness
  return path


MIN_HARNESS = (0, 4, 8)


def check_harness() -> None:
  """lm-evaluation-harness present and recent enough, or one line saying what to install."""
  try:
    import lm_eval
  except ModuleNotFoundError as e:
    raise MindJaxError("lm-evaluation-harness is not installed; pip install 'mind-jax[eval]' "
                       "(or 'lm-eval[hf]>=0.4.8')") from e
  version = tuple(int(p) for p in lm_eval.__version__.split(".")[:3] if p.isdigit())
  if version < MIN_HARNESS:
    raise MindJaxError(f"lm-eval {lm_eval.__version__} is too old; pip install "
                       "'lm-eval[hf]>=0.4.8'")


def check_local_data(directories: list[str], tasks: list[str]) -> None:
  """Each requested task of the user's YAMLs whose data are local files: the files exist
  (named in one line), rather than the harness failing on them after the model loaded."""
  from mind_jax.evaluation._local import load_task_yaml
  for directory in directories:
    for path in sorted(glob.glob(os.path.join(directory, "**", "*.yaml"), recursive=True)):
      spec = load_task_yaml(path)
      if not isinstance(spec, dict) or spec.get("task") not in tasks:
        continue
      files = (spec.get("dataset_kwargs") or {}).get("data_files") or {}
      for split_files in (files.values() if isinstance(files, dict) else [files]):
        for data in ([split_files] if isinstance(split_files, str) else split_files):
          data = data if os.path.isabs(data) else os.path.join(os.path.dirname(path), data)
          if "://" not in data and not glob.glob(data):
            raise MindJaxError(f"{path}: task {spec['task']}: data file {data} does not exist")


def task_manager(cfg: EvaluateConfig, work: str):
  """The harness's task index with the bundled CHAMP task and the user's directories."""
  check_harness()
  from lm_eval.tasks import TaskManager

  from mind_jax.evaluation._champ import write_task
  for directory in cfg.tasks_dir:
    if not os.path.isdir(directory):
      raise MindJaxError(f"--tasks-dir={directory}: not a directory")
  local = [cfg.data_dir] if cfg.data_dir else []
  for directory in local:
    if not os.path.isdir(directory):
      raise MindJaxError(f"--data-dir={directory}: not a directory (make it with "
                         "python -m mind_jax.evaluate prepare)")
  check_local_data([*local, *cfg.tasks_dir], cfg.tasks)
  include = [*local, write_task(os.path.join(work, "champ")), *cfg.tasks_dir]
  if not cfg.data_dir:  # the suite over the harness's own (hub) tasks
    import lm_eval

    from mind_jax.evaluation._local import hub_suite_tasks, write_suite
    builtin = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    suite = os.path.join(work, "suite")
    os.makedirs(suite)
    write_suite(suite, hub_suite_tasks(builtin), builtin)
    include.append(suite)
  # With a data directory the harness's own (hub-backed) definitions are not offered.
  manager = TaskManager(include_path=include, include_defaults=not cfg.data_dir)
  known = set(manager.all_tasks)
  for name in cfg.tasks:
    if name not in known:
      where = (f"prepared in {cfg.data_dir}" if cfg.data_dir else "among the harness's tasks")
      raise MindJaxError(f"--tasks: unknown task {name!r}: not {where}, champ, or a task in "
                         "--tasks-dir")
  return manager


def evaluate(cfg: EvaluateConfig) -> dict:
  """Runs the tasks and writes OUT/results.json, OUT/results.md and OUT/samples/TASK.jsonl."""
  if cfg.quantize and cfg.backend != "jax":
    raise MindJaxError(f"--quantize {cfg.quantize}: int8 weights are the jax backend's; the hf "
                       "backend runs the checkpoint as transformers loads it")
  model = resolve_model(cfg.model)
  check_output_dir(cfg.out, "--out", [model])
  if cfg.data_dir:  # read before `datasets` is imported, which fixes its offline mode
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
  # The keys the config marks result, the model by its content; quantize only when set: an
  # evaluation made before the key existed resumes as it was.
  settings = {"model": f"{os.path.basename(os.path.normpath(model))}, content "
                       f"{dir_fingerprint(model)}",
              **config_lib.deciding(cfg, leave_out=(config_lib.SPEED, config_lib.SOURCE))}
  if not settings["quantize"]:
    del settings["quantize"]

  def remove_owned(record):
    del record
    for name in (RESULTS, TABLE, SAMPLES):
      path = os.path.join(cfg.out, name)
      shutil.rmtree(path) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)

  work = tempfile.mkdtemp(prefix="mind_jax_eval_")
  try:
    manager = task_manager(cfg, work)
    claim(cfg.out, "evaluate", settings, overwrite=cfg.overwrite, key="--out",
          remove_owned=remove_owned,
          foreign=[n for n in (RESULTS, TABLE, SAMPLES) if os.path.exists(os.path.join(cfg.out, n))])
    results = _run_harness(cfg, model, manager)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  samples = results.pop("samples", {})
  os.makedirs(os.path.join(cfg.out, SAMPLES), exist_ok=True)
  for task, rows in samples.items():
    with open(os.path.join(cfg.out, SAMPLES, f"{task}.jsonl"), "w") as f:
      for row in rows:
        f.write(json.dumps(row, default=str) + "\n")
  results["mind_jax"] = {"model": model, **settings}
  write_json(os.path.join(cfg.out, RESULTS), json.loads(json.dumps(results, default=str)))
  with open(os.path.join(cfg.out, TABLE), "w") as f:
    f.write(results_table(results))
  return results


def _run_harness(cfg: EvaluateConfig, model: str, manager) -> dict:
  import lm_eval

  import mind_jax.evaluation._jax_lm  # noqa: F401  registers "mind_jax" with the harness
  if cfg.backend == "jax":
    name, args = "mind_jax", {"pretrained": model, "dtype": cfg.dtype, "seed": cfg.seed,
                              "tensor": cfg.tensor, "quantize": cfg.quantize}
  else:
    import torch
    name, args = "hf", {"pretrained": model, "dtype": cfg.dtype,
                        "device": "cuda" if torch.cuda.is_available() else "cpu"}
  import lm_eval.evaluator
  # The harness records the working directory's git commit by running git with its stderr on
  # the terminal: outside a checkout a user reads "fatal: not a git repository". The same
  # record, quietly (None where there is no checkout).
  harness_hash = lm_eval.evaluator.get_git_commit_hash
  lm_eval.evaluator.get_git_commit_hash = _quiet_git_hash
  try:
    return lm_eval.simple_evaluate(
        model=name, model_args=args, tasks=list(cfg.tasks), num_fewshot=cfg.num_fewshot,
        batch_size=cfg.batch_size, limit=cfg.limit, task_manager=manager, log_samples=True,
        random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed, bootstrap_iters=1000)
  finally:
    lm_eval.evaluator.get_git_commit_hash = harness_hash


def _quiet_git_hash() -> str | None:
  try:
    done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True,
                          timeout=10)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return done.stdout.strip() or None


def results_table(results: dict) -> str:
  """Markdown: one row per task and metric, with its standard error."""
  rows = [[task, metric, f"{value:.4f}", "n/a" if stderr is None else f"{stderr:.4f}"]
          for (task, metric), (value, stderr) in sorted(scores(results).items())]
  return markdown_table(["task", "metric", "value", "stderr"], rows) + paper_table(results)


# The MIND paper's columns: (heading, group or task, metric key), scores shown x 100.
PAPER_COLUMNS = (("GSM8K", "gsm8k", "exact_match,strict-match"),
                 ("MATH", "mind_math", "exact_match,none"),
                 ("MMLU-STEM", "mind_mmlu_stem", "acc,none"), ("MMLU", "mind_mmlu", "acc,none"),
                 ("General reasoning", "mind_reasoning", "acc,none"))


def paper_table(results: dict) -> str:
  """The row the MIND paper's table has (when the `mind` suite ran), in percent."""
  by_task = results.get("results", {})
  if "mind" not in by_task:
    return ""
  cells = [f"{100 * by_task[g][k]:.2f}" if isinstance(by_task.get(g, {}).get(k), (int, float))
           else "-" for _, g, k in PAPER_COLUMNS]
  return ("\nAs in the MIND paper's table (percent; GSM8K strict match):\n\n"
          + markdown_table([h for h, _, _ in PAPER_COLUMNS], [cells]))
