"""The training loop's hooks, each alone with a fake state and step, and the loop that runs
them while the next step computes (a fake step: no model, no devices)."""

import math
import os
import signal

import pytest

from mind_jax import Diverged
from mind_jax.training._hooks import (Checkpoint, Export, HeldOutLoss, Hook, Preemption,
                                      RecordMetrics, StopTraining)
from mind_jax.training._loop import advance


class FakeManager:

  def __init__(self):
    self.waits = 0
    self.latest = None

  def wait_until_finished(self):
    self.waits += 1

  def latest_step(self):
    return self.latest


class FakeSpace:

  def __init__(self):
    self.asked = []

  def check(self, step, last_complete):
    self.asked.append((step, last_complete))


def checkpoint_hook(every=3, last_step=10, start=0):
  saved = []
  manager = FakeManager()

  def save(step, state, force):
    saved.append((step, state, force))
    manager.latest = step
  return Checkpoint(every, last_step, manager, save, FakeSpace(), start), saved


def test_the_checkpoint_hook_saves_every_n_steps_and_the_last_one_once():
  hook, saved = checkpoint_hook(every=3, last_step=10)
  assert [s for s in range(1, 11) if hook.due(s)] == [3, 6, 9, 10]
  hook(3, "state 3", {})
  hook(3, "state 3", {}, force=True)  # already saved: not written twice
  assert saved == [(3, "state 3", False)]
  assert hook.space.asked == [(3, 0)] and hook.last_saved == 3
  assert hook.kept("w/checkpoints") == "the last good checkpoint (step 3) is kept in w/checkpoints"
  assert checkpoint_hook()[0].kept("w") == "no checkpoint was written yet"


def test_the_export_hook_leaves_the_last_step_to_the_final_export():
  exported = []
  hook = Export(4, 8, lambda state, step: exported.append((step, state)))
  assert [s for s in range(1, 9) if hook.due(s)] == [4]
  hook(4, "state 4", {})
  assert exported == [(4, "state 4")]
  assert not any(Export(0, 8, None).due(s) for s in range(1, 9))  # 0: never


def test_the_held_out_hook_adds_its_loss_to_the_steps_metrics():
  hook = HeldOutLoss(5, lambda state: state * 0.5)
  metrics = {"loss": 1.0}
  assert [s for s in range(1, 11) if hook.due(s)] == [5, 10]
  hook(5, 3.0, metrics)
  assert metrics == {"loss": 1.0, "eval_loss": 1.5}


def test_the_preemption_hook_on_one_host_saves_and_stops_after_the_notice_only():
  checkpoint, saved = checkpoint_hook(every=3, last_step=10)
  hook = Preemption(1, checkpoint)
  try:
    assert not any(hook.due(s) for s in range(1, 11))
    os.kill(os.getpid(), signal.SIGTERM)
    assert hook.due(4)
    with pytest.raises(StopTraining) as stop:
      hook(4, "state 4", {})
    assert stop.value.step == 4 and saved == [(4, "state 4", True)]
  finally:
    hook.restore()
  assert signal.getsignal(signal.SIGTERM) is hook.previous


def test_on_a_slice_the_hosts_compare_notices_every_n_steps_and_at_checkpoints():
  from mind_jax.training._hooks import PREEMPTION_AGREE_EVERY
  checkpoint, _ = checkpoint_hook(every=3, last_step=25)
  hook = Preemption(2, checkpoint)
  hook.restore()
  due = [s for s in range(1, 26) if hook.due(s)]
  assert due == sorted({*range(3, 26, 3), *range(PREEMPTION_AGREE_EVERY, 26,
                                                  PREEMPTION_AGREE_EVERY), 25})


# --- the loop: a fake step whose metrics log when the host reads them ------------------------

class Value:
  """A device scalar: reading it on the host (np.asarray) is logged."""

  def __init__(self, events, step, value):
    self.events, self.step, self.value = events, step, value

  def copy_to_host_async(self):
    pass

  def __array__(self, dtype=None, copy=None):
    import numpy as np
    self.events.append(("read", self.step))
    return np.asarray(self.value, dtype=dtype)


