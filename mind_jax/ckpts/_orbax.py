"""Orbax checkpoints of the parameters: fast sharded reloads on pods.

Layout: `config.json` (the HF form of the model config), `mind_jax.json` (the
format marker and parameter layout), `params/` (Orbax) and tokenizer files.
"""

from __future__ import annotations

import json
import os

import jax
from flax import nnx

from mind_jax._atomic import write_json
from mind_jax._errors import MindJaxError
from mind_jax import sharding as sharding_lib
from mind_jax.ckpts._hf import check_out_dir
from mind_jax._paths import checkpoint_file
from mind_jax.nn import Llama, LlamaConfig

MARKER = "mind_jax.json"
FORMAT = "mind_jax-orbax-params"


def is_orbax_dir(path: str) -> bool:
  return os.path.exists(os.path.join(path, MARKER))


def read_marker(path: str) -> dict:
  marker = os.path.join(path, MARKER)
  try:
    with open(marker) as f:
      meta = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise MindJaxError(f"{marker}: unreadable ({e})") from e
  if meta.get("format") != FORMAT:
    raise MindJaxError(f"{marker}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
  return meta


def _nested(flat: dict[tuple, object]) -> dict:
  """Flat parameter paths -> nested dict with string keys (Orbax's tree form)."""
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(str(key), {})
    node[str(path[-1])] = value
  return tree


def save_orbax_model(model: Llama, out_dir: str, tokenizer=None, overwrite: bool = False) -> str:
  """Writes config.json, the marker, `params/` and the tokenizer files to `out_dir`.

  `out_dir` must be new or empty unless `overwrite`, which replaces a
  checkpoint written there before (its `params/` is deleted and rewritten).
  """
  import orbax.checkpoint as ocp
  out_dir = os.path.abspath(out_dir)
  check_out_dir(out_dir, overwrite)
  os.makedirs(out_dir, exist_ok=True)
  params = {path: var[...] for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  with ocp.StandardCheckpointer() as checkpointer:
    # force deletes an existing params/ first: only what overwrite asked for.
    checkpointer.save(os.path.join(out_dir, "params"), _nested(params), force=overwrite)
    checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    write_json(os.path.join(out_dir, "config.json"), model.config.to_hf_dict())
    write_json(os.path.join(out_dir, MARKER), {
        "format": FORMAT, "scan_layers": model.config.scan_layers,
        "param_dtype": model.config.param_dtype, "quantize": model.config.quantize})
    if tokenizer is not None:
      tokenizer.save(out_dir)
  return out_dir


def load_orbax_model(path: str, config: LlamaConfig, mesh=None, rules="generate") -> Llama:
  """Restores straight onto the target shardings (each host reads its own shards)."""
  import orbax.checkpoint as ocp
  meta = read_marker(path)
  if bool(meta.get("scan_layers")) != config.scan_layers:
    raise MindJaxError(
        f"{path}: saved with scan_layers={meta.get('scan_layers')}, asked for "
        f"scan_layers={config.scan_layers}; load it with the saved layout")
  graphdef, flat, shardings = sharding_lib.abstract_state(
      lambda: Llama(config, rngs=nnx.Rngs(0)), mesh, rules)
  target = _nested({p: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[p]) for p, v in flat})
  params_dir = os.path.abspath(checkpoint_file(path, "params"))
  if not os.path.isdir(params_dir):
    raise MindJaxError(f"{params_dir}: missing (not a complete mind_jax Orbax checkpoint)")
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      restored = checkpointer.restore(params_dir, target)
    except (ValueError, KeyError) as e:
      raise MindJaxError(f"{params_dir}: does not match config.json ({str(e).splitlines()[0]})") from e
  loaded = [(p, v.replace(sharding_lib.lookup(restored, p, str))) for p, v in flat]
  return nnx.merge(graphdef, nnx.from_flat_state(loaded))
