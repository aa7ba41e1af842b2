"""The Llama model: configuration, presets, modules and the KV cache."""

from mind_jax.nn._attention import attend, register_attention
from mind_jax.nn._cache import Int8Pages, KVCache
from mind_jax.nn._kernels import resolve_attention
from mind_jax.nn._config import PRESETS, LlamaConfig, RopeConfig, preset, read_hf_config
from mind_jax.nn._llama import Llama, LlamaDecoderLayer

__all__ = [
    "Int8Pages", "KVCache", "Llama", "LlamaConfig", "LlamaDecoderLayer", "PRESETS", "RopeConfig", "attend",
    "preset", "read_hf_config", "register_attention", "resolve_attention",
]
