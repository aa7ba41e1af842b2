"""Per-request sampling: greedy, temperature, top-k and top-p, with reproducible keys.

Every row of a batch carries its own parameters, so requests with different
settings share one decode step. Each token's random key is derived from the
global seed, the request id and the token's index, never from the slot or
the batch: a request's output does not depend on which slot it got or which
other requests ran beside it.
"""

from __future__ import annotations

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from mind_jax._errors import MindJaxError


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How one request is decoded.

  temperature 0 means greedy. top_k 0 and top_p 1.0 disable those filters.
  Generation stops at the model's EOS ids (unless `ignore_eos`), at any of
  `stop_token_ids`, after `max_new_tokens`, or at the engine's context limit.
  """

  max_new_tokens: int = 256
  temperature: float = 1.0
  top_p: float = 1.0
  top_k: int = 0
  stop_token_ids: tuple[int, ...] = ()
  ignore_eos: bool = False

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise MindJaxError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise MindJaxError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise MindJaxError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise MindJaxError(f"top_k must be >= 0, got {self.top_k}")
    object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))



def request_key(seed: int, request_id) -> np.ndarray:
  """The raw uint32[2] key of a request: the seed's key folded with a stable id hash."""
  digest = request_id if isinstance(request_id, int) else zlib.crc32(str(request_id).encode())
  key = jax.random.fold_in(jax.random.key(seed), np.uint32(digest & 0xFFFFFFFF))
  return np.asarray(jax.random.key_data(key))


def token_keys(raw_keys: jax.Array, token_index: jax.Array) -> jax.Array:
  """Keys for the `token_index`-th token of each row (`raw_keys` uint32[B, 2])."""
  keys = jax.random.wrap_key_data(raw_keys)
  return jax.vmap(jax.random.fold_in)(keys, token_index)


def _sortable(x: jax.Array) -> jax.Array:
  """float32 -> uint32 with the same order (negatives inverted, positives offset)."""
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _bisect(lo, hi, predicate):
  """Smallest t in [lo, hi] (uint32, per row) with predicate(t) true; predicate is monotone
  (false ... false true ... true) and true at hi. 32 halvings cover the uint32 range."""

  def body(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    ok = predicate(mid)
    return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

  lo, hi = jax.lax.fori_loop(0, 32, body, (lo, hi))
  return hi


def filter_logits(logits: jax.Array, temperature, top_k, top_p) -> jax.Array:
  """Scaled logits with everything outside the top-k / top-p support set to -inf.

  `logits` [B, V] float32; per-row `temperature` [B] (> 0), `top_k` [B] int
  (0 = off), `top_p` [B] (1 = off). Ties at a cut-off are all kept.

  Thresholds are found by bisection over the bit patterns of the values
  (32 masked reductions over the vocabulary) instead of a full sort, which
  dominates a decode step on CPU.
  """
  logits = logits / temperature[:, None]
  vocab = logits.shape[-1]
  keys = _sortable(logits)
  lo, hi = jnp.min(keys, axis=-1), jnp.max(keys, axis=-1)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  # The k-th largest value is the largest t with count(keys >= t) >= k, i.e. one below the
  # smallest t with count(keys >= t) < k.
  above_kth = _bisect(lo, hi + 1, lambda t: jnp.sum(keys >= t[:, None], axis=-1) < k)
  kth = above_kth - 1
  kept = keys >= kth[:, None]
  # top-p over what top-k kept: a token stays if the mass strictly above it is below p.
  probs = jnp.where(kept, jax.nn.softmax(jnp.where(kept, logits, -jnp.inf), axis=-1), 0.0)
  pkeys = jnp.where(kept, _sortable(probs), 0)
  mass_above = lambda t: jnp.sum(jnp.where(pkeys > t[:, None], probs, 0.0), axis=-1)  # noqa: E731
  cut = _bisect(jnp.zeros_like(hi), jnp.max(pkeys, axis=-1), lambda t: mass_above(t) < top_p)
  kept &= (top_p[:, None] >= 1.0) | (pkeys >= cut[:, None])
  return jnp.where(kept, logits, -jnp.inf)


def _draw(keys, logits):
  """One categorical draw per row from one uniform number (inverse CDF), not one per token."""
  probs = jax.nn.softmax(logits, axis=-1)
  cdf = jnp.cumsum(probs, axis=-1)
  u = jax.vmap(lambda key: jax.random.uniform(key, dtype=jnp.float32))(keys) * cdf[:, -1]
  index = jnp.sum(cdf <= u[:, None], axis=-1)
  # Never land on a zero-probability token at the end of the vocabulary through rounding.
  last_kept = logits.shape[-1] - 1 - jnp.argmax(jnp.isfinite(logits[:, ::-1]), axis=-1)
  return jnp.minimum(index, last_kept)


def sample(logits, keys, temperature, top_k, top_p) -> jax.Array:
  """One token per row; rows with temperature 0 take the argmax.

  When every row is greedy the filtering and drawing are skipped at run time.
  """
  logits = logits.astype(jnp.float32)
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def sampled(_):
    safe_temperature = jnp.where(temperature > 0, temperature, 1.0)
    drawn = _draw(keys, filter_logits(logits, safe_temperature, top_k, top_p))
    return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)

  return jax.lax.cond(jnp.any(temperature > 0), sampled, lambda _: greedy, None)
