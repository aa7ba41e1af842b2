"""Continued pretraining: the training configuration and what it reads."""

from mind_jax.training._config import TrainConfig, data_pipeline, load_tokenizer_for

__all__ = ["TrainConfig", "data_pipeline", "load_tokenizer_for"]
