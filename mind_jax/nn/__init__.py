"""The Llama model: configuration, presets, modules and the KV cache."""

from mind_jax.nn._attention import attend, register_attention
from mind_jax.nn._cache import CACHE_AXES, NO_PAGE, Int8Pages, KVCache, pool_sharding
from mind_jax.nn._kernels import paged_kernel_reads, resolve_attention
from mind_jax.nn._config import PRESETS, LlamaConfig, RopeConfig, preset, read_hf_config
from mind_jax.nn._gptq import calibrate_int8, gptq_int8
from mind_jax.nn._layers import project
from mind_jax.nn._llama import Llama, LlamaDecoderLayer
from mind_jax.nn._quant import quantize_int8

__all__ = [
    "CACHE_AXES", "Int8Pages", "KVCache", "Llama", "LlamaConfig", "LlamaDecoderLayer", "NO_PAGE",
    "PRESETS", "RopeConfig", "attend", "calibrate_int8", "gptq_int8", "paged_kernel_reads",
    "pool_sharding", "preset", "project", "quantize_int8", "read_hf_config", "register_attention",
    "resolve_attention",
]
