"""Cross-entropy through the output head, a chunk of positions at a time.

Built whole, the head's logits are the largest activations of a Llama train step: per chip
and microbatch `[tokens, vocab]` in the compute dtype, again in float32 for the loss, and
once more as their gradient (Llama-3.1-8B, 3 x 4,096 tokens a chip: 2.9 + 5.9 + 5.9 GiB).
Here the logits of `chunk` positions exist at a time: each chunk's log-partition, target
logit and z-loss are computed, and with them (under differentiation) the chunk's gradient
with respect to the hidden states and the head, so the backward pass neither keeps nor
recomputes any logits. Same matmuls, same FLOPs as autodiff of the whole head.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mind_jax.nn import project
from mind_jax.sharding import constrain

LOGIT_AXES = ("batch", None, "vocab")


def head_cross_entropy(hidden, head, targets, weights, *, z_loss: float, chunk: int,
                       head_sharding=None):
  """(loss, nll): `loss` = sum of weighted token NLLs + z_loss * sum of weighted squared
  log-partitions, and the NLL sum alone (for reporting: its gradient is stopped).

  hidden `[B, T, E]` (the final norm's output, compute dtype), head `[V, E]` (cast to the
  hidden's dtype, as the model's head does), targets `[B, T]` int, weights `[B, T]` float.
  `head_sharding`: where the head's gradient lives (the parameter's sharding), so that its
  running sum over chunks is laid out as the parameter is.
  """
  length = hidden.shape[1]
  chunk = min(chunk, length) if chunk > 0 else length
  pad = -length % chunk
  if pad:  # padded positions carry weight 0: no loss, no gradient
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    weights = jnp.pad(weights, ((0, 0), (0, pad)))
  loss, nll = _fused(float(z_loss), chunk, head_sharding, hidden, head, targets,
                     weights.astype(jnp.float32))
  return loss, jax.lax.stop_gradient(nll)


def _chunks(chunk, *rows):
  """Each `[B, T, ...]` as `[T / chunk, B, chunk, ...]`, the scan's inputs."""
  return tuple(jnp.swapaxes(x.reshape(x.shape[0], -1, chunk, *x.shape[2:]), 0, 1) for x in rows)


def _chunk_terms(h, head, t, w, z_loss):
  """One chunk's float32 logits, log-partitions, and NLL and z sums; head in h's dtype."""
  logits = constrain(project(h, head), LOGIT_AXES).astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
  nll = jnp.sum((log_z - target) * w)
  z = jnp.sum(jnp.square(log_z) * w) if z_loss else jnp.float32(0)
  return logits, log_z, nll, z


def _forward(z_loss, chunk, hidden, head, targets, weights):
  head = head.astype(hidden.dtype)

  def body(carry, xs):
    h, t, w = xs
    _, _, nll, z = _chunk_terms(h, head, t, w, z_loss)
    return (carry[0] + nll, carry[1] + z), None

  xs = _chunks(chunk, hidden, targets, weights)
  (nll, z), _ = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0)), xs)
  return nll + z_loss * z, nll


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused(z_loss, chunk, head_sharding, hidden, head, targets, weights):
  return _forward(z_loss, chunk, hidden, head, targets, weights)


def _fused_fwd(z_loss, chunk, head_sharding, hidden, head, targets, weights):
  dtype = hidden.dtype
  head_c = head.astype(dtype)

  def body(carry, xs):
    nll_sum, z_sum, d_head = carry
    h, t, w = xs
    logits, log_z, nll, z = _chunk_terms(h, head_c, t, w, z_loss)
    # d(loss)/d(logits) = w (softmax (1 + 2 z_loss log_z) - onehot(target))
    probs = jnp.exp(logits - log_z[..., None])
    scale = w * (1 + 2 * z_loss * log_z) if z_loss else w
    d_logits = probs * scale[..., None]
    d_logits = d_logits - jax.nn.one_hot(t, logits.shape[-1], dtype=d_logits.dtype) * w[..., None]
    d_logits = constrain(d_logits.astype(dtype), LOGIT_AXES)
    flat = d_logits.reshape(-1, d_logits.shape[-1])
    d_h = (flat @ head_c).reshape(h.shape)
    # One 2-D contraction over the chunk's positions (as mind_jax.nn.project, for XLA:CPU).
    d_head = d_head + jnp.einsum("tv,te->ve", flat, h.reshape(-1, h.shape[-1])).astype(d_head.dtype)
    if head_sharding is not None:
      d_head = jax.lax.with_sharding_constraint(d_head, head_sharding)
    return (nll_sum + nll, z_sum + z, d_head), d_h

  xs = _chunks(chunk, hidden, targets, weights)
  d_head0 = jnp.zeros(head.shape, jnp.float32)
  if head_sharding is not None:
    d_head0 = jax.lax.with_sharding_constraint(d_head0, head_sharding)
  (nll, z, d_head), d_hidden = jax.lax.scan(body, (jnp.float32(0), jnp.float32(0), d_head0), xs)
  d_hidden = jnp.swapaxes(d_hidden, 0, 1).reshape(hidden.shape)
  return (nll + z_loss * z, nll), (d_hidden, d_head.astype(head.dtype))


def _fused_bwd(z_loss, chunk, head_sharding, residuals, cotangents):
  d_hidden, d_head = residuals
  g = cotangents[0]  # the NLL output's gradient is stopped by head_cross_entropy
  return ((g * d_hidden.astype(jnp.float32)).astype(d_hidden.dtype), g * d_head,
          None, None)


_fused.defvjp(_fused_fwd, _fused_bwd)
