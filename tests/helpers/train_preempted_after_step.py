"""Runs `python -m mind_jax.train ARGS...` and sends this process SIGTERM (a spot preemption
notice) right after step STEP is logged: `python train_preempted_after_step.py STEP ARGS...`.

On a slice, run as one host only: the others get no notice, and must stop with it."""

import os
import runpy
import signal
import sys

from mind_jax.training import _metrics

notice_step = int(sys.argv.pop(1))
write = _metrics.MetricsLog.write


def write_then_notice(self, step, metrics):
  write(self, step, metrics)
  if step == notice_step:
    os.kill(os.getpid(), signal.SIGTERM)


_metrics.MetricsLog.write = write_then_notice
sys.argv[0] = "mind_jax.train"
runpy.run_module("mind_jax.train", run_name="__main__", alter_sys=True)
