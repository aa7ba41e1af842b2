"""The decode engine: a paged KV cache, prefill into pages, multi-step generate, host scheduling.

Design (after JetStream's prefill / insert / generate split, with vLLM's paged cache):
- the KV cache is a pool of fixed-size pages per layer; each sequence has a page table, pages
  are taken as it grows and returned when it ends (`_pages.PagePool`, on the host);
- a request is prefilled alone, its prompt padded to a length bucket so the
  number of compiled programs stays small, writing its keys and values into its pages; its
  first token is sampled there and its decode slot made live in the same compiled call; a
  prompt prefix shared with earlier requests is not computed again: its pages are read in
  place (the partly filled last one copied); a long prompt goes in pieces (`PREFILL_PIECE`),
  each after the first reading the earlier ones from the pages;
- one generate call advances every live slot by `steps_per_call` tokens
  inside a `lax.scan`, and returns one packed `[steps, slots]` array of the
  new tokens (-1 where a slot was idle), so the host syncs once per call; it runs the rows up
  to the highest live slot only, and the scheduler keeps live slots packed low;
- the host scheduler reads that array, finishes requests (stop id,
  max_new_tokens, context limit) and refills their slots from the queue;
- a program shape met for the first time is compiled only when no compiled one covers it, or
  once it has been wanted often enough to pay for its compilation (`COMPILE_AFTER_CALLS`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from mind_jax import sharding as sharding_lib
from mind_jax._errors import MindJaxError
from mind_jax.engine._sampling import SamplingParams, request_key, sample, token_keys
from mind_jax.nn import (CACHE_AXES, NO_PAGE, KVCache, Llama, paged_kernel_reads,
                         pool_sharding)
from mind_jax.engine._pages import PagePool, Prefix, prefix_key

log = logging.getLogger(__name__)

MAX_STOP_IDS = 16  # stop ids per request (model EOS ids included), padded with -1

# Prompts longer than this many tokens (rounded down to a bucket) are prefilled in pieces of it,
# each after the first reading the earlier ones from the pages: a long prompt, or a preempted
# sequence's recompute, runs the programs that the shared-prefix prefills already compiled
# instead of one of its own for a rare length (on the CPU benchmark, five programs of 2.5-5 s
# compiled for 13 calls).
PREFILL_PIECE = 512

# A call whose program shape (decode: rows and window; prefill: bucket and window) is not
# compiled yet runs the smallest compiled one that covers it (more rows, a wider window, a
# longer bucket), until the shape has been wanted this many times: a shape wanted for a few
# calls only (a run's ramp-down, a rare recompute) would cost a compilation (2-4 s on this
# CPU, far more for a large model on TPU) worth more than the padding it saves.
COMPILE_AFTER_CALLS = 8


@dataclasses.dataclass
class Request:
  """Token ids to continue, how to sample them, and an id to find the result by.

  `prefix_len`: the first `prefix_len` prompt tokens are shared with other requests (the same
  ids). The engine computes their keys and values once and every sharer reads the same pages;
  each sharer's prefill computes only the rest of its prompt.
  """

  id: int | str
  prompt_ids: Sequence[int]
  sampling: SamplingParams = SamplingParams()
  prefix_len: int = 0


@dataclasses.dataclass
class Result:
  """A finished request. `finish_reason` is one of: eos, stop, length (max_new_tokens),
  context_limit, error (then `error` says why and no tokens were generated)."""

  id: int | str
  prompt_ids: list[int]
  token_ids: list[int]
  finish_reason: str
  text: str | None = None
  error: str | None = None

  @property
  def prompt_tokens(self) -> int:
    return len(self.prompt_ids)

  @property
  def output_tokens(self) -> int:
    return len(self.token_ids)


# The page size the engine uses unless told: the TPU paged kernel reads 64-token pages in
# blocks of 8 (512 tokens), and a sequence wastes half a page on average at its end.
PAGE_SIZE = 64


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Shape of the decode state.

  slots: the most sequences decoding at once (continuous batching).
  max_len: context limit per sequence, prompt + output.
  steps_per_call: tokens each slot advances per generate call.
  prefill_buckets: prompt lengths compiled for; prompts pad up to the next one.
  seed: global seed; each request's key derives from it and the request id.
  cache_dtype: KV cache dtype (default: the model's compute dtype); "int8": int8 entries
    with a float32 scale per token and kv head (`mind_jax.nn.Int8Pages`).
  page_size: tokens per KV page, a multiple of 8 dividing max_len (default: PAGE_SIZE, or
    the largest power of two from 8 below it that divides max_len; with none, PAGE_SIZE and
    a row's last page partly unused).
  kv_pages: pages in the pool, over all shards (default: from kv_memory).
  kv_memory: bytes of KV pool per device (default: what fits in the memory left after the
    weights, up to every slot at max_len).
  admission: "projected": a request is admitted when its prompt's pages are free and the
    pages its shard's running sequences are projected to need at their worst moment still
    fit (see `_Scheduler._growth`), so the pool rarely runs dry; "eager": when its prompt's
    pages are free, keeping one page per running sequence; the youngest is preempted (and
    recomputed later) whenever the pool runs dry.
  """

  slots: int = 8
  max_len: int = 4096
  steps_per_call: int = 8
  prefill_buckets: tuple[int, ...] | None = None
  seed: int = 0
  cache_dtype: str | None = None
  page_size: int | None = None
  kv_pages: int | None = None
  kv_memory: int | None = None
  admission: str = "projected"

  def buckets(self) -> tuple[int, ...]:
    if self.prefill_buckets:
      return tuple(sorted(b for b in self.prefill_buckets if b <= self.max_len)) or (self.max_len,)
    out, size = [], 32
    while size < self.max_len:
      out.append(size)
      size *= 2
    return tuple(out) + (self.max_len,)

  @property
  def page(self) -> int:
    """The page size in use (`page_size`, or the default for this max_len)."""
    if self.page_size is not None:
      return self.page_size
    return next((p for p in (64, 32, 16, 8) if self.max_len % p == 0), PAGE_SIZE)

  @property
  def row_pages(self) -> int:
    """Pages of one sequence at the context limit."""
    return -(-self.max_len // self.page)


def check_page_size(page_size: int, max_len: int, key: str = "engine.page_size") -> None:
  """A page size the kernels take (a multiple of 8 tokens) that divides the context limit."""
  if page_size < 8 or page_size % 8:
    raise MindJaxError(f"{key}={page_size}: a page must hold a multiple of 8 tokens (the TPU "
                       "kernel's tile); use 16, 32, 64 or 128")
  if max_len % page_size:
    fits = [p for p in (128, 64, 32, 16, 8) if max_len % p == 0]
    raise MindJaxError(f"{key}={page_size} does not divide the context limit {max_len}; "
                       + (f"use {fits[0]}" if fits else "make the context limit a multiple of 8"))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
  """Everything a generate call needs, one row per slot, kept on the devices (the page table
  comes from the host with each call)."""

  cache: KVCache
  tokens: jax.Array       # [S] int32: the token each slot feeds next
  positions: jax.Array    # [S] int32: that token's position
  keys: jax.Array         # [S, 2] uint32: the request's raw key
  generated: jax.Array    # [S] int32: tokens generated so far (the next token's key index)
  budget: jax.Array       # [S] int32: tokens the request may generate in all
  active: jax.Array       # [S] bool
  temperature: jax.Array  # [S] float32
  top_k: jax.Array        # [S] int32
  top_p: jax.Array        # [S] float32
  stop_ids: jax.Array     # [S, MAX_STOP_IDS] int32, -1 padded


_SLOT_FIELDS = tuple(f.name for f in dataclasses.fields(DecodeState) if f.name != "cache")


@dataclasses.dataclass
class _Sequence:
  """A request the engine has admitted: its tokens so far, its slot and pages."""

  request: Request
  tokens: list[int]
  slot: int
  pages: list[int]
  order: int  # admission order: the youngest is preempted first


class Engine:
  """Continuous-batching decoder over a (possibly sharded) Llama with a paged KV cache.

      engine = Engine(model, tokenizer, EngineConfig(slots=64, max_len=4096))
      for result in engine.generate(requests):   # as they finish
        ...

  The pool's pages are taken as sequences grow and returned as they end; a request is
  admitted when its prompt's pages are free and the growth projected for the running
  sequences still fits (EngineConfig.admission); when the pool runs dry mid-decode all the
  same, the youngest sequence is preempted and later recomputed from its prompt and the
  tokens it had made, so its output is an uninterrupted run's.
  """

  def __init__(self, model: Llama, tokenizer=None, config: EngineConfig = EngineConfig(),
               mesh: Mesh | None = None, *, allocate: bool = True, rules: str = "generate"):
    """`allocate=False` builds the programs' structure only (for `lower`): `model` may then be
    abstract (`nnx.eval_shape`) and the mesh's devices a TPU topology's. `rules` lay out the
    decode slots and activations as the model's weights are laid out ("train": slots over
    data x fsdp, for an engine whose weights are split over fsdp too)."""
    self.model = model
    self.tokenizer = tokenizer
    self.config = config
    self.model_config = model.config
    if config.max_len > model.config.max_position_embeddings:
      log.warning("max_len %d exceeds the model's max_position_embeddings %d", config.max_len,
                  model.config.max_position_embeddings)
    if config.page_size is not None:
      check_page_size(config.page_size, config.max_len)
    self.mesh = mesh or sharding_lib.one_device_mesh()
    self.rules = rules
    self.shards = slot_ways(self.mesh, rules)
    if config.slots % self.shards:
      raise MindJaxError(f"engine slots={config.slots} must be a multiple of the mesh's batch "
                         f"axes ({self.shards})")
    self.eos_ids = tuple(model.config.eos_token_ids)
    self._graphdef, self._params = nnx.split(model)
    self.pages_per_shard = self._pool_pages(allocate) // self.shards
    if allocate:
      self.state = self._init_state()
    self._buckets = config.buckets()
    self._piece = max((b for b in self._buckets if b <= PREFILL_PIECE), default=self._buckets[0])
    # A CPU step's cost grows with its rows (compute-bound: 32 rows of the benchmark's 60M
    # generator took 946 ms a call, 16 rows 576), so there the rows a call runs follow the
    # live sequences closely; on an accelerator a step costs about the weights' bytes whatever
    # the rows, and coarse steps compile fewer programs.
    self._fine_rows = self.mesh.devices.flat[0].platform == "cpu"
    self._seen: set[str] = set()
    self._compiled: dict[str, set[tuple[int, int]]] = collections.defaultdict(set)
    self._wanted: collections.Counter = collections.Counter()
    self.stats = collections.Counter()

  # --- memory ------------------------------------------------------------------------------

  @property
  def _cache_dtype(self):
    return jnp.dtype(self.config.cache_dtype or self.model_config.dtype)

  def page_bytes(self) -> int:
    """Bytes of one page, keys and values of every layer (over all its devices)."""
    return KVCache.nbytes_for(self.model_config, 1, self.config.page, self._cache_dtype)

  def cache_bytes(self) -> tuple[int, int]:
    """(bytes per page, bytes of the whole pool), keys and values."""
    pages = self.pages_per_shard * self.shards
    return self.page_bytes(), pages * self.page_bytes()

  def _per_device(self, pages: int) -> int:
    """Bytes per device of a pool of `pages` pages."""
    shape = KVCache.layer_shape(self.model_config, pages, self.config.page)
    ways = math.prod(shape) // math.prod(self._cache_sharding().shard_shape(shape))
    return KVCache.nbytes_for(self.model_config, pages, self.config.page,
                              self._cache_dtype) // ways

  def _pool_pages(self, allocate: bool) -> int:
    """The pool's pages over all shards: engine.kv_pages, else engine.kv_memory per device,
    else what fits in the free memory after the weights; never more than every slot at the
    context limit, never less than one such sequence per shard."""
    cfg, shards = self.config, self.shards
    most = cfg.slots * cfg.row_pages
    per_shard_page = self._per_device(shards)  # one page in each shard: bytes per device
    free = _free_device_bytes(self.mesh.devices.flat[0]) if allocate else None
    if cfg.kv_pages is not None:
      if cfg.kv_pages % shards:
        raise MindJaxError(f"engine.kv_pages={cfg.kv_pages} must be a multiple of the mesh's "
                           f"batch axes ({shards}): each shard of the slots has its own pages")
      pages, source = cfg.kv_pages, f"engine.kv_pages={cfg.kv_pages}"
    elif cfg.kv_memory is not None:
      if free is not None and cfg.kv_memory > free:
        raise MindJaxError(f"engine.kv_memory={cfg.kv_memory} bytes ({_human(cfg.kv_memory)}) is "
                           f"more than the {_human(free)} free on {self.mesh.devices.flat[0]}")
      pages = cfg.kv_memory // per_shard_page * shards
      source = f"engine.kv_memory={cfg.kv_memory} ({_human(cfg.kv_memory)} per device)"
    elif free is not None:
      pages = min(most, int(KV_CACHE_MEMORY_FRACTION * free) // per_shard_page * shards)
      source = f"the free memory ({_human(free)} per device)"
    else:
      pages, source = most, "every slot at the context limit"
    if pages // shards < cfg.row_pages:
      need = self._per_device(cfg.row_pages * shards)
      raise MindJaxError(
          f"the KV pool from {source} holds {pages // shards} page(s) of {cfg.page} tokens "
          f"per shard, fewer than one sequence at the context limit needs ({cfg.row_pages}, "
          f"{_human(need)} per device): give more engine.kv_memory or engine.kv_pages, or "
          "use a shorter context limit")
    per_device = self._per_device(pages)
    if free is not None and per_device > free:
      raise MindJaxError(f"the KV pool ({source}) needs {_human(per_device)} per device but "
                         f"only {_human(free)} is free: give fewer engine.kv_pages or less "
                         "engine.kv_memory")
    if allocate:
      log.info("KV pool: %d pages of %d tokens (%d per shard x %d), %s per device, %s; room "
               "for %.1f sequences per slot shard at the context limit %d (from %s)", pages,
               cfg.page, pages // shards, shards, _human(per_device),
               self._cache_dtype.name, pages / shards / cfg.row_pages, cfg.max_len, source)
      model = self.model_config
      if model.attention == "tpu" and not paged_kernel_reads(
          self._cache_dtype, model.resolved_head_dim, cfg.page):
        log.warning("the TPU paged attention kernel does not read a %s pool of %d-dim heads: "
                    "decoding gathers the pages through XLA at every step (for int8 the plan "
                    "predicts 2.4-4.9x fewer tokens/s than a bfloat16 pool; docs/planning.md)",
                    self._cache_dtype.name, model.resolved_head_dim)
    return pages

  def _cache_sharding(self) -> NamedSharding:
    return sharding_lib.data_sharding(self.mesh, self.rules, CACHE_AXES)

  def _row_sharding(self, extra_dims=0) -> NamedSharding:
    spec = sharding_lib.logical_to_spec(("cache_batch",) + (None,) * extra_dims,
                                        sharding_lib.resolve_rules(self.rules), self.mesh)
    return NamedSharding(self.mesh, spec)

  def _replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, jax.sharding.PartitionSpec())

  def _state_shardings(self) -> DecodeState:
    row, row2 = self._row_sharding(), self._row_sharding(1)
    cache = pool_sharding(self._cache_sharding(), self._cache_dtype)
    layers = (cache,) * self.model_config.num_hidden_layers
    return DecodeState(cache=KVCache(layers, layers, self._replicated()), tokens=row,
                       positions=row, keys=row2, generated=row, budget=row, active=row,
                       temperature=row, top_k=row, top_p=row, stop_ids=row2)

  def _empty_state(self) -> DecodeState:
    s, cfg = self.config.slots, self.config
    z = lambda shape, dt: jnp.zeros(shape, dt)  # noqa: E731
    return DecodeState(
        cache=KVCache.pool(self.model_config, self.pages_per_shard * self.shards, cfg.page,
                           self._cache_dtype),
        tokens=z(s, jnp.int32),
        positions=z(s, jnp.int32), keys=z((s, 2), jnp.uint32), generated=z(s, jnp.int32),
        budget=z(s, jnp.int32), active=z(s, bool), temperature=z(s, jnp.float32),
        top_k=z(s, jnp.int32), top_p=jnp.ones(s, jnp.float32),
        stop_ids=jnp.full((s, MAX_STOP_IDS), -1, jnp.int32))

  def _init_state(self) -> DecodeState:
    return jax.jit(self._empty_state, out_shardings=self._state_shardings())()

  def lower(self, params, bucket: int | None = None, window: int | None = None) -> dict:
    """{"prefill": ..., "decode": ...}: the two programs a run compiles, lowered for abstract
    `params` (ShapeDtypeStructs with shardings) at prompt bucket `bucket` (default the
    largest, from position 0) and attention window `window` tokens (default max_len),
    without allocating."""
    return {"prefill": self.lower_prefill(params, bucket), "decode": self.lower_decode(params, window)}

  def lower_decode(self, params, window: int | None = None):
    """The decode program at an attention window of `window` tokens (default max_len)."""
    window = window or self.config.max_len
    table = self._host((self.config.slots, self._window_pages(window)), jnp.int32)
    return self._generate.lower(params, self._abstract_state(), table)

  def lower_prefill(self, params, bucket: int | None = None, end: int | None = None):
    """The prefill program of `bucket` tokens from position 0, or with `end` those ending at
    `end` after earlier tokens (a shared prefix's sharer, a later piece: `prefill_pieces`),
    lowered as `lower` does."""
    bucket = bucket or self.config.buckets()[-1]
    pages = (self.config.row_pages if end is None
             else self._window_pages(self._prefill_window(end)))
    i32 = lambda: self._host((), jnp.int32)  # noqa: E731
    return self._prefill_insert.lower(
        params, self._abstract_state(), self._host((1, bucket), jnp.int32), i32(), i32(),
        self._host((1, pages), jnp.int32), i32(), i32(), i32(), self._host((2,), jnp.uint32),
        i32(), i32(), self._host((), jnp.float32), i32(), self._host((), jnp.float32),
        self._host((MAX_STOP_IDS,), jnp.int32), end is None)

  def _abstract_state(self) -> DecodeState:
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        jax.eval_shape(self._empty_state), self._state_shardings())

  def _host(self, shape, dtype) -> jax.ShapeDtypeStruct:
    # Host inputs too carry the mesh's (replicated) sharding: with a TPU topology's devices
    # nothing may default to this process's own device.
    return jax.ShapeDtypeStruct(shape, dtype, sharding=self._replicated())

  # --- compiled steps ------------------------------------------------------------------------

  @functools.cached_property
  def _prefill_insert(self):
    graphdef, state_shardings = self._graphdef, self._state_shardings()

    def run(params, state: DecodeState, tokens, start, length, table, copy_src, copy_dst, slot,
            key, generated, budget, temperature, top_k, top_p, stop_ids, fresh):
      """Prompt tokens `start..length-1` (padded to the bucket) into the row's pages (`table`),
      after copying page `copy_src` to `copy_dst` (a shared prefix's partial last page); the
      request's next token sampled, and its slot made live."""
      model = nnx.merge(graphdef, params)
      bucket = tokens.shape[1]
      positions = (start + jnp.arange(bucket, dtype=jnp.int32))[None]
      cache = state.cache.copy_page(copy_src, copy_dst).with_table(table, fresh=fresh)
      # Only the last prompt position's logits: the first token is sampled from them.
      with sharding_lib.activation_layout(self.mesh, self.rules):
        last, cache = model(tokens, positions, cache=cache, logits_at=(length - start - 1)[None])
      first = sample(last, token_keys(key[None], generated[None]), temperature[None],
                     top_k[None], top_p[None])[0]
      done = jnp.any(stop_ids == first) | (generated + 1 >= budget)
      put = lambda arr, value: arr.at[slot].set(value)  # noqa: E731
      state = DecodeState(
          cache=dataclasses.replace(cache, table=state.cache.table, fresh=False),
          tokens=put(state.tokens, first),
          positions=put(state.positions, length), keys=put(state.keys, key),
          generated=put(state.generated, generated + 1), budget=put(state.budget, budget),
          active=put(state.active, ~done), temperature=put(state.temperature, temperature),
          top_k=put(state.top_k, top_k), top_p=put(state.top_p, top_p),
          stop_ids=put(state.stop_ids, stop_ids))
      return state, first

    return jax.jit(run, donate_argnums=1, static_argnums=16,
                   out_shardings=(state_shardings, self._replicated()))

  @functools.cached_property
  def _generate(self):
    graphdef, steps = self._graphdef, self.config.steps_per_call

    def one_step(model, table, state: DecodeState, _):
      # `table` None: the cache is the slots' rows gathered for this call (see `run`).
      cache = state.cache if table is None else state.cache.with_table(table)
      with sharding_lib.activation_layout(self.mesh, self.rules):
        logits, cache = model(state.tokens[:, None], state.positions[:, None], cache=cache)
      keys = token_keys(state.keys, state.generated)
      nxt = sample(logits[:, 0], keys, state.temperature, state.top_k, state.top_p)
      active = state.active
      emitted = jnp.where(active, nxt, -1)
      generated = state.generated + active
      stopped = jnp.any(state.stop_ids == nxt[:, None], axis=-1) | (generated >= state.budget)
      if table is not None:
        cache = dataclasses.replace(cache, table=state.cache.table)
      state = dataclasses.replace(
          state, cache=cache, tokens=jnp.where(active, nxt, state.tokens),
          positions=state.positions + active, generated=generated, active=active & ~stopped)
      return state, emitted

    def run(params, state, table):
      # Attention reads each slot's pages through `table` [rows, window pages]: the window
      # covers every live slot's positions for this call, so a pool sized for long sequences
      # costs decode bandwidth only for the pages in use. `rows` <= slots: the call decodes
      # the first `rows` slots only (the live ones, packed low by the scheduler); the others
      # stay as they are.
      rows = table.shape[0]
      if rows == self.config.slots:
        return decode(params, state, table)
      part = dataclasses.replace(state, **{f: getattr(state, f)[:rows] for f in _SLOT_FIELDS})
      part, emitted = decode(params, part, table)
      state = dataclasses.replace(state, cache=part.cache, **{
          f: getattr(state, f).at[:rows].set(getattr(part, f)) for f in _SLOT_FIELDS})
      idle = jnp.full((steps, self.config.slots - rows), -1, emitted.dtype)
      return state, jnp.concatenate([emitted, idle], axis=1)

    def decode(params, state, table):
      model = nnx.merge(graphdef, params)
      if self.model_config.attention.startswith("tpu"):
        # The paged kernel reads the pages in place at every step.
        return jax.lax.scan(functools.partial(one_step, model, table), state, length=steps)
      # XLA: gather the slots' windows once per call, attend over them in place for the
      # call's steps, then write the steps' entries back to the pages (a gather at every
      # step and layer made the CPU decode several times slower).
      original, pages = state.cache.table, state.cache.with_table(table)
      start = state.positions
      state = dataclasses.replace(state, cache=pages.rows())
      state, emitted = jax.lax.scan(functools.partial(one_step, model, None), state,
                                    length=steps)
      written = start[:, None] + jnp.arange(steps, dtype=jnp.int32)
      cache = dataclasses.replace(pages.write_back(state.cache, written), table=original)
      return dataclasses.replace(state, cache=cache), emitted

    # The emitted tokens come back replicated: on a multi-host slice every host's scheduler
    # sees every slot (each host holds only its own slots' rows of the state).
    return jax.jit(run, donate_argnums=1,
                   out_shardings=(self._state_shardings(), self._replicated()))

  @functools.cached_property
  def _move_slot(self):
    def run(state: DecodeState, src, dst):
      moved = {f: getattr(state, f).at[dst].set(getattr(state, f)[src]) for f in _SLOT_FIELDS}
      state = dataclasses.replace(state, **moved)
      return dataclasses.replace(state, active=state.active.at[src].set(False))
    return jax.jit(run, donate_argnums=0, out_shardings=self._state_shardings())

  @functools.cached_property
  def _deactivate(self):
    def run(state: DecodeState, slot):
      return dataclasses.replace(state, active=state.active.at[slot].set(False))
    return jax.jit(run, donate_argnums=0, out_shardings=self._state_shardings())

  def _windows(self, live: list[_Sequence]) -> tuple[int, int]:
    """The attention window (tokens) the next generate call needs: past the furthest position
    any live sequence can reach during the call; and the one it will need COMPILE_AFTER_CALLS
    calls later, to compile instead when a program must be compiled (one that serves only a
    few calls before the next window takes over costs more than its narrower window saves:
    on the CPU benchmark, a 1,024-token window for the run's first three calls)."""
    furthest = max(len(s.request.prompt_ids) + len(s.tokens) - 1 for s in live)
    steps = self.config.steps_per_call
    return (self._window_for(furthest + steps),
            self._window_for(furthest + COMPILE_AFTER_CALLS * steps))

  def _window_for(self, needed: int) -> int:
    """At least `needed` tokens: 128 (or a page) times a power of two, or 1.5 times one (a
    window at most a third wider than needed, from few programs), or max_len."""
    if self.model_config.attention == "tpu":
      # The paged kernel reads each row's live pages only: a narrower table saves nothing.
      return self.config.max_len
    return min(_geometric(max(128, self.config.page), needed), self.config.max_len)

  def _rows_for(self, highest_live_slot: int) -> int:
    """Rows a decode call runs: up to the highest live slot, 8 times a power of 4, or on a CPU
    a multiple of 4 from 8 (each row count is a program per window to compile: see
    COMPILE_AFTER_CALLS); every slot when the slots split over several shards (each shard's
    slots are a block of their own)."""
    if self.shards > 1:
      return self.config.slots
    if self._fine_rows:
      return min(max(8, -(-(highest_live_slot + 1) // 4) * 4), self.config.slots)
    rows = 8
    while rows <= highest_live_slot:
      rows *= 4
    return min(rows, self.config.slots)

  def _shape(self, program: str, wanted: tuple[int, int],
             ahead: tuple[int, int] | None = None) -> tuple[int, int]:
    """The shape a call of `program` runs: `wanted`, or the smallest compiled shape covering
    it until `wanted` has been asked for COMPILE_AFTER_CALLS times; `ahead` (covering
    `wanted`) when nothing compiled covers it. Depends only on the calls so far, so every
    host of an engine picks alike."""
    self._wanted[program, wanted] += 1
    compiled = self._compiled[program]
    covering = [shape for shape in compiled if shape[0] >= wanted[0] and shape[1] >= wanted[1]]
    if not covering:
      compiled.add(ahead or wanted)
      return ahead or wanted
    if wanted in compiled or self._wanted[program, wanted] >= COMPILE_AFTER_CALLS:
      compiled.add(wanted)
      return wanted
    return min(covering, key=math.prod)

  @staticmethod
  def _decode_program(rows: int, window: int) -> str:
    return f"decode program for {rows} slots, attention window {window}"

  def _prefill_window(self, needed: int) -> int:
    """The attention window of a prefill after earlier tokens: 1,024 tokens (or a page) times a
    power of two, or max_len. Its attention is a small part of its work, so few programs
    beat a tight window."""
    window = max(1024, self.config.page)
    while window < needed:
      window *= 2
    return min(window, self.config.max_len)

  def _window_pages(self, window: int) -> int:
    return -(-window // self.config.page)

  def warmup(self) -> None:
    """Compiles every prefill bucket (from position 0) and attention window now, so that a
    long run (or a timing) does not pay for compilation midway. Only valid while no request is
    running."""
    no_pages = np.full((1, self.config.row_pages), NO_PAGE, np.int32)
    for bucket in self._buckets:
      length = min(bucket, self.config.max_len - 1)
      # max_new_tokens=1 finishes at prefill, and no pages: nothing is written.
      self._prefill(_Sequence(Request("warmup", [0] * length, SamplingParams(max_new_tokens=1)),
                              [], 0, [], 0), 0, no_pages, None)
    windows = sorted({self._window_for(n) for n in range(1, self.config.max_len + 1)})
    row_counts = sorted({self._rows_for(n) for n in range(self.config.slots)})
    for window in windows:
      for rows in row_counts:
        start = time.perf_counter()
        table = np.full((rows, self._window_pages(window)), NO_PAGE, np.int32)
        self.state, emitted = self._generate(self._params, self.state, table)
        jax.block_until_ready(emitted)
        self._compiled["decode"].add((rows, window))
        self._timed(self._decode_program(rows, window), time.perf_counter() - start)
    self.stats.clear()

  # --- host side -----------------------------------------------------------------------------

  def _validate(self, request: Request) -> str | None:
    ids = list(request.prompt_ids)
    if not ids:
      return "empty prompt"
    vocab = self.model_config.vocab_size
    bad = [i for i in ids if not 0 <= int(i) < vocab]
    if bad:
      return f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})"
    if len(ids) >= self.config.max_len:
      return (f"prompt has {len(ids)} tokens; the context limit is {self.config.max_len} "
              "(prompt + output), leaving no room to generate")
    stops = self._stop_ids(request.sampling)
    if len(stops) > MAX_STOP_IDS:
      return f"{len(stops)} stop ids; at most {MAX_STOP_IDS} are supported"
    if not 0 <= request.prefix_len <= len(ids):
      return f"prefix_len={request.prefix_len} is outside the prompt's {len(ids)} tokens"
    return None

  def _stop_ids(self, sampling: SamplingParams) -> tuple[int, ...]:
    eos = () if sampling.ignore_eos else self.eos_ids
    return tuple(dict.fromkeys(eos + sampling.stop_token_ids))

  def _bucket(self, length: int) -> int:
    for bucket in self._buckets:
      if bucket >= length:
        return bucket
    return self.config.max_len

  def prefill_pieces(self, start: int, end: int) -> list[tuple[int, int, int]]:
    """(first, end, bucket) of each call prefilling tokens `start..end-1`: pieces of at most
    `self._piece` tokens; one from position 0 pads to its bucket, one after earlier tokens
    (which it reads from the pages) to `_bucket_after`."""
    pieces = []
    while True:
      stop = min(end, start + self._piece)
      n = stop - start
      pieces.append((start, stop, self._bucket_after(n) if start else self._bucket(n)))
      if stop == end:
        return pieces
      start = stop

  def _prefill(self, seq: _Sequence, start: int, table: np.ndarray, copy) -> int:
    """Prefills `seq`'s prompt (and the tokens it made before a preemption) from `start`,
    `table` its row of pages, `copy` (src, dst) a page to copy first; returns the next token."""
    request, sp = seq.request, seq.request.sampling
    ids = np.asarray(list(request.prompt_ids) + seq.tokens, np.int32)
    self.stats["prefix_tokens_reused"] += start
    budget = min(sp.max_new_tokens, self.config.max_len - len(request.prompt_ids))
    *earlier, (first, _, bucket) = self.prefill_pieces(start, len(ids))
    for begin, end, piece_bucket in earlier:
      # A budget of 0 leaves the slot idle: this piece's pages are all it leaves behind.
      self._prefill_piece(seq, ids[:end], begin, piece_bucket, table, copy, 0)
      copy = None
    return self._prefill_piece(seq, ids, first, bucket, table, copy, budget)

  def _bucket_after(self, length: int) -> int:
    """The bucket of `length` tokens prefilled after earlier ones: a multiple of a quarter
    piece. Sharers' suffixes and the remainders of long prompts and of recomputes come in
    every length: power-of-two buckets padded a MIND suffix of 337-423 tokens to 512 (28% of
    the benchmark's prefill compute was padding), while each finer bucket is programs (one
    per window) to compile."""
    quarter = max(self._piece // 4, 1)
    return min(-(-length // quarter) * quarter, self._piece)

  def _prefill_piece(self, seq: _Sequence, ids: np.ndarray, start: int, bucket: int,
                     table: np.ndarray, copy, budget: int) -> int:
    """Tokens `start..len(ids)-1` of `seq` (padded to `bucket`) into its pages."""
    sp = seq.request.sampling
    stops = np.full(MAX_STOP_IDS, -1, np.int32)
    stop_ids = self._stop_ids(sp)
    stops[: len(stop_ids)] = stop_ids
    src, dst = copy or (0, 0)
    if start:  # attention reads the row's pages: only those up to the piece's last token
      bucket, pages = self._shape("prefill after", (
          bucket, self._window_pages(self._prefill_window(len(ids)))))
      table = table[:, :pages]
    else:
      bucket = self._shape("prefill", (bucket, 0))[0]
    tokens = np.zeros((1, bucket), np.int32)
    tokens[0, : len(ids) - start] = ids[start:]
    begin = time.perf_counter()
    self.state, first = self._prefill_insert(
        self._params, self.state, tokens, np.int32(start), np.int32(len(ids)), table,
        np.int32(src), np.int32(dst), np.int32(seq.slot),
        request_key(self.config.seed, seq.request.id), np.int32(len(seq.tokens)),
        np.int32(budget), np.float32(sp.temperature), np.int32(sp.top_k),
        np.float32(sp.top_p), stops, start == 0)
    first = int(first)
    self._timed(f"prefill program for prompts up to {bucket}" if start == 0 else
                f"prefill program for {bucket} tokens after earlier ones, window {table.shape[1]} "
                "pages", time.perf_counter() - begin)
    self.stats["prefill_seconds"] += time.perf_counter() - begin
    self.stats["prefill_tokens"] += len(ids) - start
    self.stats["prefill_padded_tokens"] += bucket
    return first

  def _timed(self, program: str, seconds: float) -> None:
    """Logs a program's first call, which compiles it (or loads it from JAX's persistent
    compilation cache): the time users wait for before tokens flow. `program` names the
    compiled shape, so every compilation is counted once."""
    if program in self._seen:
      return
    self._seen.add(program)
    self.stats["first_call_seconds"] += seconds
    log.info("%s ready in %.2f s (compiled or loaded from the cache)", program, seconds)

  def _finish_reason(self, request: Request, tokens: list[int]) -> str | None:
    last = tokens[-1]
    if last in self._stop_ids(request.sampling):
      return "eos" if last in self.eos_ids and not request.sampling.ignore_eos else "stop"
    if len(tokens) >= request.sampling.max_new_tokens:
      return "length"
    if len(request.prompt_ids) + len(tokens) >= self.config.max_len:
      return "context_limit"
    return None

  def _result(self, request: Request, tokens: list[int], reason: str, error=None) -> Result:
    text = self.tokenizer.decode(tokens) if self.tokenizer is not None and tokens else (
        "" if self.tokenizer is not None else None)
    return Result(id=request.id, prompt_ids=[int(i) for i in request.prompt_ids],
                  token_ids=tokens, finish_reason=reason, text=text, error=error)

  def generate(self, requests: Iterable[Request]) -> Iterator[Result]:
    """Yields each request's result as soon as it finishes (not in input order).

    Requests are taken from the iterable only as slots and pages free up. Invalid requests
    (empty prompt, ids outside the vocabulary, a prompt that leaves no room under the context
    limit) yield an `error` result at once; the others run normally.
    """
    return _Scheduler(self).run(iter(requests))

  def generate_all(self, requests: Iterable[Request]) -> list[Result]:
    """All results, in the order of `requests`."""
    requests = list(requests)
    if len({r.id for r in requests}) != len(requests):
      raise MindJaxError("request ids must be unique")
    by_id = {r.id: r for r in self.generate(requests)}
    return [by_id[r.id] for r in requests]


class _Scheduler:
  """One `generate` run's host side: admission into slots and pages, growth, preemption.

  Every decision depends only on the request stream and the tokens the engine returns (the
  same on every host of an engine), never on timing, so the hosts of a slice decide alike.
  """

  def __init__(self, engine: Engine):
    self.engine = engine
    cfg = engine.config
    self.page = cfg.page
    self.pool = PagePool(engine.pages_per_shard, engine.shards, cfg.page)
    self.slots_per_shard = cfg.slots // engine.shards
    self.live: dict[int, _Sequence] = {}
    self.waiting: collections.deque[tuple[Request, list[int]]] = collections.deque()
    self.admitted = 0
    self.prefix_keys: dict[tuple, bytes] = {}
    # Output lengths of the sequences ended so far: the length a running one is projected to.
    self.ended, self.ended_tokens = 0, 0

  def _shard(self, slot: int) -> int:
    return slot // self.slots_per_shard

  def _free_slot(self, shards) -> int | None:
    for shard in shards:
      for slot in range(shard * self.slots_per_shard, (shard + 1) * self.slots_per_shard):
        if slot not in self.live:
          return slot
    return None

  def _free_slots(self, shard: int) -> int:
    first = shard * self.slots_per_shard
    return sum(slot not in self.live for slot in range(first, first + self.slots_per_shard))

  def _pages_for(self, tokens: int) -> int:
    return min(-(-tokens // self.page), self.engine.config.row_pages)

  def _reserve(self, shard: int, request: Request, tokens: list[int], pages: int,
               shared: int) -> int:
    """Pages kept free when `request` (which made `tokens`) is admitted to `shard` with
    `pages` pages, `shared` of them a cached prefix's, for the growth of the shard's running
    sequences and its own."""
    running = [s for s in self.live.values() if self._shard(s.slot) == shard]
    if self.engine.config.admission == "eager" or not running:
      return len(running)  # a shard with nothing running admits whatever fits, or stalls
    return self._growth(running, (request, tokens, pages, shared))

  def _expected_output(self, request: Request, made: int) -> int:
    """The output length a sequence that has made `made` tokens is projected to end at: its
    cap (max_new_tokens, or the context) until a sequence of this run has ended, then the
    mean output length of those that ended (a sequence already past it: the next call's
    tokens), never past the cap. Depends only on the tokens, as every decision here."""
    cap = min(request.sampling.max_new_tokens, self.engine.config.max_len
              - len(request.prompt_ids))
    if not self.ended:
      return cap
    return min(cap, max(self.ended_tokens // self.ended, made + self.engine.config.steps_per_call))

  def _growth(self, running: list[_Sequence], new: tuple[Request, list[int], int, int]) -> int:
    """The most pages beyond what they hold that the `running` sequences and `new` (a request,
    the tokens it made, the pages it is given and how many of them are shared) are projected
    to need at once: each grows by a token a step to its expected length, and one that ends
    returns the pages it alone holds. The worst moment is just before one of them ends."""
    steps = self.engine.config.steps_per_call
    left, length, held, own = [], [], [], []
    for seq in running:
      made = len(seq.tokens)
      left.append(max(0, self._expected_output(seq.request, made) - made))
      length.append(len(seq.request.prompt_ids) + made)
      held.append(len(seq.pages))
      own.append(int(np.count_nonzero(self.pool.refs[seq.pages] == 1)))
    request, tokens, pages, shared = new
    left.append(max(0, self._expected_output(request, len(tokens)) - len(tokens)))
    length.append(len(request.prompt_ids) + len(tokens))
    held.append(pages)
    own.append(pages - shared)
    left, length, held, own = map(np.asarray, (left, length, held, own))
    moments = np.unique(left)[:, None]  # [moments, 1] against [sequences]
    pages_then = np.minimum(-(-(length + moments + steps) // self.page),
                            self.engine.config.row_pages)
    need = np.where(left >= moments, np.maximum(pages_then - held, 0), -own).sum(axis=1)
    return max(0, int(need.max()))

  def _admit(self, request: Request, tokens: list[int]) -> tuple[_Sequence, int] | None:
    """A slot and pages for `request` (which made `tokens` before a preemption) and its
    prefill; None when no slot or not enough free pages: it waits."""
    engine = self.engine
    share, key = self._prefix(request, tokens)
    # A sharer goes where its prefix's pages are; a new prefix (or none) to the shard with the
    # most free slots, where the requests sharing it can follow.
    holders = self.pool.shards_with(key) if key else []
    roomiest = sorted(range(engine.shards), key=lambda s: -self._free_slots(s))
    slot = self._free_slot(holders + [s for s in roomiest if s not in holders])
    if slot is None:
      return None
    shard = self._shard(slot)
    prefix = self.pool.lookup(shard, key) if key else None
    # Pages for the prompt and the first decode call's tokens, and room kept for the growth of
    # the shard's running sequences. The prefix's pages are held first: making room may drop
    # cached prefixes, never this one.
    length = len(request.prompt_ids) + len(tokens)
    needed = self._pages_for(length + engine.config.steps_per_call)
    whole = share // self.page if prefix else 0
    held = list(prefix.pages[:whole + (1 if share % self.page else 0)]) if prefix else []
    self.pool.share(held)
    reserve = self._reserve(shard, request, tokens, needed, whole)
    pages = self.pool.take(shard, needed - whole + reserve, self._waiting_prefixes())
    if pages is None:
      self.pool.release(held)
      return None
    self.pool.release(pages[needed - whole:])
    pages = pages[:needed - whole]
    copy, start = None, 0
    if prefix:
      if share % self.page:
        copy = (prefix.pages[whole], pages[0])
      pages = held[:whole] + pages
      start = share
    self.prefix_keys.pop((request.id, share), None)  # asked for again only if preempted
    seq = _Sequence(request, list(tokens), slot, pages, self.admitted)
    self.admitted += 1
    table = np.full((1, engine.config.row_pages), NO_PAGE, np.int32)
    table[0, :len(pages)] = pages
    first = engine._prefill(seq, start, table, copy)
    self.pool.release(held[whole:])  # the copied partial page
    if key and not prefix:
      full = share // self.page + (1 if share % self.page else 0)
      self.pool.remember(shard, key, Prefix(share, tuple(pages[:full])))
    return seq, first

  def _grow(self) -> None:
    """Pages for every live sequence's next call, preempting the youngest when a shard's pool
    runs dry (possibly the one growing: it is then recomputed later)."""
    steps = self.engine.config.steps_per_call
    for seq in sorted(self.live.values(), key=lambda s: s.order):
      if self.live.get(seq.slot) is not seq:
        continue  # preempted while an older sequence grew
      needed = self._pages_for(len(seq.request.prompt_ids) + len(seq.tokens) - 1 + steps)
      while len(seq.pages) < needed and self.live.get(seq.slot) is seq:
        got = self.pool.take(self._shard(seq.slot), needed - len(seq.pages),
                             self._waiting_prefixes())
        if got is not None:
          seq.pages.extend(got)
          break
        shard = self._shard(seq.slot)
        youngest = max((s for s in self.live.values() if self._shard(s.slot) == shard),
                       key=lambda s: s.order)
        self._preempt(youngest)

  def _waiting_prefixes(self) -> set[bytes]:
    """The prefixes of the waiting requests, kept while pages can be found elsewhere: the
    youngest sequences, preempted first, are often all of a chunk's styles (admitted
    together), and their prefix, no longer in use, would otherwise be the first dropped and
    recomputed by each."""
    return {self._prefix(request, tokens)[1] for request, tokens in self.waiting} - {None}

  def _prefix(self, request: Request, tokens: list[int]) -> tuple[int, bytes | None]:
    """(length, key) of the prefix `request` (which made `tokens` before a preemption) shares:
    at most all but its last token, which its prefill needs to compute. Keys are hashed once
    per request and length: a waiting request's is asked for at every page allocation."""
    share = min(request.prefix_len, len(request.prompt_ids) + len(tokens) - 1)
    if share <= 0:
      return share, None
    key = self.prefix_keys.get((request.id, share))
    if key is None:
      key = self.prefix_keys[request.id, share] = prefix_key(list(request.prompt_ids)[:share])
    return share, key

  def _preempt(self, seq: _Sequence) -> None:
    engine = self.engine
    log.debug("preempting request %s after %d tokens: the KV pool is full", seq.request.id,
              len(seq.tokens))
    del self.live[seq.slot]
    self.pool.release(seq.pages)
    engine.state = engine._deactivate(engine.state, np.int32(seq.slot))
    # Back to the front of the queue, the older of several preempted first.
    self.waiting.appendleft((seq.request, seq.tokens))
    engine.stats["preemptions"] += 1

  def _compact(self) -> None:
    """Moves the highest live slots into the lowest free ones, so that a decode call's rows
    (up to the highest live slot) are about the live sequences. A slot's state is a few
    numbers (its KV lives in its pages), so a move costs a small device call. One shard only:
    sharded slots decode all their rows every call."""
    if self.engine.shards > 1:
      return
    while self.live:
      top, hole = max(self.live), self._free_slot([0])
      if hole is None or hole > top:
        return
      seq = self.live.pop(top)
      seq.slot = hole
      self.live[hole] = seq
      self.engine.state = self.engine._move_slot(self.engine.state, np.int32(top),
                                                 np.int32(hole))
      self.engine.stats["slot_moves"] += 1

  def _finish(self, seq: _Sequence) -> None:
    del self.live[seq.slot]
    self._ended(seq.tokens)
    self.pool.release(seq.pages)

  def _ended(self, tokens: list[int]) -> None:
    self.ended += 1
    self.ended_tokens += len(tokens)

  def run(self, pending: Iterator[Request]) -> Iterator[Result]:
    engine = self.engine
    start = time.perf_counter()
    exhausted = False
    while True:
      # Admit while a slot and pages are free; in order (a waiting request blocks the queue).
      while True:
        if not self.waiting:
          request = None if exhausted else next(pending, None)
          if request is None:
            exhausted = True
            break
          problem = engine._validate(request)
          if problem:
            log.debug("request %s rejected: %s", request.id, problem)
            yield engine._result(request, [], "error", error=problem)
            continue
          self.waiting.append((request, []))
        request, tokens = self.waiting[0]
        admitted = self._admit(request, tokens)
        if admitted is None:
          if not self.live:
            raise MindJaxError(f"request {request.id}: no pages for its prompt in an empty pool "
                               "(a bug: the pool holds a sequence at the context limit)")
          break
        self.waiting.popleft()
        seq, first = admitted
        seq.tokens.append(first)
        reason = engine._finish_reason(request, seq.tokens)
        if reason:
          self._ended(seq.tokens)
          self.pool.release(seq.pages)
          yield engine._result(request, seq.tokens, reason)
        else:
          self.live[seq.slot] = seq
      if not self.live:
        if exhausted and not self.waiting:
          break
        continue
      self._grow()
      self._compact()
      engine.stats["most_sequences_at_once"] = max(engine.stats["most_sequences_at_once"],
                                                   len(self.live))
      call_start = time.perf_counter()
      rows = engine._rows_for(max(self.live))
      needed, ahead = engine._windows(list(self.live.values()))
      rows, window = engine._shape("decode", (rows, needed), ahead=(rows, ahead))
      table = np.full((rows, engine._window_pages(window)), NO_PAGE, np.int32)
      for slot, seq in self.live.items():
        pages = seq.pages[:table.shape[1]]
        table[slot, :len(pages)] = pages
      engine.state, emitted = engine._generate(engine._params, engine.state, table)
      emitted = np.asarray(emitted)  # the one host transfer per call: [steps, slots]
      engine._timed(engine._decode_program(rows, window), time.perf_counter() - call_start)
      engine.stats["generate_seconds"] += time.perf_counter() - call_start
      engine.stats["generate_calls"] += 1
      engine.stats["sequence_steps"] += len(self.live) * engine.config.steps_per_call
      for slot, seq in list(self.live.items()):
        for token in emitted[:, slot]:
          if token < 0:
            break
          seq.tokens.append(int(token))
          reason = engine._finish_reason(seq.request, seq.tokens)
          if reason:
            self._finish(seq)
            yield engine._result(seq.request, seq.tokens, reason)
            break
    engine.stats["seconds"] += time.perf_counter() - start


def _geometric(base: int, needed: int) -> int:
  """The first of base, 1.5 base, 2 base, 3 base, 4 base, 6 base, ... that is >= needed."""
  size = base
  while True:
    for value in (size, size * 3 // 2):
      if value >= needed:
        return value
    size *= 2


# The share of a device's free memory (after the weights) the KV cache may take.
KV_CACHE_MEMORY_FRACTION = 0.9


def one_prefill_bucket(lengths: list[int], max_len: int) -> tuple[int, ...] | None:
  """A single prefill program for all the prompts, when padding them to it at most doubles the
  prefill work: each bucket is a compilation a user waits for (measured on the sample benchmark:
  one bucket instead of two saved 1.8 s of a 20 s run, for 65% more prefill tokens)."""
  top = min(max_len, 1 << max(5, (max(lengths) - 1).bit_length()))
  return (top,) if len(lengths) * top <= 2 * sum(lengths) else None


def slots_that_fit(model_config, mesh: Mesh, max_len: int, cache_dtype=None,
                   fraction: float = KV_CACHE_MEMORY_FRACTION, rules: str = "generate") -> int | None:
  """How many decode slots' KV cache fit in `fraction` of a device's free memory, as a
  multiple of the mesh's batch axes (the cache is split over slots there and over kv-heads on
  `tensor`); None if the free memory cannot be read. Call it with the weights in place."""
  free = _free_device_bytes(mesh.devices.flat[0])
  if free is None:
    return None
  data = slot_ways(mesh, rules)
  dtype = jnp.dtype(cache_dtype or model_config.dtype)
  shape = KVCache.layer_shape(model_config, data, max_len)
  cache = sharding_lib.data_sharding(mesh, rules, CACHE_AXES)
  ways = math.prod(shape) // math.prod(cache.shard_shape(shape))
  per_device = KVCache.nbytes_for(model_config, data, max_len, dtype) / ways  # one slot per row
  return int(fraction * free // per_device) * data


def slot_ways(mesh: Mesh, rules: str = "generate") -> int:
  """How many ways the decode slots split over `mesh` under `rules` (slots must divide)."""
  return sharding_lib.spec_ways(mesh, sharding_lib.data_sharding(mesh, rules,
                                                                  ("cache_batch",)).spec[0])


def _free_device_bytes(device) -> int | None:
  """Free memory on `device` (host RAM for CPU devices), or None if unknown."""
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001  backends differ in what they support
    stats = None
  if stats and "bytes_limit" in stats:
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  if device.platform == "cpu":
    try:
      with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
      return int(info["MemAvailable"].split()[0]) * 1024 // max(1, len(jax.devices()))
    except (OSError, KeyError, ValueError):
      return None
  return None


def _human(nbytes: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(nbytes) < 1024 or unit == "GiB":
      return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
    nbytes /= 1024
  return f"{nbytes:.1f} GiB"
