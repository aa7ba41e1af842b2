"""Attention with a paged KV cache: write a call's keys and values into their pages, then attend
over each row's pages (or, for a prefill from position 0, over the call's own keys).

Pages of a pool are split over the mesh's batch axes as the rows that own them are (the engine
hands a row pages of its own shard only), and kv heads over `tensor`. The per-row work (writes,
reads through the page table) then runs per shard in `shard_map`, page ids shifted to the
shard's own pool, so nothing is gathered across chips. A call whose rows do not divide over
the batch axes (a prefill's single row) is left to XLA's partitioner with global page ids.

The read is a registered implementation, chosen by `LlamaConfig.attention` like `attend`:
"xla" gathers each row's pages into one array and runs `attend`; the TPU kernel
(`_kernels.py`) reads the pages in place through the table.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mind_jax import sharding as sharding_lib
from mind_jax.nn._attention import attend, get_attention
from mind_jax.nn._cache import Int8Pages, page_slots, read_pages, through_pool, write_pages


def attend_pages(q, pool_k, pool_v, table, positions, rows_are_pages: bool = False):
  """q `[B, T, H, D]` at `positions` `[B, T]` over each row's pages (local page ids) ->
  `[B, T, H, D]`, by `attend` over the gathered pages (or the pool itself, when row i's one
  page is page i)."""
  if rows_are_pages:
    k, v = pool_k, pool_v
  else:
    k, v = read_pages(pool_k, table), read_pages(pool_v, table)
  keys = jnp.broadcast_to(jnp.arange(k.shape[2]), (q.shape[0], k.shape[2]))
  if isinstance(k, Int8Pages):
    return attend(q, k.values, v.values, q_positions=positions, k_positions=keys,
                  k_scales=k.scales, v_scales=v.scales)
  return attend(q, k.astype(q.dtype), v.astype(q.dtype), q_positions=positions,
                k_positions=keys)


_PAGED = {"xla": attend_pages}


def register_paged_attention(name: str, fn) -> None:
  """Makes `fn` (same signature as `attend_pages`, run per shard) the paged read of
  `LlamaConfig(attention=name)`; unregistered names use "xla"."""
  _PAGED[name] = fn


def cached_attention(q, k, v, cache_k, cache_v, table, positions, *, fresh: bool,
                     implementation: str, per_head: bool = False, rows_are_pages: bool = False):
  """q `[B, T, H, D]`, this call's k/v `[B, T, K, D]` at `positions` `[B, T]`; pools `[P, K,
  page, D]`; `table` `[B, n]` -> (out `[B, T, H, D]`, (pool k, pool v) with the call's keys
  and values written)."""
  layout = _layout(q.shape[0])
  write = functools.partial(_write, per_head=per_head)
  cache_k, cache_v = _per_shard(write, layout, (cache_k, cache_v, k, v, table, positions),
                                ("pool", "pool", "btkd", "btkd", "bn", "bt"), ("pool", "pool"))
  if fresh:
    # The rows start here: their own keys are all they see (the splash kernel's case on TPU),
    # as the pool gives them back.
    attention = get_attention(implementation)
    k, v = through_pool(k, cache_k), through_pool(v, cache_v)
    out = attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), q_positions=positions,
                    k_positions=positions)
  else:
    fn = attend_pages if rows_are_pages else _PAGED.get(implementation, attend_pages)
    read = functools.partial(_read, fn=functools.partial(fn, rows_are_pages=True)
                             if rows_are_pages else fn)
    out = _per_shard(read, layout, (q, cache_k, cache_v, table, positions),
                     ("bthd", "pool", "pool", "bn", "bt"), "bthd")
  return out, (cache_k, cache_v)


def _write(cache_k, cache_v, k, v, table, positions, *, offset, per_head):
  page, slot = page_slots(table - offset, positions, cache_k.shape[2], cache_k.shape[0])
  return (write_pages(cache_k, k, page, slot, per_head),
          write_pages(cache_v, v, page, slot, per_head))


def _read(q, cache_k, cache_v, table, positions, *, offset, fn):
  local = jnp.where(table >= 0, table - offset, -1)
  return fn(q, cache_k, cache_v, local, positions)


def _layout(rows: int):
  """(mesh, batch axes, head axis) to run per shard under, or None: no multi-device mesh is
  being traced under, or the rows do not divide over the pages' batch axes."""
  active = sharding_lib.active_layout()
  if active is None:
    return None
  mesh, rules = active
  if math.prod(mesh.shape.values()) == 1:
    return None
  spec = sharding_lib.logical_to_spec(("cache_batch", "cache_heads"), rules, mesh)
  batch, heads = sharding_lib.spec_axes(spec[0]), sharding_lib.spec_axes(spec[1])
  if rows % sharding_lib.spec_ways(mesh, spec[0]):
    return None
  return mesh, batch, heads


def _per_shard(fn, layout, args, layouts, out_layouts):
  """`fn(*args, offset=...)`: per shard of `layout` with `offset` the first page id of the
  shard's pool, or on the whole arrays with offset 0."""
  if layout is None:
    return fn(*args, offset=0)
  mesh, batch, heads = layout
  b = batch or None
  h = heads or None
  specs = {"pool": P(b, h, None, None), "btkd": P(b, None, h, None), "bthd": P(b, None, h, None),
           "bn": P(b, None), "bt": P(b, None)}
  pool = args[layouts.index("pool")]
  if isinstance(pool, Int8Pages):
    specs["pool"] = Int8Pages(specs["pool"], P(b, h, None))

  def local(*args):
    shard = 0
    for axis in batch:
      shard = shard * mesh.shape[axis] + jax.lax.axis_index(axis)
    return fn(*args, offset=shard * args[layouts.index("pool")].shape[0])

  outs = (tuple(specs[o] for o in out_layouts) if isinstance(out_layouts, tuple)
          else specs[out_layouts])
  return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs[x] for x in layouts),
                       out_specs=outs, check_vma=False)(*args)
