"""The KV cache: pools of fixed-size pages, and a page table that says which pages each row reads.

A row's token at position `p` lives in page `table[row, p // page_size]` at offset
`p % page_size`. A cache with one page per row, as long as the context (`KVCache.create`),
is the plain per-row cache a single model call or a test uses; the engine keeps a pool of
short pages and hands them out as sequences grow (mind_jax.engine), several rows sharing the
pages of a common prompt prefix.
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


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """Per layer, key and value pools `[pages, kv_heads, page_size, head_dim]`, and the page
  table `[rows, table_pages]` (int32, NO_PAGE where a row has no page).

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
    """`pages` zero pages of `page_size` tokens, with an empty page table."""
    shape = cls.layer_shape(config, pages, page_size)
    dtype = jnp.dtype(dtype or config.dtype)
    layers = config.num_hidden_layers
    return cls(k=tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
               v=tuple(jnp.zeros(shape, dtype) for _ in range(layers)),
               table=jnp.zeros((0, 1), jnp.int32))

  @classmethod
  def create(cls, config: LlamaConfig, slots: int, max_len: int, dtype=None, sharding=None) -> KVCache:
    """`empty`, allocated now (on `sharding`'s devices when given)."""
    layers = config.num_hidden_layers
    shardings = None if sharding is None else cls(
        (sharding,) * layers, (sharding,) * layers,
        jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()), False, True)
    return jax.jit(lambda: cls.empty(config, slots, max_len, dtype), out_shardings=shardings)()

  @staticmethod
  def layer_shape(config: LlamaConfig, pages: int, page_size: int) -> tuple[int, ...]:
    return (pages, config.num_key_value_heads, page_size, config.resolved_head_dim)

  @classmethod
  def nbytes_for(cls, config: LlamaConfig, pages: int, page_size: int, dtype=None) -> int:
    """Bytes of a pool before it is allocated (keys and values, all layers)."""
    itemsize = jnp.dtype(dtype or config.dtype).itemsize
    per_layer = int(np.prod(cls.layer_shape(config, pages, page_size))) * itemsize
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
      new = jnp.take_along_axis(window, at, axis=2).transpose(0, 2, 1, 3)  # [rows, T, K, D]
      return write_pages(pool, new, page, offset)

    return dataclasses.replace(self, k=tuple(map(put, self.k, rows.k)),
                               v=tuple(map(put, self.v, rows.v)))

  def copy_page(self, src, dst) -> KVCache:
    """Page `dst` of every layer set to page `src` (copy-on-write of a shared prefix's last,
    partly filled page; `src == dst` copies nothing)."""
    copy = lambda pool: pool.at[dst].set(pool[src])  # noqa: E731
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
  """
  new = new.astype(pool.dtype)
  if not per_head:
    return pool.at[page, :, offset].set(new, mode="drop")
  heads = jnp.arange(pool.shape[1])[None, None, :]
  return pool.at[page[:, :, None], heads, offset[:, :, None]].set(new, mode="drop")


def read_pages(pool: jax.Array, table: jax.Array) -> jax.Array:
  """The rows' pages in order, `[B, K, table_pages * page_size, D]` (entry j = position j).
  Entries naming no page read some page of the pool: finite values a query never sees."""
  b, n = table.shape
  _, k, page, d = pool.shape
  rows = pool[jnp.clip(table, 0, pool.shape[0] - 1)]  # [B, n, K, page, D]
  return rows.transpose(0, 2, 1, 3, 4).reshape(b, k, n * page, d)
