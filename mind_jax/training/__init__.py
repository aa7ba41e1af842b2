"""Continued pretraining: the training configuration and what it reads, the loop and its step."""

from etils import epy

from mind_jax.training._config import (OptimizerSection, TrainConfig, data_pipeline,
                                       framing_tokenizer)
from mind_jax.training._metrics import read_metrics

# The loop and the step need Flax and Optax: they load on first use, so what only reads a
# training config (the train CLI's --help and its config errors) starts without them.
with epy.lazy_api_imports(globals()):
  from mind_jax.training._loop import check_batch_divides, run
  from mind_jax.training._step import Trainer, step_flops

__all__ = ["OptimizerSection", "TrainConfig", "Trainer", "check_batch_divides", "data_pipeline",
           "framing_tokenizer", "read_metrics", "run", "step_flops"]
