"""Continued pretraining: the training configuration and what it reads."""

from mind_jax.training._config import TrainConfig, data_pipeline, framing_tokenizer

__all__ = ["TrainConfig", "data_pipeline", "framing_tokenizer"]
