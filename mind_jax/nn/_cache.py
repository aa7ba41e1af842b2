"""The KV cache: pools of fixed-size pages, and a page table that says which pages each row reads.

A row's token at position `p` lives in page `table[row, p // page_size]` at offset
`p % page_size`. A cache with one page per row, as long as the context (`KVCache.create`),
is the plain per-row cache a single model call or a test uses; the engine keeps a pool of
short pages and hands them out as sequences grow (mind_jax.engine), several rows sharing the
pages of a common prompt prefix.

A pool may hold int8 entries (`Int8Pages`): each (page, kv head, token) vector of head_dim
values stored as int8 with one float32 scale (absmax / 127), quantized once, when written. Every
read, a prefill's own keys included, sees the same dequantized values, so a sequence computed
in one prefill, in pieces, or recomputed after preemption attends over identical keys.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mind_jax.nn._config import LlamaConfig

# Logical axes of each layer's key and value pool `[pages, kv_heads, page_size, head_dim]`,
# mapped to the mesh by the sharding rules: pages split like the decode slots they belong to.
CACHE_AXES = ("cache_batch", "cache_heads", "cache_seq", "head_dim")

# A page-table entry that names no page: writes there are dropped, reads see masked junk.
NO_PAGE = -1

INT8_MAX = 127


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Int8Pages:
  """A pool (or rows gathered from one) in int8: entry = `values` * `scales`, `values` int8
  `[..., tokens, head_dim]`, `scales` float32 `[..., tokens]`, one per token and kv head."""

  values: jax.Array
  scales: jax.Array

  @property
  def shape(self) -> tuple[int, ...]:
    return self.values.shape

  @property
  def dtype(self):
    return self.values.dtype

  def dequantize(self, dtype) -> jax.Array:
    return (self.values.astype(jnp.float32) * self.scales[..., None]).astype(dtype)


def quantize_kv(x: jax.Array) -> Int8Pages:
  """`x` `[..., head_dim]` as int8 vectors with one scale each (absmax / 127; a zero vector
  gets scale 0 and values 0)."""
  x = x.astype(jnp.float32)
  scales = jnp.max(jnp.abs(x), axis=-1) / INT8_MAX
  safe = jnp.where(scales > 0, scales, 1.0)[..., None]
  values = jnp.clip(jnp.round(x / safe), -INT8_MAX, INT8_MAX).astype(jnp.int8)
  return Int8Pages(values, scales)


def through_pool(x: jax.Array, pool) -> jax.Array:
  """`x` `[..., head_dim]` as a read from `pool` would give it back: quantized and dequantized
  for an int8 pool (a fresh prefill's own keys equal what later reads see), else `x`."""
  return quantize_kv(x).dequantize(x.dtype) if isinstance(pool, Int8Pages) else x


def _zeros(shape, dtype):
  if jnp.dtype(dtype) == jnp.int8:
    return Int8Pages(jnp.zeros(shape, jnp.int8), jnp.zeros(shape[:-1], jnp.float32))
  return jnp.zeros(shape, dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """Per layer, key and value pools `[pages, kv_heads, page_size, head_dim]` (arrays, or
  `Int8Pages` for dtype int8), and the page table `[rows, table_pages]` (int32, NO_PAGE where a
  row has no page).

  Attention needs no per-row lengths: a query at position p sees the row's entries 0..p.
  Entries past a row's end (stale tokens of a page's earlier owner, padding of a prefill)
  are never visible and get overwritten as the row grows.

  `fresh` (static): the queries of this call are their rows' first tokens (a prefill from
  position 0), so attention needs only the call's own keys, not the pages.
  `rows_are_pages` (static): row i's one page is page i (`empty`, `rows`): attention reads the
  pool as it is, `[rows, kv_heads, positions, head_dim]`, without gathering through the table.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  table: jax.Array
  fresh: bool = dataclasses.field(default=False, metadata=dict(static=True))
  rows_are_pages: bool = dataclasses.field(default=False, metadata=dict(static=True))

  @classmethod
  def empty(cls, config: LlamaConfig, slots: int, max_len: int, dtype=None) -> KVCache:
    """A zero cache of one `max_len` page per row, traceable: inside a jitted program it is
    built in place rather than transferred in."""
    return dataclasses.replace(cls.pool(config, slots, max_len, dtype),
                               table=jnp.arange(slots, dtype=jnp.int32)[:, None],
                               rows_are_pages=True)

  @classmethod
  def pool(cls, config: LlamaConfig, pages: int, page_size: int, dtype=None) -> KVCache:
    """`pages` zero pages of `page_size` tokens, with an empty page table (int8: `Int8Pages`)."""
    shape = cls.layer_shape(config, pages, page_size)
    dtype = jnp.dtype(dtype or config.dtype)
    layers = config.num_hidden_layers
    return cls(k=tuple(_zeros(shape, dtype) for _ in range(layers)),
               v=tuple(_zeros(shape, dtype) for _ in range(layers)),
               table=jnp.zeros((0, 1), jnp.int32))

  @classmethod
  def create(cls, config: LlamaConfig, slots: int, max_len: int, dtype=None, sharding=None) -> KVCache:
    """`empty`, allocated now (on `sharding`'s devices when given)."""
    layers = config.num_hidden_layers
    if sharding is not None:
      pool = pool_sharding(sharding, dtype or config.dtype)
      shardings = cls((pool,) * layers, (pool,) * layers,
                      jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()),
                      False, True)
    else:
      shardings = None
    return jax.jit(lambda: cls.empty(config, slots, max_len, dtype), out_shardings=shardings)()

  @staticmethod
  def layer_shape(config: LlamaConfig, pages: int, page_size: int) -> tuple[int, ...]:
    return (pages, config.num_key_value_heads, page_size, config.resolved_head_dim)

  @classmethod
  def nbytes_for(cls, config: LlamaConfig, pages: int, page_size: int, dtype=None) -> int:
    """Bytes of a pool before it is allocated (keys and values, all layers; int8: with the
    float32 scale of each token and kv head)."""
    dtype = jnp.dtype(dtype or config.dtype)
    shape = cls.layer_shape(config, pages, page_size)
    per_layer = int(np.prod(shape)) * dtype.itemsize
    if dtype == jnp.int8:
      per_layer += int(np.prod(shape[:-1])) * 4
    return 2 * config.num_hidden_layers * per_layer

  @property
  def pages(self) -> int:
    return self.k[0].shape[0]

  @property
  def page_size(self) -> int:
    return self.k[0].shape[2]

  def with_table(self, table, fresh: bool = False) -> KVCache:
    return dataclasses.replace(self, table=jnp.asarray(table, jnp.int32), fresh=fresh,
                               rows_are_pages=False)

  def rows(self) -> KVCache:
    """Each table row's pages gathered into one page of its own, `[rows, kv_heads,
    table_pages * page_size, head_dim]`: a decode loop attends over these in place for
    several steps instead of gathering the pages at every step (XLA; the TPU kernel reads
    pages in place). `write_back` returns what the steps wrote to the pages."""
    rows = self.table.shape[0]
    return KVCache(tuple(read_pages(k, self.table) for k in self.k),
                   tuple(read_pages(v, self.table) for v in self.v),
                   jnp.arange(rows, dtype=jnp.int32)[:, None], rows_are_pages=True)

  def write_back(self, rows: KVCache, positions) -> KVCache:
    """The entries of `rows` (from `self.rows()`) at `positions` `[rows, T]` written into this
    cache's pages (positions past the table, and rows naming no page, dropped)."""
    page, offset = page_slots(self.table, positions, self.page_size, self.pages)
    at = jnp.clip(positions, 0, rows.page_size - 1)[:, None, :, None]

    def put(pool, window):
      if isinstance(window, Int8Pages):  # the entries as they are: quantized once, when made
        new = Int8Pages(jnp.take_along_axis(window.values, at, axis=2).transpose(0, 2, 1, 3),
                        jnp.take_along_axis(window.scales, at[..., 0], axis=2).transpose(0, 2, 1))
      else:
        new = jnp.take_along_axis(window, at, axis=2).transpose(0, 2, 1, 3)  # [rows, T, K, D]
      return write_pages(pool, new, page, offset)

    return dataclasses.replace(self, k=tuple(map(put, self.k, rows.k)),
                               v=tuple(map(put, self.v, rows.v)))

  def copy_page(self, src, dst) -> KVCache:
    """Page `dst` of every layer set to page `src` (copy-on-write of a shared prefix's last,
    partly filled page; `src == dst` copies nothing).

    Written as the prefill's own writes are (`write_pages`, one vector per head and position),
    not as `pool.at[dst].set(pool[src])`: from jax 0.11 the TPU compiler copies every layer's
    whole pool around that update in the prefill program (Llama-3.1-8B on v6e-8: 3.96 GiB of
    temporaries per chip against 0.01; the 70B generate configs no longer fit v6e-8 and
    v4-32)."""
    def copy(pool):
      size = jax.tree.leaves(pool)[0].shape[2]
      entries = jax.tree.map(lambda a: jnp.swapaxes(a[src], 0, 1)[None], pool)  # [1, page, K..]
      return write_pages(pool, entries, jnp.full((1, size), dst), jnp.arange(size)[None],
                         per_head=True)
    return dataclasses.replace(self, k=tuple(map(copy, self.k)), v=tuple(map(copy, self.v)))


def page_slots(table: jax.Array, positions: jax.Array, page_size: int, pages: int):
  """(page, offset) `[B, T]` of each row's tokens at `positions` `[B, T]`. Positions past the
  table, and table entries naming no page (NO_PAGE, or a page outside this pool of `pages`:
  another shard's), give page `pages`: out of range, so a write there is dropped."""
  column = positions // page_size
  page = jnp.take_along_axis(table, jnp.clip(column, 0, table.shape[1] - 1), axis=1)
  page = jnp.where((column < table.shape[1]) & (page >= 0) & (page < pages), page, pages)
  return page, positions % page_size


def write_pages(pool: jax.Array, new: jax.Array, page: jax.Array, offset: jax.Array,
                per_head: bool = False) -> jax.Array:
  """Writes `new` `[B, T, K, D]` into `pool` `[P, K, page_size, D]` at `page`/`offset` `[B, T]`
  (page P and beyond: dropped).

  `per_head` writes each (row, position, kv head) as its own D-vector instead of one [K, D]
  window per (row, position): the same values, for the TPU, whose layout assignment otherwise
  copies the whole pool into a K-minor layout (the window contiguous) and back whenever a chip
  holds more than one kv head: every step of a decode loop, and in every prefill (the 70B
  v5p-32 plan: 551 GB moved per chip for one 1,024-token prompt). Elsewhere (XLA:CPU writes
  the windows about 3x faster) they stay windows.

  An `Int8Pages` pool takes float entries quantized here, or `Int8Pages` entries as they are.
  """
  if isinstance(pool, Int8Pages):
    new = new if isinstance(new, Int8Pages) else quantize_kv(new)
    return Int8Pages(write_pages(pool.values, new.values, page, offset, per_head),
                     _write_scales(pool.scales, new.scales, page, offset, per_head))
  new = new.astype(pool.dtype)
  if not per_head:
    return pool.at[page, :, offset].set(new, mode="drop")
  heads = jnp.arange(pool.shape[1])[None, None, :]
  return pool.at[page[:, :, None], heads, offset[:, :, None]].set(new, mode="drop")


def _write_scales(scales, new, page, offset, per_head):
  """`write_pages` of the scales `[P, K, page_size]` of entries `[B, T, K]`."""
  if not per_head:
    return scales.at[page, :, offset].set(new, mode="drop")
  heads = jnp.arange(scales.shape[1])[None, None, :]
  return scales.at[page[:, :, None], heads, offset[:, :, None]].set(new, mode="drop")


def read_pages(pool, table: jax.Array):
  """The rows' pages in order, `[B, K, table_pages * page_size, D]` (entry j = position j;
  `Int8Pages` from an int8 pool). Entries naming no page read some page of the pool: finite
  values a query never sees."""
  if isinstance(pool, Int8Pages):
    b, n = table.shape
    scales = pool.scales[jnp.clip(table, 0, pool.shape[0] - 1)]  # [B, n, K, page]
    return Int8Pages(read_pages(pool.values, table),
                     scales.transpose(0, 2, 1, 3).reshape(b, pool.shape[1], -1))
  b, n = table.shape
  _, k, page, d = pool.shape
  rows = pool[jnp.clip(table, 0, pool.shape[0] - 1)]  # [B, n, K, page, D]
  return rows.transpose(0, 2, 1, 3, 4).reshape(b, k, n * page, d)


def pool_sharding(sharding: jax.sharding.NamedSharding, dtype):
  """The sharding of one layer's pool from that of its `[pages, K, page, D]` entries (an
  `Int8Pages` pool: its scales split the same way, without the head dim)."""
  if jnp.dtype(dtype) != jnp.int8:
    return sharding
  spec = tuple(sharding.spec) + (None,) * (4 - len(sharding.spec))
  return Int8Pages(sharding, jax.sharding.NamedSharding(sharding.mesh,
                                                        jax.sharding.PartitionSpec(*spec[:3])))
