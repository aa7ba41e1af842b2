"""`load_pretrained` / `save_pretrained`: the one entry point for model directories."""

from __future__ import annotations

import logging
import os

from mind_jax._errors import MindJaxError
from mind_jax._paths import check_confined
from mind_jax.ckpts._hf import load_hf_model
from mind_jax.ckpts._safetensors import SafetensorsReader
from mind_jax.ckpts._orbax import is_orbax_dir, load_orbax_model, read_marker
from mind_jax.nn import Llama
from mind_jax.nn._config import read_hf_config
from mind_jax.text import Tokenizer, load_tokenizer
from mind_jax.text._tokenizer import has_tokenizer_files

log = logging.getLogger(__name__)


def _require_dir(path: str) -> None:
  """A model directory that exists and links to nothing outside it (before any file is read)."""
  if not os.path.isdir(path):
    raise MindJaxError(f"{path}: model directory does not exist (mind_jax never downloads; "
                       "fetch the checkpoint first, e.g. with `huggingface-cli download`)")
  check_confined(path)


def stored_dtype(path: str) -> str:
  """The dtype a checkpoint stores its weights in (read from headers, not data)."""
  _require_dir(path)
  if is_orbax_dir(path):
    return read_marker(path).get("param_dtype", "float32")
  with SafetensorsReader(path) as reader:
    return str(reader.info("model.embed_tokens.weight").dtype)


def load_pretrained(path: str, dtype: str = "float32", *, param_dtype: str | None = None,
                    mesh=None, rules="generate", scan_layers: bool | None = None,
                    remat: str = "none", progress: bool = True,
                    allow_unused: bool = False) -> tuple[Llama, Tokenizer | None]:
  """Loads a model and its tokenizer from an HF directory or a mind_jax Orbax checkpoint.

  `dtype` is the compute dtype and, unless `param_dtype` says otherwise, the
  storage dtype. With a `mesh`, parameters are placed by the sharding `rules`
  ("generate" or "train") as they are read. Never downloads: `path` is a
  local directory. Tensors of an HF checkpoint that the model config.json
  describes does not use are an error unless `allow_unused` (then a warning).
  """
  path = os.fspath(path)
  _require_dir(path)
  orbax = is_orbax_dir(path)
  if scan_layers is None:
    scan_layers = bool(read_marker(path).get("scan_layers")) if orbax else False
  config = read_hf_config(path, dtype=dtype, param_dtype=param_dtype or dtype,
                          scan_layers=scan_layers, remat=remat)
  log.info("loading %s (%s, %.1fM parameters, %s)", path, "Orbax" if orbax else "safetensors",
           config.num_params() / 1e6, config.param_dtype)
  if orbax:
    model = load_orbax_model(path, config, mesh, rules)
  else:
    model = load_hf_model(path, config, mesh, rules, progress=progress, allow_unused=allow_unused)
  tokenizer = load_tokenizer(path) if has_tokenizer_files(path) else None
  if tokenizer is None:
    log.warning("%s: no tokenizer files; returning the model without a tokenizer", path)
  return model, tokenizer

