"""The recipe's stages: what each one runs, where it writes, what it depends on, and when a
finished one may be skipped.

Every stage has a fingerprint: the settings that decide its output (its section less the keys
its schema marks speed-only, e.g. mesh, slots, workers: experiment/_kinds.py) and the
fingerprints of the stages it reads. WORKDIR/stages/NAME.json records it when the stage starts and again, marked
done, when it ends. A rerun skips a done stage with the same fingerprint, resumes an unfinished
one through the job's own resume logic, and redoes (after deleting its directory, which only
the recipe wrote) a stage whose fingerprint changed, and with it everything downstream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Callable, NamedTuple

from mind_jax._atomic import write_json
from mind_jax._errors import MindJaxError
from mind_jax._outdir import differences, flatten
from mind_jax._paths import is_within
from mind_jax.experiment import _config as rc
from mind_jax.experiment._kinds import KINDS

log = logging.getLogger("mind_jax.recipe")

STAGES_DIR, SUPERSEDED = "stages", "superseded"

@dataclasses.dataclass
class Stage:
  name: str                      # generate, filter-chunk200, train/mind, ...
  kind: str                      # a key of KINDS: generate, filter, report, train, ...
  directory: str                 # where it writes, inside WORKDIR
  config: Any                    # the job's own config, paths filled in (compare: None)
  after: list[str]               # names of the stages it reads
  variants: list[str]            # the variants it serves
  settings: dict = dataclasses.field(default_factory=dict)
  fingerprint: str = ""

  @property
  def record_path(self) -> str:
    return self.name.replace("/", ".") + ".json"


def plan(cfg: rc.RecipeConfig) -> list[Stage]:
  """Every stage of the experiment, upstream first, with its directory and fingerprint.

  Fingerprints are those of a plan rooted at a placeholder, so a work dir moved or copied
  elsewhere is still done."""
  anywhere = {s.name: s for s in _plan_at(cfg, WORKDIR)}
  stages = _plan_at(cfg, cfg.workdir)
  for stage in stages:
    stage.settings, stage.fingerprint = anywhere[stage.name].settings, anywhere[stage.name].fingerprint
  return stages


WORKDIR = "WORKDIR"


class Conversations(NamedTuple):
  """The stages that make a variant's conversations: those it trains on as @generated and as
  @conversations."""
  generated: Stage
  filtered: Stage


@dataclasses.dataclass
class Plan:
  """The stages of a plan under `root` as they are added, by name; `base`: the generate and
  filter settings no variant overrides, whose stages keep the plain names."""
  root: str
  base: dict
  stages: dict[str, Stage] = dataclasses.field(default_factory=dict)

  def add(self, stage: Stage) -> Stage:
    self.stages[stage.name] = stage
    return stage

  def shared(self, kind: str, variant, config, after: list[str]) -> Stage:
    """One stage per distinct settings: `kind` when they are the base's, else kind-VARIANT
    after the first variant that needs them."""
    settings = KINDS[kind].result_settings(config)
    key = json.dumps([settings, after], sort_keys=True)
    for stage in self.stages.values():
      if stage.kind == kind and json.dumps([stage.settings, stage.after], sort_keys=True) == key:
        stage.variants.append(variant.name)
        return stage
    is_base = settings == self.base[kind] and all("-" not in a for a in after)
    name = kind if is_base else f"{kind}-{variant.name}"
    return self.add(Stage(name, kind, os.path.join(self.root, name), config.model_copy(deep=True),
                          after, [variant.name], settings=settings))


def _plan_at(cfg: rc.RecipeConfig, root: str) -> list[Stage]:
  draft = Plan(root, {kind: KINDS[kind].result_settings(getattr(cfg, kind))
                      for kind in ("generate", "filter")})
  conversations = {}
  for variant in cfg.variants:
    made = _conversation_stages(cfg, variant, draft)
    if made:
      conversations[variant.name] = made
  for variant in cfg.variants:
    draft.add(_train_stage(cfg, variant, root, conversations.get(variant.name)))
  for variant in cfg.variants:
    draft.add(_evaluate_stage(cfg, variant, root))
  draft.add(_compare_stage(cfg, root, draft.stages))
  return _fingerprinted(draft.stages.values())


def _conversation_stages(cfg: rc.RecipeConfig, variant, draft: Plan) -> Conversations | None:
  """The generate, filter and dataset-report stages the variant trains on, added to `draft`
  (or found there, shared with an earlier variant); None if it trains on no conversations."""
  train = rc.stage_config(cfg, "train", variant)
  used = {s.path for s in [*train.data.sources, *train.eval.sources]}
  if not used & {rc.GENERATED, rc.CONVERSATIONS}:
    if variant.generate or variant.filter:
      raise MindJaxError(f"variants ({variant.name}): overrides generate or filter but trains "
                         f"on neither {rc.GENERATED} nor {rc.CONVERSATIONS}")
    return None
  generate = draft.shared("generate", variant, rc.stage_config(cfg, "generate", variant), [])
  generate.config.output.dir = generate.directory
  filtered = draft.shared("filter", variant, rc.stage_config(cfg, "filter", variant),
                          [generate.name])
  filtered.config.input, filtered.config.out = generate.directory, filtered.directory
  report_name = "dataset-report" + filtered.name.removeprefix("filter")
  if report_name not in draft.stages:
    report_cfg = cfg.report.model_copy(deep=True)
    report_cfg.dir = filtered.directory
    report_cfg.out = os.path.join(filtered.directory, "report")
    draft.add(Stage(report_name, "report", report_cfg.out, report_cfg, [filtered.name],
                    filtered.variants, settings=KINDS["report"].result_settings(report_cfg)))
  return Conversations(generate, filtered)


def _train_stage(cfg: rc.RecipeConfig, variant, root: str, made: Conversations | None) -> Stage:
  """The variant's training, its sources' recipe paths (@corpus, ...) made real ones."""
  train = rc.stage_config(cfg, "train", variant).model_copy(deep=True)
  train.workdir = os.path.join(root, "train", variant.name)
  for sources, key in ((train.data.sources, "data.sources"), (train.eval.sources, "eval.sources")):
    for index, source in enumerate(sources):
      where = f"variants ({variant.name}).train.{key}[{index}].path"
      if source.path == rc.CORPUS:
        source.path = cfg.generate.input.source
        source.text_field = source.text_field or cfg.generate.input.text_field
        source.split, source.data_dir = cfg.generate.input.split, cfg.generate.input.data_dir
      elif source.path in (rc.GENERATED, rc.CONVERSATIONS):
        source.path = (made.generated if source.path == rc.GENERATED else made.filtered).directory
      elif source.path.startswith("@"):
        raise MindJaxError(f"{where}={source.path}: unknown; the recipe's paths are "
                           f"{', '.join(rc.SYMBOLS)}")
  after = [made.filtered.name] if made else []
  return Stage(f"train/{variant.name}", "train", train.workdir, train, after, [variant.name],
               settings=KINDS["train"].result_settings(train))


def _evaluate_stage(cfg: rc.RecipeConfig, variant, root: str) -> Stage:
  evaluate = cfg.evaluate.model_copy(deep=True)
  evaluate.model = os.path.join(root, "train", variant.name, "hf")
  evaluate.out = os.path.join(root, "evaluate", variant.name)
  return Stage(f"evaluate/{variant.name}", "evaluate", evaluate.out, evaluate,
               [f"train/{variant.name}"], [variant.name],
               settings=KINDS["evaluate"].result_settings(evaluate))


def _compare_stage(cfg: rc.RecipeConfig, root: str, stages: dict[str, Stage]) -> Stage:
  names = [v.name for v in cfg.variants]
  return Stage(
      "compare", "compare", os.path.join(root, "report"), None,
      [f"evaluate/{n}" for n in names] + [s for s in stages if s.startswith("dataset-report")], names,
      settings={"baseline": cfg.baseline_name, "variants": names,
                "descriptions": [v.description for v in cfg.variants]})


def _fingerprinted(stages) -> list[Stage]:
  """`stages` upstream first, each fingerprint covering its settings and its inputs'."""
  order = list(KINDS)
  stages = {s.name: s for s in sorted(stages, key=lambda s: order.index(s.kind))}
  for stage in stages.values():
    stage.settings = {**stage.settings, "after": {a: stages[a].fingerprint for a in stage.after}}
    stage.fingerprint = hashlib.sha256(
        json.dumps(stage.settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
  return list(stages.values())


def read_record(workdir: str, stage: Stage) -> dict | None:
  path = os.path.join(workdir, STAGES_DIR, stage.record_path)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise MindJaxError(f"{path}: unreadable stage record ({e}); move {stage.directory} and it "
                       "aside to redo the stage") from e


def write_record(workdir: str, stage: Stage, record: dict) -> None:
  os.makedirs(os.path.join(workdir, STAGES_DIR), exist_ok=True)
  write_json(os.path.join(workdir, STAGES_DIR, stage.record_path), record)


def decide(workdir: str, stages: list[Stage]) -> dict[str, str]:
  """{stage: skip | resume | run | redo}, with the reason of each redo logged."""
  decisions = {}
  for stage in stages:
    record = read_record(workdir, stage)
    if record is None:
      decisions[stage.name] = "run"
    elif record["fingerprint"] == stage.fingerprint or _same_as_recorded(stage, record, decisions):
      decisions[stage.name] = "skip" if record.get("done") else "resume"
    else:
      changed = [c for c in differences(record["settings"], flatten(stage.settings))
                 if not c.startswith("after.")]
      upstream = [a for a in stage.after if decisions.get(a) == "redo"]
      why = (f"settings changed: {', '.join(changed)}" if changed else
             f"its input {', '.join(upstream) or 'changed'} is redone")
      log.warning("%s: %s; redoing it and what reads it", stage.name, why)
      decisions[stage.name] = "redo"
  return decisions


def _same_as_recorded(stage: Stage, record: dict, decisions: dict[str, str]) -> bool:
  """Whether a record under another fingerprint holds this stage's settings all the same: made
  by a version that fingerprinted other keys (before the config's marks decided them, say).
  Every key both hold is equal, a key only the plan holds is at its default (as it was for the
  run that made the record; keys only the record holds no longer decide), and every stage it
  reads is kept."""
  if any(decisions.get(a) not in ("skip", "resume") for a in stage.after):
    return False
  recorded, planned = record["settings"], flatten(stage.settings)
  if any(not key.startswith("after.") for key in
         (c.split(" (")[0].split("[")[0] for c in differences(recorded, planned))):
    return False
  added = [key for key in planned.keys() - recorded.keys() if not key.startswith("after.")]
  if added:
    if stage.config is None:  # compare: its settings are its own, not a schema's
      return False
    defaults = flatten(KINDS[stage.kind].result_settings(type(stage.config)()))
    if any(key not in defaults or defaults[key] != planned[key] for key in added):
      return False
  log.info("%s: recorded by an earlier version under fingerprint %s, same settings; kept",
           stage.name, record["fingerprint"])
  return True


def set_aside(workdir: str, stage: Stage, old_fingerprint: str) -> str | None:
  """Moves a stage's earlier output to WORKDIR/superseded/NAME.FINGERPRINT/ before the stage is
  redone: a changed key must not cost weeks of generation by mistake (the recipe wrote the
  directory, its record says so, and it lies inside the workdir). Delete it when sure."""
  if not os.path.isdir(stage.directory):
    return None
  if not is_within(os.path.realpath(stage.directory), os.path.realpath(workdir)):
    raise MindJaxError(f"{stage.directory}: outside the workdir; not moving it")
  target = os.path.join(workdir, SUPERSEDED, f"{stage.record_path[:-5]}.{old_fingerprint}")
  if os.path.exists(target):  # the same settings set aside before: the same output again
    shutil.rmtree(target)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  os.rename(stage.directory, target)
  log.warning("%s: its earlier output is kept in %s", stage.name, os.path.relpath(target, workdir))
  return target


def run_stage(workdir: str, stage: Stage, job: Callable[[Stage], dict], write: bool = True) -> dict:
  """Runs one stage, recording its start and (with the job's summary) its end; `write`: this
  process writes the record (host 0 of a slice)."""
  previous = read_record(workdir, stage) or {}
  same = previous.get("fingerprint") == stage.fingerprint
  record = {"stage": stage.name, "kind": stage.kind, "fingerprint": stage.fingerprint,
            "settings": flatten(stage.settings), "directory": os.path.relpath(stage.directory, workdir),
            "after": stage.after, "variants": stage.variants, "done": False,
            "attempts": (previous.get("attempts", 0) if same else 0) + 1,
            "wall_seconds": previous.get("wall_seconds", 0.0) if same else 0.0,
            "device_seconds": previous.get("device_seconds", 0.0) if same else 0.0}
  if write:
    write_record(workdir, stage, record)
  began = time.perf_counter()
  # A killed attempt's time is lost; what is recorded is the time of attempts that ended.
  summary = job(stage)
  seconds = time.perf_counter() - began
  devices = KINDS[stage.kind].devices(stage.config)
  import jax
  record.update(done=True, summary=json.loads(json.dumps(summary, default=str)),
                wall_seconds=record["wall_seconds"] + seconds,
                device_seconds=record["device_seconds"] + seconds * devices,
                devices=devices, device_kind=jax.devices()[0].device_kind if devices else None)
  if write:
    write_record(workdir, stage, record)
  return record
