"""`load_pretrained`: the one entry point for model directories; `load_model`: the one for a
config's `model` section (a checkpoint, or a preset with random weights)."""

from __future__ import annotations

import logging
import os

from mind_jax._errors import MindJaxError
from mind_jax._paths import check_confined
from mind_jax.ckpts._hf import load_hf_model
from mind_jax.ckpts._safetensors import SafetensorsReader
from mind_jax.ckpts._orbax import is_orbax_dir, load_orbax_model, read_marker
from mind_jax.nn import Llama, LlamaConfig, read_hf_config, resolve_attention
from mind_jax.text import Tokenizer, has_tokenizer_files, load_tokenizer

log = logging.getLogger(__name__)


def require_model_dir(path: str, key: str | None = None) -> None:
  """A model directory that exists and links to nothing outside it (before any file is read);
  `key` is the config key that named it, for the message."""
  if not os.path.isdir(path):
    raise MindJaxError(f"{f'{key}={path}' if key else path}: model directory does not exist "
                       "(mind_jax never downloads; fetch the checkpoint first, e.g. with "
                       "`huggingface-cli download`)")
  check_confined(path)


def stored_dtype(path: str) -> str:
  """The dtype a checkpoint stores its weights in (read from headers, not data)."""
  require_model_dir(path)
  if is_orbax_dir(path):
    return read_marker(path).get("param_dtype", "float32")
  with SafetensorsReader(path) as reader:
    return str(reader.info("model.embed_tokens.weight").dtype)


def read_config(path: str, dtype: str = "float32", *, param_dtype: str | None = None,
                scan_layers: bool | None = None, remat: str = "none", quantize: str | None = None,
                key: str | None = None) -> LlamaConfig:
  """The architecture a model directory holds (config.json only, no weights), with the
  dtypes, scan, remat and quantization a run asks for; layers are scanned, unless
  `scan_layers` says, as an Orbax checkpoint stores them (an HF checkpoint: not). An HF
  checkpoint is quantized as it loads; an Orbax one holds int8 weights only if it was
  converted with them. `key` names the config key that gave `path`, for messages."""
  require_model_dir(path, key)
  if is_orbax_dir(path):
    marker = read_marker(path)
    if scan_layers is None:
      scan_layers = bool(marker.get("scan_layers"))
    stored = marker.get("quantize")
    if quantize is not None and quantize != stored:
      raise MindJaxError(
          f"{path}: an Orbax checkpoint of {stored or 'float'} weights, asked for "
          f"quantize={quantize}; quantize an HF checkpoint as it loads, or convert one with "
          f"`python -m mind_jax.convert ... quantize={quantize}`")
    quantize = stored
  return read_hf_config(path, dtype=dtype, param_dtype=param_dtype or dtype,
                        scan_layers=bool(scan_layers), remat=remat, quantize=quantize)


def architecture(section, devices=None) -> LlamaConfig:
  """The model a config's `model` section describes: its checkpoint's config.json, or its
  preset (default tiny), with the section's dtypes, scan and remat, and its attention resolved
  for `devices` (a mesh's or a TPU topology's; default: this job's). Reads no weights."""
  attention = resolve_attention(section.attention, _devices(devices))
  if section.path:
    return read_config(section.path, section.dtype, param_dtype=section.param_dtype,
                       scan_layers=section.scan_layers, remat=section.remat,
                       quantize=section.quantize, key="model.path").replace(attention=attention)
  from mind_jax.nn import preset
  return preset(section.preset or "tiny", dtype=section.dtype,
                param_dtype=section.param_dtype or section.dtype,
                scan_layers=bool(section.scan_layers), remat=section.remat, attention=attention,
                quantize=section.quantize)


def _devices(devices=None, mesh=None):
  import jax
  if devices is not None:
    return list(devices)
  return list(jax.devices() if mesh is None else mesh.devices.flat)


