"""Building blocks: parameters with logical axis names, Linear, Embed, RMSNorm, RoPE.

Weights keep Hugging Face's `[out, in]` layout, so a checkpoint converts by
renaming alone (no transposes, no RoPE permutation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mind_jax.nn._quant import quantize_int8

_INIT_STD = 0.02  # transformers' default initializer_range for Llama.


def param(rngs: nnx.Rngs | None, shape, dtype, axes: tuple[str, ...], init="normal") -> nnx.Param:
  """A parameter tagged with logical axis names (mapped to the mesh by sharding rules).

  Eager sharding is off: placement is decided from the rules when the model
  is materialised, not at construction.
  """
  if init == "ones":
    value = jnp.ones(shape, dtype)
  else:
    value = (_INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def project(x, weight):
  """`x [..., in] @ weight[out, in].T` as one 2-D matmul over the flattened leading dims.

  The same product as an einsum over `[B, T, in]`, but its weight gradient then contracts two
  dims (B and T), which XLA:CPU runs about 1.3x slower (benchmarks/train_cpu.py); a reshape of
  leading dims costs nothing on any backend."""
  y = jnp.einsum("ti,oi->to", x.reshape(-1, x.shape[-1]), weight)
  return y.reshape(*x.shape[:-1], weight.shape[0])


class Linear(nnx.Module):
  """y = x @ W.T with W stored `[out, in]` as in PyTorch; with `quantize="int8"`, W is int8
  and `scale` `[out]` its per-output-channel scales (`mind_jax.nn._quant`)."""

  def __init__(self, in_features, out_features, axes, *, dtype, param_dtype, rngs,
               quantize=None):
    self.weight = param(rngs, (out_features, in_features), param_dtype, axes)
    self.quantize = quantize
    if quantize:
      values, scale = quantize_int8(self.weight[...], jnp)
      self.weight = nnx.Param(values, out_sharding=axes, eager_sharding=False)
      self.scale = nnx.Param(scale, out_sharding=axes[:1], eager_sharding=False)
    self.dtype = dtype

  def __call__(self, x):
    y = project(x.astype(self.dtype), self.weight[...].astype(self.dtype))
    # The scale on the product, not on the weight: planned for Llama-3.1-70B on v6e-4, decode
    # steps of 61 ms against 76 (the compiler's bytes: 39 GB against 54 per chip).
    return y * self.scale[...].astype(self.dtype) if self.quantize else y


class Embed(nnx.Module):
  """Token embedding `[vocab, embed]`; `attend` reuses it as a tied output head."""

  def __init__(self, vocab_size, features, *, dtype, param_dtype, rngs):
    self.weight = param(rngs, (vocab_size, features), param_dtype, ("vocab", "embed"))
    self.dtype = dtype

  def __call__(self, ids):
    return jnp.take(self.weight[...], ids, axis=0).astype(self.dtype)

  def attend(self, x):
    return project(x.astype(self.dtype), self.weight[...].astype(self.dtype))


class RMSNorm(nnx.Module):

  def __init__(self, features, eps, *, dtype, param_dtype):
    self.weight = param(None, (features,), param_dtype, ("norm",), init="ones")
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x):
    # Normalise in float32 and cast back before the scale, as transformers does:
    # scaling in float32 instead changes bf16 results by one ulp.
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.weight[...].astype(self.dtype) * x32.astype(self.dtype)


def rope_tables(inv_freq: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos/sin tables `[B, T, D/2]` for integer positions `[B, T]`, in float32."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates `x` `[B, T, heads, D]` in the rotate-half layout HF checkpoints use."""
  cos = jnp.concatenate([cos, cos], axis=-1)[:, :, None, :].astype(x.dtype)
  sin = jnp.concatenate([sin, sin], axis=-1)[:, :, None, :].astype(x.dtype)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin
