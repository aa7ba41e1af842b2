"""Checkpoint I/O: HF safetensors directories and Orbax parameter checkpoints."""

from mind_jax.ckpts._hf import load_hf_model, save_pretrained
from mind_jax.ckpts._orbax import is_orbax_dir, load_orbax_model, save_orbax_model
from mind_jax.ckpts._pretrained import (architecture, load_model, load_pretrained,
                                        random_model_name, read_config, require_model_dir,
                                        stored_dtype)
from mind_jax.ckpts._safetensors import SafetensorsReader, parse_size, write_shards

__all__ = [
    "SafetensorsReader", "architecture", "is_orbax_dir", "load_hf_model", "load_model",
    "load_orbax_model", "load_pretrained", "parse_size", "random_model_name", "read_config",
    "require_model_dir", "save_orbax_model", "save_pretrained", "stored_dtype", "write_shards",
]
