"""What the training loop does besides stepping, each at its own cadence: held-out loss,
the metrics record, checkpoints, exports, the preemption stop.

A hook is called as `hook(step, state, metrics)` after step `step` whenever `hook.due(step)`.
`metrics` are the step's host values, already checked finite (a diverged step reaches no
hook), and a hook may add to them. A hook with `needs_state` is given the state after that
step, which the loop then keeps until the hook returns (it waits for the step); the others
get None and run while the next step computes.
"""

from __future__ import annotations

import logging
import signal

from mind_jax._errors import check_space

log = logging.getLogger(__name__)

# On a slice the hosts compare preemption notices every this many steps and at each
# checkpoint, not after every step: comparing is an all-gather that waits for the step, so
# each comparison gives up one step's overlap with the host's work on the last one. At 10
# that cost is a tenth of a per-step comparison's, and a notice waits at most 10 steps: inside
# a spot VM's 30 s notice while a step takes under about 2 s (saving needs the rest). Where
# steps are slower a late notice loses the steps since the last checkpoint, never a
# checkpoint: the rerun resumes from the last complete one.
PREEMPTION_AGREE_EVERY = 10


class Hook:
  """Runs after every `every`-th step (0: never)."""

  needs_state = True

  def __init__(self, every: int):
    self.every = every

  def due(self, step: int) -> bool:
    return bool(self.every) and step % self.every == 0

  def __call__(self, step: int, state, metrics: dict) -> None:
    raise NotImplementedError


class StopTraining(Exception):  # noqa: N818  not an error: the run stops where it saved
  """Raised by a hook: the loop ends after `step`, which is saved."""

  def __init__(self, step: int):
    super().__init__(step)
    self.step = step


class HeldOutLoss(Hook):
  """metrics["eval_loss"]: `loss(state)`, the mean token loss over the held-out batches."""

  def __init__(self, every: int, loss):
    super().__init__(every)
    self.loss = loss

  def __call__(self, step, state, metrics):
    metrics["eval_loss"] = self.loss(state)


class RecordMetrics(Hook):
  """Every step's metrics: metrics.jsonl, TensorBoard, the progress bar."""

  needs_state = False

  def __init__(self, metrics_log, bar):
    super().__init__(1)
    self.metrics_log, self.bar = metrics_log, bar

  def __call__(self, step, state, metrics):
    self.metrics_log.write(step, metrics)
    self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
    self.bar.update(1)


class Space:
  """Whether the workdir holds one more checkpoint, asked before each save: a full disk then
  stops the run in one line with its last checkpoint complete, instead of failing inside the
  asynchronous writer (tracebacks from its threads, a partial checkpoint set aside)."""

  MARGIN = 1.1  # the state's bytes plus the iterator's state and the writer's metadata

  def __init__(self, workdir: str, state):
    import jax
    self.workdir = workdir
    self.need = int(sum(x.nbytes for x in jax.tree.leaves(state)) * self.MARGIN)

  def check(self, step: int, last_complete: int) -> None:
    """Every host asks (they share the workdir, so they agree) and stops alike."""
    check_space(self.workdir, self.need, "workdir", f"the checkpoint of step {step}",
                f"the last complete checkpoint is step {last_complete}" if last_complete else
                "no checkpoint was written yet")


class Checkpoint(Hook):
  """Saves the state and the data position every `every` steps and after the last one.
  `save(step, state, force)` writes through `manager` (an Orbax CheckpointManager)."""

  def __init__(self, every: int, last_step: int, manager, save, space: Space, start: int):
    super().__init__(every)
    self.last_step, self.manager, self.save, self.space = last_step, manager, save, space
    self.last_saved = start

  def due(self, step):
    return super().due(step) or step == self.last_step

  def __call__(self, step, state, metrics=None, force=False):
    if step == self.last_saved:
      return
    self.manager.wait_until_finished()  # the previous checkpoint's bytes are on disk
    self.space.check(step, self.last_saved)
    self.save(step, state, force)
    self.last_saved = step

  def kept(self, directory: str) -> str:
    """Where the last good checkpoint is, for a run stopping on an error."""
    self.manager.wait_until_finished()
    return (f"the last good checkpoint (step {self.last_saved}) is kept in {directory}"
            if self.manager.latest_step() is not None else "no checkpoint was written yet")


class Export(Hook):
  """`export(state, step)` every `every` steps, but not after the last (the run's own export
  follows it)."""

  def __init__(self, every: int, last_step: int, export):
    super().__init__(every)
    self.last_step, self.export = last_step, export

  def due(self, step):
    return super().due(step) and step != self.last_step

  def __call__(self, step, state, metrics):
    self.export(state, step)


class Preemption(Hook):
  """SIGTERM (a spot VM's notice) saves the state where the hosts agree and stops the run.

  One host stops after the step the notice follows. On a slice any host's notice stops all,
  at the same step (the save is a collective every host enters): they compare notices every
  PREEMPTION_AGREE_EVERY steps and at each checkpoint, not every step."""

  def __init__(self, hosts: int, checkpoint: Checkpoint):
    super().__init__(1 if hosts == 1 else PREEMPTION_AGREE_EVERY)
    self.hosts, self.checkpoint = hosts, checkpoint
    self.requested = False
    self.previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def due(self, step):
    if self.hosts == 1:
      return self.requested
    return super().due(step) or self.checkpoint.due(step)

  def _agreed(self) -> bool:
    if self.hosts == 1:
      return self.requested
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(self.requested))).any())

  def __call__(self, step, state, metrics):
    if not self._agreed():
      return
    log.warning("SIGTERM: saving step %d and stopping", step)
    self.checkpoint(step, state, force=True)
    self.checkpoint.manager.wait_until_finished()
    raise StopTraining(step)

  def restore(self):
    signal.signal(signal.SIGTERM, self.previous)


def held_out_loss(trainer, state, dataset, batches: int) -> float:
  """The mean token loss over the first `batches` batches of the held-out data."""
  from mind_jax.data import DeviceBatches
  reader = DeviceBatches(dataset, trainer.mesh, "train", prefetch=1)
  try:
    nll = weight = 0.0
    for _ in range(batches):
      batch, _ = next(reader)
      batch_nll, batch_weight = trainer.eval_step(state["params"], batch)
      nll, weight = nll + float(batch_nll), weight + float(batch_weight)
  finally:
    reader.close()
  return nll / max(weight, 1.0)