def load_pretrained(path: str, dtype: str = "float32", *, param_dtype: str | None = None,
                    mesh=None, rules="generate", scan_layers: bool | None = None,
                    remat: str = "none", progress: bool = True,
                    allow_unused: bool = False, attention: str = "auto",
                    quantize: str | None = None) -> tuple[Llama, Tokenizer | None]:
  """Loads a model and its tokenizer from an HF directory or a mind_jax Orbax checkpoint.

  `dtype` is the compute dtype and, unless `param_dtype` says otherwise, the
  storage dtype. With a `mesh`, parameters are placed by the sharding `rules`
  ("generate" or "train") as they are read. Never downloads: `path` is a
  local directory. Tensors of an HF checkpoint that the model config.json
  describes does not use are an error unless `allow_unused` (then a warning). `attention`
  (auto, xla, tpu, cudnn) is resolved against the mesh's devices (default: this host's).
  `quantize="int8"` stores the projections' weights as int8 with per-output-channel scales,
  quantized slice by slice as an HF checkpoint is read (for generation; see `read_config`).
  """
  path = os.fspath(path)
  config = read_config(path, dtype, param_dtype=param_dtype, scan_layers=scan_layers, remat=remat,
                       quantize=quantize)
  config = config.replace(attention=resolve_attention(attention, _devices(mesh=mesh)))
  orbax = is_orbax_dir(path)
  log.info("loading %s (%s, %.1fM parameters, %s)", path, "Orbax" if orbax else "safetensors",
           config.num_params() / 1e6,
           config.param_dtype + (f", projections {config.quantize}" if config.quantize else ""))
  if orbax:
    model = load_orbax_model(path, config, mesh, rules)
  else:
    model = load_hf_model(path, config, mesh, rules, progress=progress, allow_unused=allow_unused)
  tokenizer = load_tokenizer(path) if has_tokenizer_files(path) else None
  if tokenizer is None:
    log.warning("%s: no tokenizer files; returning the model without a tokenizer", path)
  return model, tokenizer


def random_model_name(preset_name: str, seed: int = 0) -> str:
  """How records and run records name a preset's random-weight model."""
  return f"smoke-test:{preset_name}-random-seed{seed}"


def load_model(section, mesh=None, rules="generate", *, progress: bool = True,
               seed: int = 0) -> tuple[Llama, Tokenizer | None, str]:
  """(model, tokenizer, name) for a config's `model` section (`mind_jax.config.ModelSection`).

  With `path`, the checkpoint there (`preset` is then unused); without, the `preset`
  architecture with random weights (`seed`) and the byte-level tokenizer: the smoke-test
  generator, named `smoke-test:PRESET-random-seedN`. Every other key takes effect on both:
  dtype, param_dtype, scan_layers, remat, attention and allow_unused_tensors (checkpoints only: a random
  model has no unused tensors). With a mesh, parameters are placed by `rules`.
  """
  if section.path:
    model, tokenizer = load_pretrained(
        section.path, dtype=section.dtype, param_dtype=section.param_dtype, mesh=mesh,
        rules=rules, scan_layers=section.scan_layers, remat=section.remat,
        allow_unused=section.allow_unused_tensors, progress=progress,
        attention=section.attention, quantize=section.quantize)
    return model, tokenizer, section.path
  from flax import nnx

  from mind_jax import sharding
  from mind_jax.text import byte_tokenizer
  name = section.preset or "tiny"
  config = architecture(section, _devices(mesh=mesh))
  log.warning("SMOKE-TEST MODEL: %s preset with random weights (seed %d) and a byte-level "
              "tokenizer. Its outputs are noise; set model.path to a checkpoint for real ones.",
              name, seed)
  model = Llama(config, rngs=nnx.Rngs(seed))
  if mesh is not None:
    model = sharding.shard_model(model, mesh, rules)
  return model, byte_tokenizer(), random_model_name(name, seed)
