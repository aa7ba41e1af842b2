"""mind_jax: MIND synthetic math dialogues with a sharded JAX Llama stack.

Public surface:
  models       Llama, LlamaConfig, RopeConfig, preset, PRESETS, KVCache
  checkpoints  load_pretrained, save_pretrained, save_orbax_model
  text         Tokenizer, load_tokenizer
  generation   Engine, EngineConfig, Request, Result, SamplingParams
  sharding     make_mesh, shard_model, TRAIN_RULES, GENERATE_RULES
  errors       MindJaxError

Jobs live in their packages: mind_jax.mind (generation), mind_jax.curation
(filter and report), each with a command-line tool (python -m mind_jax.generate,
mind_jax.filter, mind_jax.report).
"""

from mind_jax._errors import MindJaxError
from mind_jax.ckpts import load_pretrained, save_orbax_model, save_pretrained
from mind_jax.nn import PRESETS, KVCache, Llama, LlamaConfig, RopeConfig, preset
from mind_jax.sharding import GENERATE_RULES, TRAIN_RULES, make_mesh, shard_model
from mind_jax.engine import Engine, EngineConfig, Request, Result, SamplingParams
from mind_jax.text import Tokenizer, load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "Engine", "EngineConfig", "GENERATE_RULES", "KVCache", "Llama", "LlamaConfig", "MindJaxError",
    "PRESETS", "Request", "Result", "RopeConfig", "SamplingParams", "TRAIN_RULES", "Tokenizer",
    "load_pretrained", "load_tokenizer", "make_mesh", "preset", "save_orbax_model",
    "save_pretrained", "shard_model",
]
