"""mind_jax: MIND synthetic math dialogues with a sharded JAX Llama stack.

Public surface:
  models       Llama, LlamaConfig, RopeConfig, preset, PRESETS, KVCache
  checkpoints  load_pretrained, load_model, save_pretrained, save_orbax_model
  text         Tokenizer, load_tokenizer, byte_tokenizer
  generation   Engine, EngineConfig, Request, Result, SamplingParams
  sharding     make_mesh, shard_model, TRAIN_RULES, GENERATE_RULES
  errors       MindJaxError (bad input), DiskFull (a refused write), Diverged

Jobs live in their packages: mind_jax.mind (generation), mind_jax.curation
(filter and report), each with a command-line tool (python -m mind_jax.generate,
mind_jax.filter, mind_jax.report).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mind_jax._errors import Diverged as Diverged  # re-exported
from mind_jax._errors import DiskFull as DiskFull
from mind_jax._errors import MindJaxError as MindJaxError

__version__ = "0.1.0"

# Names load on first use, so the curation tools and their worker processes start without
# JAX (a worker that only reads JSON would otherwise pay ~0.15 GB and a second for it).
_EXPORTS = {
    "load_model": "mind_jax.ckpts", "load_pretrained": "mind_jax.ckpts",
    "save_orbax_model": "mind_jax.ckpts",
    "save_pretrained": "mind_jax.ckpts",
    "PRESETS": "mind_jax.nn", "KVCache": "mind_jax.nn", "Llama": "mind_jax.nn",
    "LlamaConfig": "mind_jax.nn", "RopeConfig": "mind_jax.nn", "preset": "mind_jax.nn",
    "GENERATE_RULES": "mind_jax.sharding", "TRAIN_RULES": "mind_jax.sharding",
    "make_mesh": "mind_jax.sharding", "shard_model": "mind_jax.sharding",
    "Engine": "mind_jax.engine", "EngineConfig": "mind_jax.engine", "Request": "mind_jax.engine",
    "Result": "mind_jax.engine", "SamplingParams": "mind_jax.engine",
    "Tokenizer": "mind_jax.text", "byte_tokenizer": "mind_jax.text",
    "load_tokenizer": "mind_jax.text",
}

__all__ = sorted([*_EXPORTS, "DiskFull", "Diverged", "MindJaxError"])

if TYPE_CHECKING:
  from mind_jax.ckpts import (load_model, load_pretrained, save_orbax_model,  # noqa: F401
                              save_pretrained)
  from mind_jax.engine import Engine, EngineConfig, Request, Result, SamplingParams  # noqa: F401
  from mind_jax.nn import PRESETS, KVCache, Llama, LlamaConfig, RopeConfig, preset  # noqa: F401
  from mind_jax.sharding import GENERATE_RULES, TRAIN_RULES, make_mesh, shard_model  # noqa: F401
  from mind_jax.text import Tokenizer, byte_tokenizer, load_tokenizer  # noqa: F401


def __getattr__(name: str):
  if name in _EXPORTS:
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'mind_jax' has no attribute {name!r}")


def __dir__():
  return __all__
