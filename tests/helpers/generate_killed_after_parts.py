"""Runs `python -m mind_jax.generate ARGS...` and SIGKILLs this process right after it has
written its N-th part file: `python generate_killed_after_parts.py N ARGS...`.

A kill timed from outside races the job (on a fast machine the parts appear in one burst at
the end), so the kill lands inside the job, at a known point, mid-run."""

import os
import runpy
import signal
import sys

from mind_jax.mind import _writer

parts_before_kill = int(sys.argv.pop(1))
flush = _writer.PartWriter.flush


def flush_then_die(self):
  path = flush(self)
  if path is not None and self.next_part >= parts_before_kill:
    os.kill(os.getpid(), signal.SIGKILL)
  return path


_writer.PartWriter.flush = flush_then_die
sys.argv[0] = "mind_jax.generate"
runpy.run_module("mind_jax.generate", run_name="__main__", alter_sys=True)
