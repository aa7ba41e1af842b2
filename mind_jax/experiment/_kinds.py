"""The kinds of recipe stage, one object each: what decides its output (its config's keys
marked result or source, less those the recipe sets itself), the paths it reads that must exist before anything runs, whether it runs as one program over every
host of a slice, the devices it holds, and the job it runs. A new kind of stage is a class
here (and its place in the plan, experiment/_stages.py)."""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError
from mind_jax._outdir import dir_fingerprint
from mind_jax.experiment import _config as rc


class Context(NamedTuple):
  """What a stage's job may read besides its own config: the recipe and its other stages."""
  recipe: Any            # the RecipeConfig
  stages: list           # every Stage of the plan
  records: dict          # {stage name: its record so far}


class Preempted(Exception):
  """A training stage saved and stopped on a preemption notice (SIGTERM): not done."""

  def __init__(self, stage: str, step: int):
    super().__init__(stage, step)
    self.stage, self.step = stage, step


def _without(data: dict, keys) -> dict:
  data = json.loads(json.dumps(data, default=str))
  for dotted in keys:
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
      node = node.get(key, {})
    node.pop(last, None)
  return data


class Kind:
  name = ""
  slice_wide = False  # one program over every host of a slice (else one host)

  def result_settings(self, config) -> dict:
    """What decides the stage's output: the keys its config marks result or source (see
    mind_jax.config), less those the recipe sets itself (rc.OWNED_KEYS: where the stage
    writes, and what it reads, which the fingerprints of the stages it reads stand for)."""
    decides = config_lib.deciding(config, leave_out=(config_lib.SPEED,))
    return _without(decides, rc.OWNED_KEYS.get(self.name, ()))

  def check_inputs(self, config, produced: list[str]) -> None:
    """Raises MindJaxError for a path the stage reads that is not there (`produced`: the
    directories earlier stages will write)."""

  def devices(self, config) -> int:
    """Accelerator devices the stage holds (for device time): a JAX job holds all of them."""
    if not self.slice_wide:
      return 0
    import jax
    return jax.device_count()

  def run(self, stage, context: Context) -> dict:
    """Runs the stage's job through its library function; a JSON-able summary."""
    raise NotImplementedError


class _ReadsModel(Kind):
  def result_settings(self, config) -> dict:
    """A local model is known by its content: new weights at the same path redo the stage."""
    settings = super().result_settings(config)
    path = config.model.path
    if path and os.path.isdir(path):
      settings["model"]["content"] = dir_fingerprint(path)
    return settings


class Generate(_ReadsModel):
  name, slice_wide = "generate", True

  def check_inputs(self, config, produced):
    from mind_jax.data import expand
    from mind_jax.mind import check_model_path, check_style_keys, load_styles
    check_model_path(config)
    check_style_keys(load_styles(config.prompt.styles_file), config.prompt.styles)
    expand(config.input.source)

  def run(self, stage, context):
    from mind_jax.mind import run
    return run(stage.config)


class Filter(Kind):
  name = "filter"

  def check_inputs(self, config, produced):
    from mind_jax.ckpts import require_model_dir
    from mind_jax.data import expand
    for path in config.decontaminate.files:
      expand(path)
    if config.tokenizer and config.tokenizer != "byte":
      require_model_dir(config.tokenizer, "tokenizer")

  def run(self, stage, context):
    from mind_jax.curation import run_filter
    return run_filter(stage.config)


class Report(Kind):
  name = "report"

  def run(self, stage, context):
    from mind_jax.curation import run_report
    report = run_report(stage.config)
    return {"records": report["all"]["records"], "kept": report["all"]["kept"]}


class Train(_ReadsModel):
  name, slice_wide = "train", True

  def check_inputs(self, config, produced):
    from mind_jax.ckpts import require_model_dir
    from mind_jax.data import expand
    if config.model.path:
      require_model_dir(config.model.path, "model.path")
    if config.data.tokenizer and config.data.tokenizer != "byte":
      require_model_dir(config.data.tokenizer, "data.tokenizer")
    for key, sources in (("data.sources", config.data.sources),
                         ("eval.sources", config.eval.sources)):
      for index, source in enumerate(sources):
        if source.path not in produced:
          try:
            expand(source.path)
          except MindJaxError as e:
            raise MindJaxError(f"{key}[{index}].path: {e}") from e

  def run(self, stage, context):
    from mind_jax.mix import describe_mix
    from mind_jax.training import run
    # What the variant trains on, measured on its first batches, for the report.
    mix = describe_mix(stage.config, batches=8, progress=False)
    mix.pop("examples", None)
    summary = run(stage.config)
    if summary.get("preempted"):
      raise Preempted(stage.name, summary["stopped_at"])
    return {**summary, "mix": mix}


class Evaluate(Kind):
  name = "evaluate"

  def check_inputs(self, config, produced):
    import importlib.util
    if importlib.util.find_spec("lm_eval") is None:
      raise MindJaxError("needs EleutherAI's lm-evaluation-harness: pip install 'mind_jax[eval]'")
    for key, path in [("data_dir", config.data_dir)] + [("tasks_dir", p) for p in config.tasks_dir]:
      if path and not os.path.isdir(path):
        raise MindJaxError(f"{key}={path}: no such directory")

  def devices(self, config) -> int:  # the harness's own (hf) backend runs in torch on the host
    if config.backend != "jax":
      return 0
    import jax
    return jax.device_count()

  def run(self, stage, context):
    from mind_jax.evaluation import evaluate, scores
    results = evaluate(stage.config)
    return {f"{task} / {metric}": value for (task, metric), (value, _) in scores(results).items()}


class Compare(Kind):
  name = "compare"

  def run(self, stage, context):
    from mind_jax.experiment._report import write_report
    return write_report(context.recipe.workdir, context.recipe, context.stages, context.records)


# In plan order: a stage comes after every kind listed before its own.
KINDS: dict[str, Kind] = {k.name: k for k in (Generate(), Filter(), Report(), Train(),
                                              Evaluate(), Compare())}
