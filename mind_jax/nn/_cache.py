"""The KV cache: fixed decode slots that prefilled sequences are inserted into."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mind_jax.nn._config import LlamaConfig

# Logical axes of the cache arrays, mapped to the mesh by the sharding rules.
CACHE_AXES = ("layers", "cache_batch", "cache_seq", "cache_heads", "head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """Keys and values `[layers, slots, max_len, kv_heads, head_dim]`.

  Entry `j` of a row holds the token at position `j`, so attention needs no
  per-row lengths: a query at position p sees entries 0..p. Entries past a
  row's end (stale tokens of an earlier occupant, padding of a prefill) are
  never visible and get overwritten as the row grows.
  """

  k: jax.Array
  v: jax.Array

  @classmethod
  def create(cls, config: LlamaConfig, slots: int, max_len: int, dtype=None, sharding=None) -> KVCache:
    shape = cls.shape(config, slots, max_len)
    dtype = jnp.dtype(dtype or config.dtype)
    zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
    return cls(k=zeros(), v=zeros())

  @staticmethod
  def shape(config: LlamaConfig, slots: int, max_len: int) -> tuple[int, ...]:
    return (config.num_hidden_layers, slots, max_len, config.num_key_value_heads,
            config.resolved_head_dim)

  @classmethod
  def nbytes_for(cls, config: LlamaConfig, slots: int, max_len: int, dtype=None) -> int:
    """Bytes of a cache before it is allocated (keys and values)."""
    itemsize = jnp.dtype(dtype or config.dtype).itemsize
    return 2 * int(np.prod(cls.shape(config, slots, max_len))) * itemsize

  @property
  def slots(self) -> int:
    return self.k.shape[1]

  @property
  def max_len(self) -> int:
    return self.k.shape[2]

  def insert(self, prefilled: KVCache, slot) -> KVCache:
    """Copies row 0 of `prefilled` (possibly shorter) into decode slot `slot`."""
    start = (0, slot, 0, 0, 0)
    return KVCache(
        k=jax.lax.dynamic_update_slice(self.k, prefilled.k[:, :1].astype(self.k.dtype), start),
        v=jax.lax.dynamic_update_slice(self.v, prefilled.v[:, :1].astype(self.v.dtype), start))


def write_rows(buf: jax.Array, new: jax.Array, positions: jax.Array) -> jax.Array:
  """Writes `new` `[B, T, K, D]` into `buf` `[B, S, K, D]` at per-row `positions` `[B, T]`.

  Positions past the end are dropped (padding of a prompt bucket).
  """
  rows = jnp.arange(buf.shape[0])[:, None]
  return buf.at[rows, positions].set(new.astype(buf.dtype), mode="drop")
