"""The continued-pretraining run: checks, state, the step loop, checkpoints, metrics, export.

WORKDIR holds, all written by this job and listed in its run.json:
  checkpoints/N/   Orbax: the train state (weights, optimizer, step) and each host's data
                   position, every `checkpoint.every` steps and at the end
  metrics.jsonl    one line per step; tensorboard/ the same as events
  hf/              the trained model in Hugging Face format, at the end
Rerunning the same command resumes from the newest complete checkpoint; SIGTERM (a spot VM's
preemption notice) saves at once and exits 0.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import time

from mind_jax._errors import Diverged, MindJaxError
from mind_jax._hosts import init_hosts, sync_hosts
from mind_jax._outdir import check_output_dir, claim, dir_fingerprint, write_run_notes
from mind_jax._progress import progress_bar
from mind_jax.training import _hooks as hooks
from mind_jax.training._config import (TrainConfig, data_pipeline, framing_tokenizer,
                                       model_config)
from mind_jax.training._metrics import METRICS_FILE, TENSORBOARD_DIR, MetricsLog, logged_loss

log = logging.getLogger(__name__)

CHECKPOINTS, EXPORT = "checkpoints", "hf"
OWNED = (CHECKPOINTS, METRICS_FILE, TENSORBOARD_DIR, EXPORT)


def run_settings(cfg: TrainConfig) -> dict:
  """What decides the run's result (the keys marked so in its config): a rerun with other
  values is refused (or, with overwrite, starts afresh). The model is named by its content (a
  preset by name and seed), its other keys sit beside that name."""
  from mind_jax import config as config_lib
  settings = config_lib.deciding(cfg, leave_out=(config_lib.SPEED, config_lib.SOURCE))
  del settings["model"]
  model = (f"{os.path.basename(os.path.normpath(cfg.model.path))}, content "
           f"{dir_fingerprint(cfg.model.path)}" if cfg.model.path else
           f"preset {cfg.model.preset or 'tiny'}, seed {cfg.seed}")
  return {"model": model, **cfg.model.settings_beside_identity(), **settings}


def _extensions(cfg: TrainConfig) -> list[dict]:
  """The run's extensions (`steps` raised on a rerun), the one this run makes last with
  `at_step` None until the checkpoint it resumes from is known."""
  from mind_jax._outdir import read_run_record
  record = read_run_record(cfg.workdir)
  if not record or record.get("job") != "train" or cfg.overwrite:
    return []
  done = list(record.get("notes", {}).get("extended", []))
  before = record["settings"].get("steps")
  if isinstance(before, int) and cfg.steps > before:
    done.append({"from_steps": before, "to_steps": cfg.steps, "at_step": None})
  return done


def _owned(workdir: str) -> list[str]:
  """The names in `workdir` this job writes (present ones)."""
  if not os.path.isdir(workdir):
    return []
  return sorted(n for n in os.listdir(workdir) if n in OWNED or n.startswith(f"{EXPORT}-step"))


def check_batch_divides(cfg: TrainConfig, mesh, hosts: int) -> None:
  """Refuses a batch that does not split evenly over the mesh's batch axes or the hosts."""
  from mind_jax import sharding
  spec = sharding.data_sharding(mesh, "train", ("batch",)).spec[0]
  axes, ways = sharding.spec_axes(spec), sharding.spec_ways(mesh, spec)
  per_micro = cfg.batch_size // cfg.microbatches
  if per_micro % ways:
    raise MindJaxError(f"batch_size={cfg.batch_size}: {per_micro} sequences per microbatch do "
                       f"not divide over the mesh's batch axes ({'x'.join(axes)}={ways})")
  if cfg.batch_size % hosts:
    raise MindJaxError(f"batch_size={cfg.batch_size}: not divisible by the {hosts} hosts")


def _checkpoint_manager(cfg: TrainConfig):
  import orbax.checkpoint as ocp
  directory = os.path.abspath(os.path.join(cfg.workdir, CHECKPOINTS))
  leftovers = [n for n in os.listdir(directory) if "tmp" in n] if os.path.isdir(directory) else []
  for name in leftovers:
    log.warning("%s/%s: a checkpoint cut off while it was written; skipped", directory, name)
  options = ocp.CheckpointManagerOptions(max_to_keep=cfg.checkpoint.keep,
                                         enable_async_checkpointing=cfg.checkpoint.async_save)
  return ocp.CheckpointManager(directory, options=options)


def _save(manager, batches, step: int, state, force: bool = False) -> None:
  import grain
  import orbax.checkpoint as ocp
  manager.save(step, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(batches.checkpoint_item())))


