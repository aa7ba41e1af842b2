"""Hugging Face model directories <-> mind_jax models, streamed tensor by tensor."""

from __future__ import annotations

import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mind_jax import sharding as sharding_lib
from mind_jax._atomic import write_json
from mind_jax._errors import MindJaxError
from mind_jax.ckpts._safetensors import (INDEX_NAME, SafetensorsReader, host_empty, parse_size,
                                         write_shards)
from mind_jax.nn import Llama, LlamaConfig, quantize_int8, read_hf_config
from mind_jax._progress import progress_bar

log = logging.getLogger(__name__)


def is_stacked(path: tuple, config: LlamaConfig) -> bool:
  """Whether a parameter holds every layer along a leading axis (scan_layers)."""
  return config.scan_layers and tuple(path[:2]) == ("model", "layers")


def hf_names(path: tuple, config: LlamaConfig) -> list[str]:
  """The HF tensor name(s) behind one parameter; a stacked one has one per layer. An int8
  projection's scales come from its weight."""
  parts = [str(p) for p in path]
  if parts[-1] == "scale":
    parts[-1] = "weight"
  if is_stacked(path, config):
    rest = ".".join(parts[2:])
    return [f"model.layers.{i}.{rest}" for i in range(config.num_hidden_layers)]
  return [".".join(parts)]


def load_hf_model(model_dir: str, config: LlamaConfig | None = None, mesh: Mesh | None = None,
                  rules="generate", progress: bool = True, allow_unused: bool = False) -> Llama:
  """Builds a Llama from an HF directory, each device reading only its own slice.

  A checkpoint tensor the model does not use is an error unless `allow_unused`:
  it means config.json describes a different model than the weights (fewer
  layers, say), and the load would quietly run that other model.
  """
  config = config or read_hf_config(model_dir)
  graphdef, flat, shardings = sharding_lib.abstract_state(
      lambda: Llama(config, rngs=nnx.Rngs(0)), mesh, rules)
  with SafetensorsReader(model_dir) as reader:
    _check_tensors(reader, flat, config)
    _check_unused(reader, flat, config, allow_unused)
    total = sum(v.size * v.dtype.itemsize for _, v in flat)
    loaded = []
    with progress_bar(total, "import", unit="B", enabled=progress) as bar:
      for path, variable in flat:
        read = _slice_reader(reader, hf_names(path, config), variable.dtype,
                             is_stacked(path, config), _int8_part(path, variable))
        array = jax.make_array_from_callback(variable.shape, shardings[path], read)
        loaded.append((path, variable.replace(array)))
        bar.update(variable.size * variable.dtype.itemsize)
  return nnx.merge(graphdef, nnx.from_flat_state(loaded))


def _some(names: list[str], count: int = 5) -> str:
  return ", ".join(names[:count]) + (" ..." if len(names) > count else "")


def _check_unused(reader: SafetensorsReader, flat, config: LlamaConfig, allow_unused: bool) -> None:
  used = {n for p, _ in flat for n in hf_names(p, config)}
  unused = sorted(set(reader.tensors) - used, key=_layer_order)
  # What transformers itself drops without a word: the RoPE tables old Llama-2 conversions
  # stored as buffers (recomputed from config.json), and a head that tied embeddings replace.
  expected = [n for n in unused if n.endswith(".rotary_emb.inv_freq")
              or (n == "lm_head.weight" and config.tie_word_embeddings)]
  if expected:
    log.info("%s: ignored %d tensor(s) transformers ignores too: %s", reader.model_dir,
             len(expected), _some(expected))
  unused = [n for n in unused if n not in expected]
  if not unused:
    return
  if not allow_unused:
    raise MindJaxError(
        f"{reader.model_dir}: config.json describes a model that does not use {len(unused)} of "
        f"the checkpoint's tensors ({_some(unused)}), so it does not match the weights; "
        "pass allow_unused=True (--allow-unused-tensors) to load it anyway")
  log.warning("%s: ignoring %d tensor(s) the model does not use (allow_unused): %s",
              reader.model_dir, len(unused), _some(unused))


def _int8_part(path: tuple, variable) -> str | None:
  """"values" or "scale" for the parts of an int8 projection, else None."""
  if str(path[-1]) == "scale":
    return "scale"
  return "values" if variable.dtype == np.int8 else None


def _check_tensors(reader: SafetensorsReader, flat, config: LlamaConfig) -> None:
  for path, variable in flat:
    if _int8_part(path, variable) == "scale":
      continue  # checked as its weight
    expected = variable.shape[1:] if is_stacked(path, config) else variable.shape
    for name in hf_names(path, config):
      info = reader.info(name)
      if tuple(info.shape) != tuple(expected):
        raise MindJaxError(f"{reader.model_dir}: tensor {name} has shape {list(info.shape)}, "
                           f"expected {list(expected)} from config.json")


