"""Per-step metrics: WORKDIR/metrics.jsonl (one JSON object per step) and TensorBoard events.

On a resume the JSONL file is cut back to the restored step first, so it ends up exactly as an
uninterrupted run's (steps after the checkpoint are written again, not twice). Only process 0
writes.
"""

from __future__ import annotations

import json
import os
import time

from mind_jax._atomic import atomic_open

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Fields that depend on the machine's speed, not on the run's arithmetic.
TIMING_FIELDS = ("step_seconds", "tokens_per_s", "mfu")


def logged_loss(workdir: str, step: int) -> float | None:
  """The training loss metrics.jsonl holds for `step`, or None where it holds none."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    losses = [record.get("loss") for record in map(json.loads, filter(str.strip, f))
              if record.get("step") == step]
  return losses[-1] if losses else None


class MetricsLog:

  def __init__(self, workdir: str, resume_step: int, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    if not enabled:
      return
    kept = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
    with atomic_open(self.path, "w") as f:
      f.writelines(kept)
    self.file = open(self.path, "a")  # noqa: SIM115  held for the run
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    self.events = EventFileWriter(os.path.join(workdir, TENSORBOARD_DIR))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    self.file.write(json.dumps({"step": step, **metrics}) + "\n")
    self.file.flush()
    from tensorboard.compat.proto import event_pb2, summary_pb2
    values = [summary_pb2.Summary.Value(tag=f"train/{k}", simple_value=float(v))
              for k, v in metrics.items() if isinstance(v, (int, float))]
    self.events.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                          summary=summary_pb2.Summary(value=values)))

  def mark(self, step: int, event: dict) -> None:
    """An event line (no loss; `read_metrics` leaves it out) and, in TensorBoard, the run's
    planned steps from `step` on."""
    if not self.enabled:
      return
    self.file.write(json.dumps({"step": step, **event}) + "\n")
    self.file.flush()
    from tensorboard.compat.proto import event_pb2, summary_pb2
    value = summary_pb2.Summary.Value(tag="train/planned_steps",
                                      simple_value=float(event.get("to_steps", 0)))
    self.events.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                          summary=summary_pb2.Summary(value=[value])))

  def close(self) -> None:
    if self.enabled:
      self.file.close()
      self.events.close()


def read_metrics(workdir: str) -> list[dict]:
  """The per-step records of metrics.jsonl (event lines, such as an extension, left out)."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [r for r in map(json.loads, filter(str.strip, f)) if "event" not in r]
