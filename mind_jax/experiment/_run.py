"""Runs the recipe: checks everything it will read and write, then each stage in order."""

from __future__ import annotations

import logging
import os

import yaml

from mind_jax._errors import MindJaxError
from mind_jax._hosts import sync_hosts
from mind_jax._outdir import check_output_dir, claim, read_run_record
from mind_jax.experiment import _stages
from mind_jax.experiment._config import RecipeConfig
from mind_jax.experiment._kinds import KINDS, Context, Preempted

log = logging.getLogger("mind_jax.recipe")

RESOLVED_CONFIG = "recipe.yaml"
# What a recipe writes at the top of its workdir (besides run.json).
OWNED = ("stages", "generate", "filter", "train", "evaluate", "report", "superseded",
         RESOLVED_CONFIG)


def _check_workdir(cfg: RecipeConfig) -> None:
  if "://" in cfg.workdir:
    raise MindJaxError(f"workdir={cfg.workdir}: the recipe writes through the file system; "
                       "mount the bucket (gcsfuse) or a shared disk and give that path")
  check_output_dir(cfg.workdir, "workdir", [cfg.generate.input.source])
  record = read_run_record(cfg.workdir)
  if record is None:
    return
  if record.get("job") != "recipe":
    raise MindJaxError(f"workdir={cfg.workdir}: holds the output of mind_jax.{record.get('job')}, "
                       "not an experiment; give the recipe a directory of its own")
  other = record["settings"].get("experiment")
  if other != cfg.experiment:
    raise MindJaxError(f"workdir={cfg.workdir}: holds the experiment {other!r}; continue it "
                       f"with experiment={other}, or give {cfg.experiment!r} its own workdir")


def _check_inputs(stages: list[_stages.Stage]) -> None:
  """Every path the stages read that exists before the recipe starts (models, corpora,
  tokenizers, evaluation files) is checked now, not when its stage comes (hours later)."""
  produced = [s.directory for s in stages]
  for stage in stages:
    try:
      KINDS[stage.kind].check_inputs(stage.config, produced)
    except MindJaxError as e:
      raise MindJaxError(f"{stage.name}: {e}") from e


def _hosts(stages: list[_stages.Stage]) -> tuple[int, int]:
  """(this host, host count). Started on every host of a slice (each with the same command),
  the recipe forms one JAX job of them as its generate and train stages do (their
  `distributed` setting), so that host 0 alone writes the recipe's own files."""
  from mind_jax._hosts import init_hosts, wants_distributed
  wanted = [s.config.distributed for s in stages
            if KINDS[s.kind].slice_wide and wants_distributed(s.config.distributed)]
  return init_hosts(wanted[0]) if wanted else (0, 1)


def _job_of_every_host(stage: _stages.Stage, cfg: RecipeConfig, stages, records, hosts: int) -> dict:
  summary = KINDS[stage.kind].run(stage, Context(cfg, stages, records))
  # Host 0 records the stage done only once every host's part of it is written (the hosts of
  # a slice end a job at different times: per-host generation engines finish their shares).
  sync_hosts(hosts, f"{stage.name} finished")
  return summary


def run(cfg: RecipeConfig, only: list[str] | None = None) -> dict:
  """Runs (or resumes) the experiment; `only` restricts it to those stages (their inputs must
  be done). Returns {stage: what was done}."""
  _check_workdir(cfg)
  stages = _stages.plan(cfg)
  names = [s.name for s in stages]
  for name in only or []:
    if name not in names:
      raise MindJaxError(f"--stages: unknown stage {name!r}; this experiment's: {', '.join(names)}")
  _check_inputs(stages)
  decisions = _stages.decide(cfg.workdir, stages)
  if only:
    for stage in stages:
      if stage.name in only:
        missing = [a for a in stage.after if a not in only and decisions[a] != "skip"]
        if missing:
          raise MindJaxError(f"--stages: {stage.name} reads {', '.join(missing)}, not done yet; "
                             "run that first (or with it)")
  host, hosts = _hosts(stages)
  if hosts > 1:
    one_host = [s.name for s in stages if not KINDS[s.kind].slice_wide and decisions[s.name] != "skip"
                and (not only or s.name in only)]
    if one_host:
      raise MindJaxError(f"{', '.join(one_host)}: single-host stages, and this run spans {hosts} "
                         "hosts; run them on one host, and here only generate or train stages "
                         "(--stages)")
  # Before host 0 writes: every host decided on the same state.
  sync_hosts(hosts, "stages decided")
  if host == 0:
    claim(cfg.workdir, "recipe", {"experiment": cfg.experiment}, overwrite=False, key="workdir",
          remove_owned=None, foreign=[n for n in os.listdir(cfg.workdir) if n in OWNED]
          if os.path.isdir(cfg.workdir) else [])
    with open(os.path.join(cfg.workdir, RESOLVED_CONFIG), "w") as f:
      yaml.safe_dump(cfg.model_dump(mode="json"), f, sort_keys=False)
  records = {s.name: _stages.read_record(cfg.workdir, s) or {} for s in stages}
  done = {}
  for index, stage in enumerate(stages, 1):
    decision = decisions[stage.name]
    if only and stage.name not in only:
      continue
    if decision == "skip":
      log.info("[%d/%d] %s: done earlier, skipped (%s)", index, len(stages), stage.name,
               os.path.relpath(stage.directory, cfg.workdir))
      done[stage.name] = "skipped"
      continue
    if decision == "redo" and host == 0:
      _stages.set_aside(cfg.workdir, stage, records[stage.name]["fingerprint"])
    sync_hosts(hosts, f"{stage.name} set up")  # no host starts in a directory being moved
    log.info("[%d/%d] %s: %s -> %s", index, len(stages), stage.name,
             {"run": "running", "resume": "resuming", "redo": "redoing"}[decision],
             os.path.relpath(stage.directory, cfg.workdir))
    try:
      records[stage.name] = _stages.run_stage(
          cfg.workdir, stage, lambda s: _job_of_every_host(s, cfg, stages, records, hosts),
          write=host == 0)
    except Preempted as e:
      # The machine is going away: stop here, the stage recorded as started, not done, so
      # the same command resumes its training from the checkpoint it just saved.
      log.warning("%s: preempted, saved at step %d; rerun the same command to resume",
                  e.stage, e.step)
      done[stage.name] = "preempted"
      return done
    done[stage.name] = {"run": "ran", "resume": "resumed", "redo": "redone"}[decision]
  return done