def _slice_reader(reader, names, dtype, stacked, int8_part=None):
  """The callback that produces one device's slice; replicas of a slice are read once.

  Each slice lands in fresh host memory that nothing else writes: on CPU, jax
  may adopt it as the device buffer instead of copying. `int8_part` ("values" or "scale"):
  the slice of an int8 projection's values or scales, quantized from the whole rows of the
  slice's output channels (a channel's scale depends on all its inputs), never the whole
  tensor.
  """
  done = {}

  def tensor(name, index):
    if int8_part is None:
      return reader.read(name, index)
    values, scale = quantize_int8(reader.read(name, (index[0], slice(None))))
    return scale if int8_part == "scale" else values[:, index[1]]

  def read(index):
    key = str(index)
    if key not in done:
      parts = [tensor(names[i], index[1:]) for i in range(*index[0].indices(len(names)))] \
          if stacked else [tensor(names[0], index)]
      shape = (len(parts),) + parts[0].shape if stacked else parts[0].shape
      if stacked or parts[0].dtype != dtype or not parts[0].flags.c_contiguous:
        out = host_empty(shape, dtype)
        for i, part in enumerate(parts):
          out[i if stacked else ...] = part
      else:
        out = parts[0]
      done[key] = out
    return done[key]

  return read


def _to_host(array: jax.Array) -> np.ndarray:
  if array.is_fully_addressable:
    return np.asarray(jax.device_get(array))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _layer_order(name: str):
  match = re.match(r"model\.layers\.(\d+)\.", name)
  if name.startswith("model.embed_tokens"):
    return (0, 0, name)
  if match:
    return (1, int(match.group(1)), name)
  return (2, 0, name)


def save_pretrained(model: Llama, out_dir: str, tokenizer=None, max_shard_size: str | int = "5GB",
                    dtype: str | None = None, progress: bool = True, overwrite: bool = False) -> str:
  """Writes an HF directory that transformers loads with AutoModelForCausalLM / AutoTokenizer.

  Writes config.json, generation_config.json, safetensors shards (+ index)
  and the tokenizer files. One tensor is gathered to the host at a time. On a multi-host slice every
  process must call this (gathers are collective); only process 0 writes.

  `out_dir` must be new or empty unless `overwrite`, which replaces a checkpoint
  written there before: of the files already there, only weight files under the
  names this function writes (model.safetensors, model-NNNNN-of-NNNNN.safetensors,
  the index) that the new write did not produce are removed.
  """
  config = model.config
  if config.quantize:
    raise MindJaxError(f"{out_dir}: the model's weights are {config.quantize} (model.quantize), "
                       "a generation format; export the checkpoint it was loaded from instead")
  check_out_dir(out_dir, overwrite)
  out_dtype = np.dtype(jnp.dtype(dtype or config.param_dtype))
  params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  sources = {}
  for path, variable in params.items():
    for i, name in enumerate(hf_names(path, config)):
      sources[name] = (variable, i if is_stacked(path, config) else None)
  names = sorted(sources, key=_layer_order)
  entries = []
  for name in names:
    variable, layer = sources[name]
    shape = variable.shape[1:] if layer is not None else variable.shape
    entries.append((name, out_dtype, tuple(shape)))

  def fetch(name):
    variable, layer = sources[name]
    value = variable[...] if layer is None else variable[...][layer]
    return _to_host(value).astype(out_dtype)

  primary = jax.process_index() == 0
  if primary:
    os.makedirs(out_dir, exist_ok=True)
  total = sum(int(np.prod(s)) * out_dtype.itemsize for _, _, s in entries)
  with progress_bar(total, "export", unit="B", enabled=progress and primary) as bar:
    if primary:
      files = write_shards(out_dir, entries, fetch, parse_size(max_shard_size), bar.update)
      if overwrite:
        _remove_stale_shards(out_dir, files)
    else:
      for name in names:
        fetch(name)
  if not primary:
    return out_dir
  hf_config = config.to_hf_dict() | {"dtype": str(out_dtype), "torch_dtype": str(out_dtype)}
  write_json(os.path.join(out_dir, "config.json"), hf_config)
  write_json(os.path.join(out_dir, "generation_config.json"), {
      "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id_json,
      "pad_token_id": config.pad_token_id, "do_sample": True, "temperature": 1.0, "top_p": 0.9})
  if tokenizer is not None:
    tokenizer.save(out_dir)
  return out_dir


def check_out_dir(out_dir: str, overwrite: bool) -> None:
  """Refuses an out_dir that is a file, or holds anything, unless `overwrite`; before any write.

  Process 0's view decides on every process: one process raising while the
  others enter a collective gather would leave them waiting forever.
  """
  busy = None
  if jax.process_index() == 0:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
      busy = "is a file, not a directory"
    elif not overwrite and os.path.isdir(out_dir) and os.listdir(out_dir):
      busy = ("is not empty; write into a new or empty directory, or pass overwrite=True "
              "to replace a checkpoint written there before")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    code = int(multihost_utils.broadcast_one_to_all(np.int32(0 if busy is None else 1)))
    busy = busy or (None if code == 0 else "refused by process 0 (not empty, or a file)")
  if busy:
    raise MindJaxError(f"{out_dir}: {busy}")


_OUR_WEIGHT_FILE = re.compile(r"model\.safetensors|model-\d{5,}-of-\d{5,}\.safetensors|"
                              r"model\.safetensors\.index\.json")


def _remove_stale_shards(out_dir, written):
  """Removes weight files of an earlier save here that this one did not rewrite.

  Matched by the exact names save_pretrained writes, so a user's own
  `model-notes.safetensors` beside the checkpoint is never touched.
  """
  keep = set(written) | ({INDEX_NAME} if len(written) > 1 else set())
  for file in os.listdir(out_dir):
    if _OUR_WEIGHT_FILE.fullmatch(file) and file not in keep:
      os.remove(os.path.join(out_dir, file))
