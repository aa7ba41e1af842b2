"""Runs `python -m mind_jax.recipe ARGS...` and SIGKILLs this process once the training of
VARIANT has logged STEP and an earlier checkpoint of it is complete:
`python recipe_killed_in_training.py VARIANT STEP ARGS...`.

The kill lands inside the job at a known point, so a test of the rerun does not race it: not
before the step, and not while an asynchronous save (which a fast machine may still be writing
a few steps later) is unfinished, so the rerun always has a checkpoint to resume from."""

import os
import runpy
import signal
import sys
import time

from mind_jax.training import _metrics

variant, kill_step = sys.argv.pop(1), int(sys.argv.pop(1))
write = _metrics.MetricsLog.write


def write_then_die(self, step, metrics):
  write(self, step, metrics)
  if step == kill_step and os.path.basename(os.path.dirname(self.path)) == variant:
    checkpoints = os.path.join(os.path.dirname(self.path), "checkpoints")
    deadline = time.monotonic() + 120
    while not any(n.isdigit() for n in os.listdir(checkpoints)) and time.monotonic() < deadline:
      time.sleep(0.01)  # Orbax renames a checkpoint to its step once it is complete
    os.kill(os.getpid(), signal.SIGKILL)


_metrics.MetricsLog.write = write_then_die
sys.argv[0] = "mind_jax.recipe"
runpy.run_module("mind_jax.recipe", run_name="__main__", alter_sys=True)