def _export(trainer, state, tokenizer, out_dir: str, dtype: str | None) -> None:
  from mind_jax.ckpts import save_pretrained
  save_pretrained(trainer.model(state), out_dir, tokenizer, dtype=dtype, progress=False,
                  overwrite=True)


def advance(train_step, state, next_batch, hooks, start: int, end: int, diverged, timing):
  """Steps `start` + 1 .. `end`; returns the state and the last step's metrics.

  Each step is dispatched before the previous step's metrics are read, so the devices go
  from one step to the next while the host records the last one. After a step whose state a
  due hook needs, the loop waits for it instead: the next step would take (donate) the state,
  and the step's metrics are read and found finite before any hook sees it, so a checkpoint
  never holds a diverged state. `diverged(step, loss)` is the exception a non-finite loss
  raises (one step after it was computed, at the latest); `timing(seconds, metrics)` the
  fields the step's duration gives."""
  from mind_jax.training._step import host_metrics
  last_read = time.perf_counter()
  last_metrics = None

  def finish(step, device_metrics, began, state):
    nonlocal last_read, last_metrics
    metrics = host_metrics(device_metrics)  # waits for the step
    now = time.perf_counter()
    seconds, last_read = now - max(began, last_read), now
    if not math.isfinite(metrics["loss"]):
      raise diverged(step, metrics["loss"])
    metrics.update(timing(seconds, metrics))
    for hook in hooks:
      if hook.due(step) and (state is not None or not hook.needs_state):
        hook(step, state if hook.needs_state else None, metrics)
    last_metrics = metrics

  pending = None
  for step in range(start + 1, end + 1):
    batch = next_batch()
    began = time.perf_counter()
    state, device_metrics = train_step(state, batch)
    for value in device_metrics.values():
      value.copy_to_host_async()
    if pending:
      finish(*pending, None)
    pending = (step, device_metrics, began)
    if any(hook.needs_state and hook.due(step) for hook in hooks):
      finish(*pending, state)
      pending = None
  if pending:
    finish(*pending, None)
  return state, last_metrics