class Recorder(Hook):

  def __init__(self, every, needs_state, events):
    super().__init__(every)
    self.needs_state, self.events = needs_state, events

  def __call__(self, step, state, metrics):
    self.events.append(("hook", step, state, metrics["loss"]))


def fake_step(events, nan_at=None):
  """The state is the number of steps done; the loss of step n is 1/n (NaN at `nan_at`)."""
  def train_step(state, batch):
    step = state + 1
    events.append(("dispatch", step))
    loss = math.nan if step == nan_at else 1.0 / step
    return step, {"loss": Value(events, step, loss), "tokens": Value(events, step, 4.0)}
  return train_step


def run_loop(events, hooks, start=0, end=6, nan_at=None):
  return advance(fake_step(events, nan_at), start, lambda: None, hooks, start, end,
                 lambda step, loss: Diverged(f"step {step}: the loss is {loss}"),
                 lambda seconds, metrics: {"step_seconds": seconds})


def test_the_next_step_is_dispatched_before_the_last_ones_metrics_are_read():
  events = []
  record = Recorder(1, False, events)
  state, last = run_loop(events, [record], end=4)
  assert state == 4 and last["loss"] == 0.25
  order = []
  for event in events:  # a step's two metrics read as one
    if not order or order[-1] != event[:2]:
      order.append(event[:2])
  assert order == [("dispatch", 1), ("dispatch", 2), ("read", 1), ("hook", 1),
                   ("dispatch", 3), ("read", 2), ("hook", 2), ("dispatch", 4), ("read", 3),
                   ("hook", 3), ("read", 4), ("hook", 4)]
  # Every step's metrics reach the stateless hook, in order, with no state.
  assert [e[1:] for e in events if e[0] == "hook"] == [(n, None, 1.0 / n) for n in range(1, 5)]


def test_a_hook_that_needs_the_state_gets_the_state_of_its_step_before_the_next_is_dispatched():
  events = []
  run_loop(events, [Recorder(1, False, events), Recorder(3, True, events)], end=6)
  hooks = [e for e in events if e[0] == "hook"]
  assert ("hook", 3, 3, 1 / 3) in hooks and ("hook", 6, 6, 1 / 6) in hooks
  assert events.index(("hook", 3, 3, 1 / 3)) < events.index(("dispatch", 4))


@pytest.mark.parametrize("every", [1, 2, 5])
def test_a_diverged_step_stops_the_loop_naming_it_and_is_never_checkpointed(every):
  """Step 5's loss is NaN: the loop stops naming step 5 (read while step 6 runs, or at once
  where step 5 is a checkpoint's), and the checkpoints hold only states before it."""
  events = []
  checkpoint, saved = checkpoint_hook(every=every, last_step=8)
  with pytest.raises(Diverged, match="^step 5: the loss is nan$"):
    run_loop(events, [Recorder(1, False, events), checkpoint], end=8, nan_at=5)
  assert [(step, state) for step, state, _ in saved] == [
      (s, s) for s in range(1, 5) if s % every == 0]
  assert [e[1] for e in events if e[0] == "hook"] == [1, 2, 3, 4]  # step 5 never recorded


def test_the_metrics_hook_writes_each_step_and_moves_the_bar():
  written, moved = [], []

  class Log:
    def write(self, step, metrics):
      written.append((step, metrics))

  class Bar:
    def set_postfix(self, **kwargs):
      moved.append(kwargs)

    def update(self, n):
      moved.append(n)
  hook = RecordMetrics(Log(), Bar())
  assert not hook.needs_state and all(hook.due(s) for s in range(1, 5))
  hook(2, None, {"loss": 0.5})
  assert written == [(2, {"loss": 0.5})] and moved == [{"loss": "0.5000", "refresh": False}, 1]
