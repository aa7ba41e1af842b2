"""Calibrated int8 weights (GPTQ, Frantar et al. 2022): the same storage as `model.quantize=int8`
(int8 values, one float32 scale per output channel), with the values chosen to keep each
projection's *outputs* on real inputs close, not each weight.

Rounding every weight to its nearest step (`quantize_int8`) makes each weight's error as small
as it can be, but the errors of a row add up in its dot products with the inputs. GPTQ rounds
one input column at a time and spreads that column's error over the columns not rounded yet,
weighted by how the inputs co-vary (the Hessian `H = 2 X^T X` of the squared output error,
from calibration tokens), so later columns compensate for earlier ones. The layers are done in
order, each seeing the inputs that the already quantized layers before it produce, as it will
when generating. The result loads and runs as any int8 checkpoint: the choice is made once
(`mind_jax.convert quantize=int8 calibration=...`).
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mind_jax._errors import MindJaxError
from mind_jax.nn._layers import Linear, rope_tables
from mind_jax.nn._quant import INT8_MAX, int8_scales, quantize_int8

log = logging.getLogger(__name__)

# Each layer's projections, by the attribute path from the decoder layer.
PROJECTIONS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
               ("self_attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "up_proj"),
               ("mlp", "down_proj"))


def gptq_int8(weight, hessian, *, block: int = 128, damp: float = 0.01,
              act_order: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(int8 values `[out, in]`, float32 scales `[out]`) of `weight` `[out, in]`, given the
  Hessian `[in, in]` (`2 X^T X` of the layer's inputs X `[tokens, in]`).

  The scales are the plain per-channel ones (`int8_scales`), so storage and kernels are as for
  round-to-nearest; only which step each weight rounds to changes. `damp` adds that fraction of
  the mean diagonal to H (H of few tokens is singular); `act_order` rounds the columns with the
  largest inputs first, while the most columns remain to absorb their error."""
  w = np.array(weight, np.float64)
  h = np.array(hessian, np.float64)
  if h.shape != (w.shape[1], w.shape[1]):
    raise MindJaxError(f"gptq_int8: Hessian {h.shape} does not match weight {w.shape}")
  scale = int8_scales(w.astype(np.float32)).astype(np.float64)
  dead = np.diag(h) == 0  # inputs that were always zero: any value is exact on them
  h[dead, dead] = 1.0
  w[:, dead] = 0.0
  order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(w.shape[1])
  w, h = w[:, order], h[np.ix_(order, order)]
  h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
  # Upper Cholesky factor of H^-1: row i holds the error propagation of column i onto the
  # later columns, with H^-1 restricted to the columns not yet rounded (the OBS update).
  hinv = np.linalg.cholesky(np.linalg.inv(h)).T
  q = np.zeros_like(w)
  for start in range(0, w.shape[1], block):
    end = min(start + block, w.shape[1])
    errors = np.zeros((w.shape[0], end - start))
    for i in range(start, end):
      q[:, i] = np.clip(np.round(w[:, i] / scale), -INT8_MAX, INT8_MAX)
      error = (w[:, i] - q[:, i] * scale) / hinv[i, i]
      w[:, i + 1:end] -= np.outer(error, hinv[i, i + 1:end])
      errors[:, i - start] = error
    w[:, end:] -= errors @ hinv[start:end, end:]
  values = np.empty_like(q)
  values[:, order] = q
  return values.astype(np.int8), scale.astype(np.float32)


class _Observed:
  """Stands in for a Linear while a layer runs eagerly: adds `2 x^T x` of its inputs to a
  running Hessian, then computes as the Linear does."""

  def __init__(self, linear: Linear):
    self.linear = linear
    d = linear.weight.shape[1]
    self.hessian = np.zeros((d, d), np.float64)

  def __call__(self, x):
    flat = np.asarray(jax.device_get(x), np.float64).reshape(-1, x.shape[-1])
    self.hessian += 2.0 * flat.T @ flat
    return self.linear(x)