def run(cfg: TrainConfig) -> dict:
  """Trains as `cfg` says, resuming what WORKDIR holds; returns a summary."""
  import jax
  import orbax.checkpoint as ocp
  import grain
  from mind_jax._devices import peak_flops
  from mind_jax.ckpts import load_model
  from mind_jax.data import DeviceBatches
  from mind_jax.training._step import Trainer, flat_params, step_flops

  cfg.runtime.apply()
  host, hosts = init_hosts(cfg.distributed)
  if "://" in cfg.workdir:
    raise MindJaxError(f"workdir={cfg.workdir}: training writes its workdir through the file "
                       "system; on a slice, mount the bucket (gcsfuse) or a Filestore share on "
                       "every host and give that path")
  inputs = [s.path for s in cfg.data.sources] + ([cfg.model.path] if cfg.model.path else [])
  check_output_dir(cfg.workdir, "workdir", inputs)
  tokenizer = framing_tokenizer(cfg)
  config = model_config(cfg)
  mesh = cfg.mesh.build()
  check_batch_divides(cfg, mesh, hosts)
  mixture, _, dataset = data_pipeline(cfg, host, hosts, tokenizer)
  held_out = data_pipeline(cfg, host, hosts, tokenizer, held_out=True)[2] if cfg.eval.every else None
  foreign = [name for name in _owned(cfg.workdir)]

  def remove_owned(record):
    del record
    if host:  # one host deletes; the others would race it on a shared workdir
      return
    for name in _owned(cfg.workdir):
      path = os.path.join(cfg.workdir, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)

  extensions = _extensions(cfg)
  claim(cfg.workdir, "train", run_settings(cfg), overwrite=cfg.overwrite, key="workdir",
        remove_owned=remove_owned, foreign=foreign, grows=("steps",),
        notes={"tokenizer": tokenizer.source, "sources": [s.name for s in mixture.sources],
               **({"extended": extensions} if extensions else {})})
  # Nobody looks for checkpoints before host 0 has removed a replaced run's.
  sync_hosts(hosts, "train: workdir claimed")

  trainer = Trainer.create(config, mesh, cfg.optimizer.build(cfg.steps), microbatches=cfg.microbatches,
                           z_loss=cfg.z_loss, loss_chunk=cfg.loss_chunk, seed=cfg.seed)
  batches = DeviceBatches(dataset, mesh, "train", cfg.data.prefetch)
  manager = _checkpoint_manager(cfg)
  start = manager.latest_step() or 0
  export_dir = os.path.join(cfg.workdir, EXPORT)
  if start >= cfg.steps and os.path.exists(os.path.join(export_dir, "config.json")):
    batches.close()
    manager.close()
    loss = logged_loss(cfg.workdir, start)
    log.info("the run is already complete: step %d of %d in %s (exported to %s); nothing to "
             "train", start, cfg.steps, cfg.workdir, export_dir)
    return {"workdir": os.path.abspath(cfg.workdir), "start_step": start, "steps": cfg.steps,
            "export": export_dir, "already_complete": True, "final_loss": loss}
  extending = bool(extensions) and extensions[-1]["at_step"] is None
  if extending:
    extensions[-1]["at_step"] = start
    write_run_notes(cfg.workdir, {"extended": extensions}, enabled=host == 0)
    log.info("extending the run from %d to %d steps at step %d: from here the learning rate "
             "follows the schedule for %d steps (warmup unchanged), as if the run had been "
             "planned at that length", extensions[-1]["from_steps"], cfg.steps, start, cfg.steps)
  if start:
    log.info("resuming from %s/%s/%d", cfg.workdir, CHECKPOINTS, start)
    restored = manager.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(trainer.abstract_state()),
        data=grain.checkpoint.CheckpointRestore(batches.checkpoint_item())))
    state = restored.state
  elif cfg.model.path:
    model, _, _ = load_model(cfg.model, mesh, "train", seed=cfg.seed)
    state = trainer.init_state(flat_params(model))
    del model
  else:
    log.info("initialising the %s preset from scratch (seed %d)", cfg.model.preset or "tiny",
             cfg.seed)
    state = trainer.init_state(trainer.init_params(cfg.seed))

  peak = cfg.peak_flops or peak_flops(jax.devices()[0].device_kind)
  flops_per_step = step_flops(config, cfg.tokens_per_step, cfg.data.seq_len)

  def timing(seconds, metrics):
    return {"step_seconds": seconds, "tokens_per_s": metrics["tokens"] / seconds,
            "mfu": flops_per_step / seconds / (peak * mesh.size) if peak else None}

  metrics_log = MetricsLog(cfg.workdir, start, enabled=host == 0)
  if extending:
    metrics_log.mark(start, {"event": "extended", "from_steps": extensions[-1]["from_steps"],
                             "to_steps": cfg.steps})
  checkpoint = hooks.Checkpoint(cfg.checkpoint.every, cfg.steps, manager,
                                functools.partial(_save, manager, batches),
                                hooks.Space(cfg.workdir, state), start)
  preemption = hooks.Preemption(hosts, checkpoint)
  summary = {"workdir": os.path.abspath(cfg.workdir), "start_step": start}
  if start < cfg.steps:  # refused before a step is trained where not one checkpoint fits
    checkpoint.space.check(
        min(cfg.steps, (start // cfg.checkpoint.every + 1) * cfg.checkpoint.every), start)

  def diverged(step, loss):
    return Diverged(f"step {step}: the loss is {loss}; stopped; "
                    f"{checkpoint.kept(f'{cfg.workdir}/{CHECKPOINTS}')}; "
                    "lower optimizer.learning_rate or check the data")

  def export_step(state, step):
    _export(trainer, state, tokenizer, os.path.join(cfg.workdir, f"{EXPORT}-step{step}"),
            cfg.export.dtype)

  metrics = None
  try:
    with progress_bar(cfg.steps, "train", "step", enabled=host == 0) as bar:
      bar.update(start)
      loop_hooks = [
          hooks.HeldOutLoss(cfg.eval.every if held_out is not None else 0,
                            lambda state: hooks.held_out_loss(trainer, state, held_out,
                                                              cfg.eval.batches)),
          hooks.RecordMetrics(metrics_log, bar),
          checkpoint,
          hooks.Export(cfg.export.every, cfg.steps, export_step),
          preemption,
      ]
      state, metrics = advance(trainer.train_step, state, lambda: next(batches)[0], loop_hooks,
                               start, cfg.steps, diverged, timing)
    manager.wait_until_finished()
    _export(trainer, state, tokenizer, os.path.join(cfg.workdir, EXPORT), cfg.export.dtype)
  except hooks.StopTraining as stop:
    return {**summary, "stopped_at": stop.step, "preempted": True}
  finally:
    preemption.restore()
    metrics_log.close()
    batches.close()
    manager.close()
  return {**summary, "steps": cfg.steps, "export": os.path.join(cfg.workdir, EXPORT),
          "final_loss": metrics["loss"] if metrics else logged_loss(cfg.workdir, start)}
