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


GREEDY = SamplingParams(temperature=0.0)


def request_key(seed: int, request_id) -> np.ndarray:
  """The raw uint32[2] key of a request: the seed's key folded with a stable id hash."""
  digest = request_id if isinstance(request_id, int) else zlib.crc32(str(request_id).encode())
  key = jax.random.fold_in(jax.random.key(seed), np.uint32(digest & 0xFFFFFFFF))
  return np.asarray(jax.random.key_data(key))


def token_keys(raw_keys: jax.Array, token_index: jax.Array) -> jax.Array:
  """Keys for the `token_index`-th token of each row (`raw_keys` uint32[B, 2])."""
  keys = jax.random.wrap_key_data(raw_keys)
  return jax.vmap(jax.random.fold_in)(keys, token_index)


def filter_logits(logits: jax.Array, temperature, top_k, top_p) -> jax.Array:
  """Scaled logits with everything outside the top-k / top-p support set to -inf.

  `logits` [B, V] float32; per-row `temperature` [B] (> 0), `top_k` [B] int
  (0 = off), `top_p` [B] (1 = off). Ties at a cut-off are all kept.
  """
  logits = logits / temperature[:, None]
  descending = -jnp.sort(-logits, axis=-1)
  vocab = logits.shape[-1]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  kth = jnp.take_along_axis(descending, (k - 1)[:, None], axis=-1)
  logits = jnp.where(logits >= kth, logits, -jnp.inf)
  # top-p over what top-k kept: the smallest prefix whose mass reaches p.
  ranked = jnp.where(jnp.arange(vocab)[None] < k[:, None], descending, -jnp.inf)
  probs = jax.nn.softmax(ranked, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = mass_before < top_p[:, None]
  cutoff = jnp.min(jnp.where(keep, ranked, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits >= cutoff, logits, -jnp.inf)


def sample(logits, keys, temperature, top_k, top_p) -> jax.Array:
  """One token per row; rows with temperature 0 take the argmax."""
  logits = logits.astype(jnp.float32)
  greedy = jnp.argmax(logits, axis=-1)
  safe_temperature = jnp.where(temperature > 0, temperature, 1.0)
  filtered = filter_logits(logits, safe_temperature, top_k, top_p)
  drawn = jax.vmap(jax.random.categorical)(keys, filtered)
  return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)
