"""Llama architecture settings, named presets, and the HF config.json mapping."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Literal

import numpy as np

from mind_jax._errors import MindJaxError
from mind_jax.nn._quant import QUANTIZE_MODES

DType = Literal["float32", "bfloat16", "float16"]
RopeType = Literal["default", "llama3"]


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary embedding settings; `llama3` is the Llama 3.1 frequency rescaling."""

  theta: float = 10000.0
  type: RopeType = "default"
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def inv_freq(self, head_dim: int) -> np.ndarray:
    """Per-pair inverse frequencies, computed in float32 the way transformers does."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(self.theta) ** exponents)).astype(np.float32)
    if self.type == "default":
      return inv_freq
    old_len = float(self.original_max_position_embeddings)
    low_wavelen = old_len / self.low_freq_factor
    high_wavelen = old_len / self.high_freq_factor
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(self.factor), inv_freq)
    smooth = (old_len / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
    smoothed = (1 - smooth) * scaled / np.float32(self.factor) + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Everything that fixes a Llama model's shapes and numerics.

  `param_dtype` is how weights are stored, `dtype` is what matmuls run in.
  `scan_layers` stacks the layers into one scanned block so a deep model
  compiles once; `remat` names a rematerialisation policy for training;
  `attention` names a registered attention implementation. `quantize` ("int8", generation
  only) stores every projection's weight as int8 with per-output-channel scales
  (`mind_jax.nn._quant`); embeddings and norms stay in `param_dtype`.
  """

  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 32
  head_dim: int | None = None
  rms_norm_eps: float = 1e-5
  rope: RopeConfig = RopeConfig()
  max_position_embeddings: int = 4096
  tie_word_embeddings: bool = False
  bos_token_id: int | None = 1
  eos_token_id: int | tuple[int, ...] | None = 2
  pad_token_id: int | None = None
  param_dtype: DType = "float32"
  dtype: DType = "float32"
  scan_layers: bool = False
  remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"
  attention: str = "xla"
  quantize: str | None = None

  def __post_init__(self):
    # Models are static jit arguments, so every field must be hashable.
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    if self.num_attention_heads % self.num_key_value_heads:
      raise MindJaxError(
          f"num_attention_heads={self.num_attention_heads} is not a multiple of "
          f"num_key_value_heads={self.num_key_value_heads}")
    if self.head_dim is None and self.hidden_size % self.num_attention_heads:
      raise MindJaxError(
          f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
          f"{self.num_attention_heads}; set head_dim explicitly")
    if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
      raise MindJaxError(f"quantize={self.quantize!r}: expected one of {list(QUANTIZE_MODES)} "
                         "or none")
    if self.resolved_head_dim % 2:
      raise MindJaxError(f"head_dim={self.resolved_head_dim} must be even for rotary embeddings")

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.hidden_size // self.num_attention_heads

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    if self.eos_token_id is None:
      return ()
    if isinstance(self.eos_token_id, int):
      return (self.eos_token_id,)
    return tuple(self.eos_token_id)

  @property
  def eos_token_id_json(self) -> int | list[int] | None:
    return list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id

  def replace(self, **changes) -> LlamaConfig:
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    d, f, v, hd = self.hidden_size, self.intermediate_size, self.vocab_size, self.resolved_head_dim
    attn = d * hd * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
    per_layer = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_word_embeddings else v * d
    return v * d + self.num_hidden_layers * per_layer + d + head

  # --- Hugging Face config.json ------------------------------------------------

  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> LlamaConfig:
    """Reads a transformers LlamaConfig dict (transformers 4 or 5 layout)."""
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    if model_type != "llama" or (archs and "LlamaForCausalLM" not in archs):
      raise MindJaxError(
          f"{source}: unsupported architecture (model_type={model_type!r}, architectures={archs}); "
          "mind_jax loads Llama models (model_type 'llama', LlamaForCausalLM)")
    for flag in ("attention_bias", "mlp_bias"):
      if hf.get(flag):
        raise MindJaxError(f"{source}: {flag}=true is not supported (Llama checkpoints have no biases)")
    if hf.get("hidden_act", "silu") != "silu":
      raise MindJaxError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (expected 'silu')")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in hf]
    if missing:
      raise MindJaxError(f"{source}: missing required key(s) {', '.join(missing)}")
    # transformers 5 writes `rope_parameters` (theta inside); 4 writes `rope_scaling` + `rope_theta`.
    rope_params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = rope_params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = rope_params.pop("rope_type", rope_params.pop("type", "default"))
    if rope_type not in ("default", "llama3"):
      raise MindJaxError(f"{source}: rope type {rope_type!r} is not supported (expected 'default' or 'llama3')")
    rope_fields = {f.name for f in dataclasses.fields(RopeConfig)}
    rope = RopeConfig(theta=float(theta), type=rope_type,
                      **{k: v for k, v in rope_params.items() if k in rope_fields})
    try:
      values = dict(
          vocab_size=int(hf["vocab_size"]),
          hidden_size=int(hf["hidden_size"]),
          intermediate_size=int(hf["intermediate_size"]),
          num_hidden_layers=int(hf["num_hidden_layers"]),
          num_attention_heads=int(hf["num_attention_heads"]),
          num_key_value_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
          head_dim=hf.get("head_dim"),
          rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
          rope=rope,
          max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
          tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
          bos_token_id=hf.get("bos_token_id"),
          eos_token_id=hf.get("eos_token_id"),
          pad_token_id=hf.get("pad_token_id"),
      )
    except (TypeError, ValueError) as e:
      raise MindJaxError(f"{source}: invalid value ({e})") from e
    values.update(overrides)
    return cls(**values)

  def to_hf_dict(self) -> dict[str, Any]:
    """A config.json that transformers 5 and transformers 4 both read correctly.

    transformers 4 reads only `rope_theta`/`rope_scaling` and silently falls
    back to plain RoPE without them, so both spellings are written.
    """
    rope_parameters: dict[str, Any] = {"rope_type": self.rope.type, "rope_theta": self.rope.theta}
    rope_scaling = None
    if self.rope.type == "llama3":
      rope_scaling = {
          "rope_type": "llama3",
          "factor": self.rope.factor,
          "low_freq_factor": self.rope.low_freq_factor,
          "high_freq_factor": self.rope.high_freq_factor,
          "original_max_position_embeddings": self.rope.original_max_position_embeddings,
      }
      rope_parameters.update(rope_scaling)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "num_key_value_heads": self.num_key_value_heads,
        "head_dim": self.resolved_head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": self.rms_norm_eps,
        "max_position_embeddings": self.max_position_embeddings,
        "tie_word_embeddings": self.tie_word_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id_json,
        "pad_token_id": self.pad_token_id,
        "rope_parameters": rope_parameters,
        "rope_theta": self.rope.theta,
        "rope_scaling": rope_scaling,
        "dtype": self.param_dtype,
        "torch_dtype": self.param_dtype,
        "use_cache": True,
    }


