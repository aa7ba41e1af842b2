"""Checkpoint I/O: HF safetensors directories and Orbax parameter checkpoints."""

from mind_jax.ckpts._hf import load_hf_model, save_pretrained
from mind_jax.ckpts._orbax import is_orbax_dir, load_orbax_model, save_orbax_model
from mind_jax.ckpts._pretrained import (architecture, load_model, load_pretrained, read_config,
                                        stored_dtype)
from mind_jax.ckpts._safetensors import SafetensorsReader

__all__ = [
    "SafetensorsReader", "architecture", "is_orbax_dir", "load_hf_model", "load_model", "load_orbax_model",
    "load_pretrained", "read_config", "save_orbax_model", "save_pretrained", "stored_dtype",
]
