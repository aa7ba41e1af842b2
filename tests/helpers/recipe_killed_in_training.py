"""Runs `python -m mind_jax.recipe ARGS...` and SIGKILLs this process once the training of
VARIANT has logged STEP: `python recipe_killed_in_training.py VARIANT STEP ARGS...`.

The kill lands inside the job at a known point, so a test of the rerun does not race it."""

import os
import runpy
import signal
import sys

from mind_jax.training import _metrics

variant, kill_step = sys.argv.pop(1), int(sys.argv.pop(1))
write = _metrics.MetricsLog.write


def write_then_die(self, step, metrics):
  write(self, step, metrics)
  if step == kill_step and os.path.basename(os.path.dirname(self.path)) == variant:
    os.kill(os.getpid(), signal.SIGKILL)


_metrics.MetricsLog.write = write_then_die
sys.argv[0] = "mind_jax.recipe"
runpy.run_module("mind_jax.recipe", run_name="__main__", alter_sys=True)