def calibrate_int8(model, tokens, *, batch: int = 8, block: int = 128, damp: float = 0.01,
                   act_order: bool = True, progress=None):
  """Turns a float Llama (`scan_layers=False`) into its int8 one, in place, with GPTQ's values
  chosen on `tokens` `[n, length]` (calibration text, no padding); returns the model.

  The result is the model `Llama(config with quantize="int8")` builds (int8 `weight`, float32
  `scale` per projection, embeddings, norms and a tied head as they were; an untied head is
  rounded to nearest, its inputs being the final hidden states). Layers are calibrated one at a
  time: each one's inputs come from the layers before it, already in int8. Host memory: one
  `[in, in]` float64 Hessian per projection of the current layer."""
  config = model.config
  if config.quantize:
    raise MindJaxError(f"calibrate_int8: the model is already {config.quantize}")
  if config.scan_layers:
    raise MindJaxError("calibrate_int8: load the model with scan_layers=False (layers one by one)")
  tokens = np.asarray(tokens, np.int32)
  if tokens.ndim != 2 or tokens.shape[0] == 0:
    raise MindJaxError(f"calibrate_int8: tokens must be [n, length] with n > 0, got {tokens.shape}")
  batches = [jnp.asarray(tokens[i:i + batch]) for i in range(0, len(tokens), batch)]
  hidden = [model.model.embed_tokens(ids) for ids in batches]
  inv_freq = jnp.asarray(config.rope.inv_freq(config.resolved_head_dim))
  positions = [jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape) for ids in batches]
  ropes = [rope_tables(inv_freq, p) for p in positions]
  for index, layer in enumerate(model.model.layers):
    observed = {}
    for parent, name in PROJECTIONS:
      owner = getattr(layer, parent)
      observed[(parent, name)] = _Observed(getattr(owner, name))
      object.__setattr__(owner, name, observed[(parent, name)])
    try:
      for x, rope, pos in zip(hidden, ropes, positions):
        layer(x, rope, pos, None)
    finally:
      for (parent, name), obs in observed.items():
        object.__setattr__(getattr(layer, parent), name, obs.linear)
    for (parent, name), obs in observed.items():
      linear = obs.linear
      values, scale = gptq_int8(np.asarray(jax.device_get(linear.weight[...]), np.float32),
                                obs.hessian, block=block, damp=damp, act_order=act_order)
      _store_int8(linear, values, scale)
    # The next layer's inputs, through this layer as it now is (int8).
    hidden = [layer(x, rope, pos, None)[0] for x, rope, pos in zip(hidden, ropes, positions)]
    log.info("calibrated layer %d/%d on %d tokens", index + 1, config.num_hidden_layers,
             tokens.size)
    if progress is not None:
      progress(index + 1)
  if not config.tie_word_embeddings:
    values, scale = quantize_int8(np.asarray(jax.device_get(model.lm_head.weight[...])))
    _store_int8(model.lm_head, values, scale)
  quantized = dataclasses.replace(config, quantize="int8")
  model.config = quantized
  model.model.config = quantized
  return model


def _store_int8(linear: Linear, values: np.ndarray, scale: np.ndarray) -> None:
  """Makes `linear` the int8 Linear that `Linear(..., quantize="int8")` builds, on the devices
  and sharding of its float weight."""
  old = linear.weight
  sharding = getattr(old[...], "sharding", None)
  axes = old.get_metadata().get("out_sharding")
  place = (lambda a: jax.device_put(a, sharding)) if sharding is not None else jnp.asarray
  linear.weight = nnx.Param(place(values), out_sharding=axes, eager_sharding=False)
  scale_sharding = None
  if isinstance(sharding, jax.sharding.NamedSharding):
    scale_sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(
        *sharding.spec[:1]))
  linear.scale = nnx.Param(jax.device_put(scale, scale_sharding) if scale_sharding else
                           jnp.asarray(scale), out_sharding=axes[:1] if axes else None,
                           eager_sharding=False)
  linear.quantize = "int8"
