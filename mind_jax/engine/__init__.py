"""The generation engine: continuous batching over fixed KV-cache slots, and sampling."""

from mind_jax.engine._engine import (KV_CACHE_MEMORY_FRACTION, Engine, EngineConfig, Request,
                                     Result, check_page_size, one_prefill_bucket, slot_ways,
                                     slots_that_fit)
from mind_jax.engine._sampling import SamplingParams, filter_logits, sample

__all__ = ["Engine", "EngineConfig", "KV_CACHE_MEMORY_FRACTION", "Request", "Result",
           "SamplingParams", "check_page_size", "filter_logits", "one_prefill_bucket", "sample",
           "slot_ways", "slots_that_fit"]
