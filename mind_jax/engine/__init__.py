"""The generation engine: continuous batching over fixed KV-cache slots, and sampling."""

from mind_jax.engine._engine import Engine, EngineConfig, Request, Result
from mind_jax.engine._sampling import SamplingParams, filter_logits, sample

__all__ = ["Engine", "EngineConfig", "Request", "Result", "SamplingParams", "filter_logits",
           "sample"]