def read_hf_config(model_dir: str | os.PathLike, **overrides) -> LlamaConfig:
  """Reads `model_dir/config.json`, failing with one line that names the file."""
  path = os.path.join(os.fspath(model_dir), "config.json")
  if not os.path.isdir(model_dir):
    raise MindJaxError(f"{model_dir}: model directory does not exist")
  if not os.path.exists(path):
    raise MindJaxError(f"{path}: missing (an HF model directory needs config.json)")
  try:
    with open(path) as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise MindJaxError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
  if not isinstance(hf, dict):
    raise MindJaxError(f"{path}: expected a JSON object")
  return LlamaConfig.from_hf_dict(hf, source=path, **overrides)


_LLAMA3_ROPE = RopeConfig(theta=500000.0, type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192)
_LLAMA3_TOKENS = dict(vocab_size=128256, bos_token_id=128000, eos_token_id=[128001, 128008, 128009])

PRESETS: dict[str, LlamaConfig] = {
    # Small enough for CPU tests; GQA and llama3 RoPE so tests exercise both.
    "tiny": LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                        rope=RopeConfig(theta=500000.0, type="llama3", factor=8.0,
                                        original_max_position_embeddings=64),
                        max_position_embeddings=4096, bos_token_id=256, eos_token_id=[257, 260]),
    "llama2-7b": LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                             rms_norm_eps=1e-5, rope=RopeConfig(theta=10000.0),
                             max_position_embeddings=4096, bos_token_id=1, eos_token_id=2),
    "llama3.1-8b": LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5,
                               rope=_LLAMA3_ROPE, max_position_embeddings=131072, **_LLAMA3_TOKENS),
    "llama3.1-70b": LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                num_attention_heads=64, num_key_value_heads=8, rms_norm_eps=1e-5,
                                rope=_LLAMA3_ROPE, max_position_embeddings=131072, **_LLAMA3_TOKENS),
    "llama3.2-1b": LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                               rms_norm_eps=1e-5, rope=dataclasses.replace(_LLAMA3_ROPE, factor=32.0),
                               max_position_embeddings=131072, tie_word_embeddings=True,
                               **_LLAMA3_TOKENS),
    "llama3.2-3b": LlamaConfig(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                               num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                               rms_norm_eps=1e-5, rope=dataclasses.replace(_LLAMA3_ROPE, factor=32.0),
                               max_position_embeddings=131072, tie_word_embeddings=True,
                               **_LLAMA3_TOKENS),
}


def preset(name: str, **overrides) -> LlamaConfig:
  """A named architecture, e.g. `preset("llama3.1-8b", dtype="bfloat16")`."""
  if name not in PRESETS:
    raise MindJaxError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
  return PRESETS[name].replace(**overrides)
