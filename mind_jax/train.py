"""Continued pretraining of a Llama model on the mixed MIND data, sharded over a device mesh.

  python -m mind_jax.train                      # the embedded default: a few CPU minutes
  python -m mind_jax.train --config configs/train-llama3.1-8b.yaml
  python -m mind_jax.train --config configs/train-llama3.1-8b.yaml steps=20000 optimizer.learning_rate=1e-4

With no config it trains the tiny preset from scratch on the bundled CHAMP problems (raw
text) into ./mind_train/; the loss falls visibly within the run. Initialisation comes from
model.path (an HF directory or a mind_jax Orbax checkpoint, streamed onto the mesh with the
train sharding rules) or, without one, from a preset's random weights.

WORKDIR (workdir=...) gets Orbax checkpoints (checkpoints/), metrics.jsonl and TensorBoard
events (tensorboard/), and the trained model in Hugging Face format (hf/). Rerunning the
same command resumes from the newest complete checkpoint with the data where it stopped;
SIGTERM saves at once and exits 0. A larger `steps` extends a run (the learning rate from
there follows the schedule for the new length). A workdir holding a run with other settings is
refused (overwrite=true replaces it). `python -m mind_jax.mix` shows what the data section feeds.
"""

from __future__ import annotations

import sys

from mind_jax import config as config_lib
from mind_jax._errors import run_cli
from mind_jax._progress import setup_logging
from mind_jax.training import TrainConfig


def main(argv=None) -> int:
  parser = config_lib.argument_parser("python -m mind_jax.train", __doc__, TrainConfig)
  parser.add_argument("--workdir", help="same as workdir=DIR")
  parser.add_argument("--steps", type=int, help="same as steps=N")
  parser.add_argument("--overwrite", action="store_true", help="same as overwrite=true")
  args = parser.parse_args(argv)
  setup_logging(args.verbose)
  flagged = config_lib.flag_overrides(args, {"workdir": "workdir", "steps": "steps"})
  flagged += config_lib.switch_overrides(args, {"overwrite": "overwrite=true"})

  def job():
    from mind_jax.training import run
    cfg = config_lib.load_config(TrainConfig, args.config,
                                 config_lib.combine_overrides(args.overrides, flagged))
    summary = run(cfg)
    for key, value in summary.items():
      print(f"  {key}: {value}")
  return run_cli(job)


if __name__ == "__main__":
  sys.exit(main())
