"""The KV cache: fixed decode slots that prefilled sequences are inserted into."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mind_jax.nn._config import LlamaConfig

# Logical axes of each layer's key and value arrays, mapped to the mesh by the sharding rules.
CACHE_AXES = ("cache_batch", "cache_heads", "cache_seq", "head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """Per layer, keys and values `[slots, kv_heads, max_len, head_dim]`.

  Entry `j` of a row holds the token at position `j`, so attention needs no
  per-row lengths: a query at position p sees entries 0..p. Entries past a
  row's end (stale tokens of an earlier occupant, padding of a prefill) are
  never visible and get overwritten as the row grows.

  One array per layer, heads before positions: a decode step then updates
  each array in place and attends over it without slicing or transposing a
  stacked cache, which on CPU made a step several times slower.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]

  @classmethod
  def empty(cls, config: LlamaConfig, slots: int, max_len: int, dtype=None) -> KVCache:
    """A zero cache, traceable: inside a jitted program (a prefill, a decode state) it is
    built in place rather than transferred in."""
    shape = cls.layer_shape(config, slots, max_len)
    dtype = jnp.dtype(dtype or config.dtype)
    layers = config.num_hidden_layers
    return cls(k=tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
               v=tuple(jnp.zeros(shape, dtype) for _ in range(layers)))

  @classmethod
  def create(cls, config: LlamaConfig, slots: int, max_len: int, dtype=None, sharding=None) -> KVCache:
    """`empty`, allocated now (on `sharding`'s devices when given)."""
    layers = config.num_hidden_layers
    shardings = None if sharding is None else cls((sharding,) * layers, (sharding,) * layers)
    return jax.jit(lambda: cls.empty(config, slots, max_len, dtype), out_shardings=shardings)()

  @staticmethod
  def layer_shape(config: LlamaConfig, slots: int, max_len: int) -> tuple[int, ...]:
    return (slots, config.num_key_value_heads, max_len, config.resolved_head_dim)

  @classmethod
  def nbytes_for(cls, config: LlamaConfig, slots: int, max_len: int, dtype=None) -> int:
    """Bytes of a cache before it is allocated (keys and values, all layers)."""
    itemsize = jnp.dtype(dtype or config.dtype).itemsize
    per_layer = int(np.prod(cls.layer_shape(config, slots, max_len))) * itemsize
    return 2 * config.num_hidden_layers * per_layer

  @property
  def slots(self) -> int:
    return self.k[0].shape[0]

  @property
  def max_len(self) -> int:
    return self.k[0].shape[2]

  def insert(self, prefilled: KVCache, slot) -> KVCache:
    """Copies row 0 of `prefilled` (possibly shorter) into decode slot `slot`."""

    def put(dst, src):
      return jax.lax.dynamic_update_slice(dst, src[:1].astype(dst.dtype), (slot, 0, 0, 0))

    return KVCache(k=tuple(map(put, self.k, prefilled.k)), v=tuple(map(put, self.v, prefilled.v)))


def write_rows(buf: jax.Array, new: jax.Array, positions: jax.Array,
               per_head: bool = False) -> jax.Array:
  """Writes `new` `[B, T, K, D]` into `buf` `[B, K, S, D]` at per-row `positions` `[B, T]`.

  Positions past the end are dropped (padding of a prompt bucket). `per_head` writes each
  (row, position, kv head) as its own D-vector instead of one [K, D] window per (row,
  position): the same values, for the TPU, whose layout assignment otherwise keeps a decode
  loop's cache in a K-minor layout (the window contiguous) and copies the whole cache into and
  out of it every step whenever a chip holds more than one kv head. Elsewhere (XLA:CPU writes
  the windows about 3x faster) and in prefill (T index vectors per row, not one) they stay.
  """
  rows = jnp.arange(buf.shape[0])[:, None]
  if not per_head:
    return buf.at[rows, :, positions].set(new.astype(buf.dtype), mode="drop")
  heads = jnp.arange(buf.shape[1])[None, None, :]
  return buf.at[rows[:, :, None], heads, positions[:, :, None]].set(new.astype(buf.dtype),
                                                                   mode="drop")
