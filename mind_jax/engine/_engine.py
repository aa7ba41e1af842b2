"""The decode engine: fixed slots, prefill + insert, multi-step generate, host scheduling.

Design (after JetStream's prefill / insert / generate split):
- a request is prefilled alone, its prompt padded to a length bucket so the
  number of compiled programs stays small; its first token is sampled there;
- the prefilled KV cache is inserted into a free decode slot in the same
  compiled call;
- one generate call advances every live slot by `steps_per_call` tokens
  inside a `lax.scan`, and returns one packed `[steps, slots]` array of the
  new tokens (-1 where a slot was idle), so the host syncs once per call;
- the host scheduler reads that array, finishes requests (stop id,
  max_new_tokens, context limit) and refills their slots from the queue.
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
from mind_jax.nn import KVCache, Llama
from mind_jax.nn._cache import CACHE_AXES

log = logging.getLogger(__name__)

MAX_STOP_IDS = 16  # stop ids per request (model EOS ids included), padded with -1


@dataclasses.dataclass
class Request:
  """Token ids to continue, how to sample them, and an id to find the result by."""

  id: int | str
  prompt_ids: Sequence[int]
  sampling: SamplingParams = SamplingParams()


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


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Shape of the decode state.

  slots: sequences decoded together (continuous batching).
  max_len: context limit per sequence, prompt + output (the KV cache length).
  steps_per_call: tokens each slot advances per generate call.
  prefill_buckets: prompt lengths compiled for; prompts pad up to the next one.
  seed: global seed; each request's key derives from it and the request id.
  cache_dtype: KV cache dtype (default: the model's compute dtype).
  """

  slots: int = 8
  max_len: int = 4096
  steps_per_call: int = 8
  prefill_buckets: tuple[int, ...] | None = None
  seed: int = 0
  cache_dtype: str | None = None

  def buckets(self) -> tuple[int, ...]:
    if self.prefill_buckets:
      return tuple(sorted(b for b in self.prefill_buckets if b <= self.max_len)) or (self.max_len,)
    out, size = [], 32
    while size < self.max_len:
      out.append(size)
      size *= 2
    return tuple(out) + (self.max_len,)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
  """Everything a generate call needs, one row per slot, kept on the devices."""

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


class Engine:
  """Continuous-batching decoder over a (possibly sharded) Llama.

      engine = Engine(model, tokenizer, EngineConfig(slots=16, max_len=4096))
      for result in engine.generate(requests):   # as they finish
        ...
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
    self.mesh = mesh or sharding_lib.one_device_mesh()
    self.rules = rules
    ways = slot_ways(self.mesh, rules)
    if config.slots % ways:
      raise MindJaxError(f"engine slots={config.slots} must be a multiple of the mesh's batch "
                         f"axes ({ways})")
    self.eos_ids = tuple(model.config.eos_token_ids)
    self._graphdef, self._params = nnx.split(model)
    if allocate:
      self._check_memory()
      self.state = self._init_state()
    self._buckets = config.buckets()
    self._seen: set[tuple[str, int]] = set()
    self.stats = collections.Counter()

  # --- memory ------------------------------------------------------------------------------

  def cache_bytes(self) -> tuple[int, int]:
    """(bytes per slot, bytes in all) of the KV cache, keys and values."""
    total = KVCache.nbytes_for(self.model_config, self.config.slots, self.config.max_len,
                               self._cache_dtype)
    return total // self.config.slots, total

  @property
  def _cache_dtype(self):
    return jnp.dtype(self.config.cache_dtype or self.model_config.dtype)

  def _check_memory(self):
    per_slot, total = self.cache_bytes()
    shape = KVCache.layer_shape(self.model_config, self.config.slots, self.config.max_len)
    ways = math.prod(shape) // math.prod(self._cache_sharding().shard_shape(shape))
    per_device = total // ways
    free = _free_device_bytes(self.mesh.devices.flat[0])
    log.info("KV cache: %s per slot, %s in all (%d slots x %d tokens, %s), %s per device",
             _human(per_slot), _human(total), self.config.slots, self.config.max_len,
             self._cache_dtype.name, _human(per_device))
    if free is not None and per_device > KV_CACHE_MEMORY_FRACTION * free:
      fit = slots_that_fit(self.model_config, self.mesh, self.config.max_len, self._cache_dtype,
                           rules=self.rules)
      raise MindJaxError(
          f"the KV cache needs {_human(per_device)} per device but only {_human(free)} is free: "
          f"use fewer slots (about {fit} fit at max_len={self.config.max_len}) or a shorter "
          "max_len")

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
    cache = self._cache_sharding()
    layers = (cache,) * self.model_config.num_hidden_layers
    return DecodeState(cache=KVCache(layers, layers), tokens=row, positions=row, keys=row2,
                       generated=row, budget=row, active=row, temperature=row, top_k=row,
                       top_p=row, stop_ids=row2)

  def _empty_state(self) -> DecodeState:
    s, cfg = self.config.slots, self.config
    z = lambda shape, dt: jnp.zeros(shape, dt)  # noqa: E731
    return DecodeState(
        cache=KVCache.empty(self.model_config, s, cfg.max_len, self._cache_dtype),
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
    largest) and attention window `window` (default max_len), without allocating anything."""
    bucket = bucket or self.config.buckets()[-1]
    window = window or self.config.max_len
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                         jax.eval_shape(self._empty_state), self._state_shardings())
    # Host inputs too carry the mesh's (replicated) sharding: with a TPU topology's devices
    # nothing may default to this process's own device.
    host = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=self._replicated())  # noqa: E731
    prefill = self._prefill_insert.lower(
        params, state, host((1, bucket), jnp.int32), host((), jnp.int32), host((), jnp.int32),
        host((2,), jnp.uint32), host((), jnp.int32), host((), jnp.float32), host((), jnp.int32),
        host((), jnp.float32), host((MAX_STOP_IDS,), jnp.int32))
    return {"prefill": prefill, "decode": self._generate.lower(params, state, window)}

  # --- compiled steps ------------------------------------------------------------------------

  @functools.cached_property
  def _prefill_insert(self):
    graphdef, state_shardings = self._graphdef, self._state_shardings()

    def run(params, state: DecodeState, tokens, length, slot, key, budget, temperature, top_k,
            top_p, stop_ids):
      model = nnx.merge(graphdef, params)
      bucket = tokens.shape[1]
      positions = jnp.arange(bucket, dtype=jnp.int32)[None]
      cache = KVCache.empty(self.model_config, 1, bucket, state.cache.k[0].dtype)
      # Only the last prompt position's logits: the first token is sampled from them.
      with sharding_lib.activation_layout(self.mesh, self.rules):
        last, cache = model(tokens, positions, cache=cache, logits_at=(length - 1)[None])
      first = sample(last, token_keys(key[None], jnp.zeros(1, jnp.int32)), temperature[None],
                     top_k[None], top_p[None])[0]
      done = jnp.any(stop_ids == first) | (budget <= 1)
      put = lambda arr, value: arr.at[slot].set(value)  # noqa: E731
      state = DecodeState(
          cache=state.cache.insert(cache, slot), tokens=put(state.tokens, first),
          positions=put(state.positions, length), keys=put(state.keys, key),
          generated=put(state.generated, 1), budget=put(state.budget, budget),
          active=put(state.active, ~done), temperature=put(state.temperature, temperature),
          top_k=put(state.top_k, top_k), top_p=put(state.top_p, top_p),
          stop_ids=put(state.stop_ids, stop_ids))
      return state, first

    return jax.jit(run, donate_argnums=1, out_shardings=(state_shardings, self._replicated()))

  @functools.cached_property
  def _generate(self):
    graphdef, steps = self._graphdef, self.config.steps_per_call

    def one_step(model, state: DecodeState, _):
      with sharding_lib.activation_layout(self.mesh, self.rules):
        logits, cache = model(state.tokens[:, None], state.positions[:, None], cache=state.cache)
      keys = token_keys(state.keys, state.generated)
      nxt = sample(logits[:, 0], keys, state.temperature, state.top_k, state.top_p)
      active = state.active
      emitted = jnp.where(active, nxt, -1)
      generated = state.generated + active
      stopped = jnp.any(state.stop_ids == nxt[:, None], axis=-1) | (generated >= state.budget)
      state = dataclasses.replace(
          state, cache=cache, tokens=jnp.where(active, nxt, state.tokens),
          positions=state.positions + active, generated=generated, active=active & ~stopped)
      return state, emitted

    def run(params, state, window):
      # Attention reads only the first `window` cache positions, which covers every live
      # slot for this call: a cache sized for the longest possible sequence then costs
      # decode bandwidth only for the positions actually in use. The window is copied out
      # once and back once per call, not per step.
      model = nnx.merge(graphdef, params)
      if window >= state.cache.max_len:  # the whole cache: nothing to copy out and back
        return jax.lax.scan(functools.partial(one_step, model), state, length=steps)
      full = state.cache
      cut = lambda layers: tuple(a[:, :, :window] for a in layers)  # noqa: E731
      state = dataclasses.replace(state, cache=KVCache(cut(full.k), cut(full.v)))
      state, emitted = jax.lax.scan(functools.partial(one_step, model), state, length=steps)
      back = lambda dst, src: tuple(  # noqa: E731
          jax.lax.dynamic_update_slice(d, w, (0, 0, 0, 0)) for d, w in zip(dst, src))
      cache = KVCache(back(full.k, state.cache.k), back(full.v, state.cache.v))
      return dataclasses.replace(state, cache=cache), emitted

    # The emitted tokens come back replicated: on a multi-host slice every host's scheduler
    # sees every slot (each host holds only its own slots' rows of the state).
    return jax.jit(run, donate_argnums=1, static_argnums=2,
                   out_shardings=(self._state_shardings(), self._replicated()))

  def _window(self, slots) -> int:
    """The attention window for the next generate call: a power of two (at least 128) or
    max_len, past the furthest position any live slot can reach during the call."""
    live = [len(request.prompt_ids) + len(tokens) - 1 for request, tokens in filter(None, slots)]
    return self._window_for(max(live) + self.config.steps_per_call)

  def _window_for(self, needed: int) -> int:
    if self.model_config.attention == "tpu":
      # The paged kernel reads each row's live pages only: a window would only add the
      # copies out of the cache and back (on a 70B v5p plan, 3x the bytes of a step).
      return self.config.max_len
    window = 128
    while window < needed:
      window *= 2
    return min(window, self.config.max_len)

  def warmup(self) -> None:
    """Compiles every prefill bucket and attention window now, so that a long run (or a
    timing) does not pay for compilation midway. Only valid while no request is running."""
    for bucket in self._buckets:
      length = min(bucket, self.config.max_len - 1)
      # max_new_tokens=1 finishes at prefill, so the slot stays free.
      self._insert(Request("warmup", [0] * length, SamplingParams(max_new_tokens=1)), 0)
    windows = sorted({self._window_for(n) for n in range(1, self.config.max_len + 1)})
    for window in windows:
      start = time.perf_counter()
      self.state, emitted = self._generate(self._params, self.state, window)
      jax.block_until_ready(emitted)
      self._timed("decode", window, time.perf_counter() - start)
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
    return None

  def _stop_ids(self, sampling: SamplingParams) -> tuple[int, ...]:
    eos = () if sampling.ignore_eos else self.eos_ids
    return tuple(dict.fromkeys(eos + sampling.stop_token_ids))

  def _bucket(self, length: int) -> int:
    for bucket in self._buckets:
      if bucket >= length:
        return bucket
    return self.config.max_len

  def _insert(self, request: Request, slot: int) -> int:
    sp = request.sampling
    ids = np.asarray(request.prompt_ids, np.int32)
    bucket = self._bucket(len(ids))
    tokens = np.zeros((1, bucket), np.int32)
    tokens[0, : len(ids)] = ids
    stops = np.full(MAX_STOP_IDS, -1, np.int32)
    stop_ids = self._stop_ids(sp)
    stops[: len(stop_ids)] = stop_ids
    budget = min(sp.max_new_tokens, self.config.max_len - len(ids))
    start = time.perf_counter()
    self.state, first = self._prefill_insert(
        self._params, self.state, tokens, np.int32(len(ids)), np.int32(slot),
        request_key(self.config.seed, request.id), np.int32(budget),
        np.float32(sp.temperature), np.int32(sp.top_k), np.float32(sp.top_p), stops)
    first = int(first)
    self._timed("prefill", bucket, time.perf_counter() - start)
    self.stats["prefill_seconds"] += time.perf_counter() - start
    self.stats["prefill_tokens"] += len(ids)
    self.stats["prefill_padded_tokens"] += bucket
    return first

  def _timed(self, program: str, shape: int, seconds: float) -> None:
    """Logs a program's first call, which compiles it (or loads it from JAX's persistent
    compilation cache): the time users wait for before tokens flow."""
    if (program, shape) in self._seen:
      return
    self._seen.add((program, shape))
    self.stats["first_call_seconds"] += seconds
    log.info("%s program for %s %d ready in %.2f s (compiled or loaded from the cache)", program,
             "prompts up to" if program == "prefill" else "attention window", shape, seconds)

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

    Requests are taken from the iterable only as slots free up. Invalid
    requests (empty prompt, ids outside the vocabulary, a prompt that leaves no
    room under the context limit) yield an `error` result at once; the others
    run normally.
    """
    pending = iter(requests)  # pulled lazily: a corpus-sized stream never sits in memory
    slots: list[tuple[Request, list[int]] | None] = [None] * self.config.slots
    start = time.perf_counter()
    exhausted = False
    while not exhausted or any(slots):
      for slot in range(self.config.slots):
        while slots[slot] is None and not exhausted:
          request = next(pending, None)
          if request is None:
            exhausted = True
            break
          problem = self._validate(request)
          if problem:
            log.debug("request %s rejected: %s", request.id, problem)
            yield self._result(request, [], "error", error=problem)
            continue
          first = self._insert(request, slot)
          tokens = [first]
          reason = self._finish_reason(request, tokens)
          if reason:
            yield self._result(request, tokens, reason)
          else:
            slots[slot] = (request, tokens)
      if not any(slots):
        continue
      call_start = time.perf_counter()
      window = self._window(slots)
      self.state, emitted = self._generate(self._params, self.state, window)
      emitted = np.asarray(emitted)  # the one host transfer per call: [steps, slots]
      self._timed("decode", window, time.perf_counter() - call_start)
      self.stats["generate_seconds"] += time.perf_counter() - call_start
      self.stats["generate_calls"] += 1
      for slot, entry in enumerate(slots):
        if entry is None:
          continue
        request, tokens = entry
        for token in emitted[:, slot]:
          if token < 0:
            break
          tokens.append(int(token))
          reason = self._finish_reason(request, tokens)
          if reason:
            slots[slot] = None
            yield self._result(request, tokens, reason)
            break
    self.stats["seconds"] += time.perf_counter() - start

  def generate_all(self, requests: Iterable[Request]) -> list[Result]:
    """All results, in the order of `requests`."""
    requests = list(requests)
    if len({r.id for r in requests}) != len(requests):
      raise MindJaxError("request ids must be unique")
    by_id = {r.id: r for r in self.generate(requests)}
    return [by_id[r.id] for r in requests]


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
  spec = sharding_lib.data_sharding(mesh, rules, ("cache_batch",)).spec[0]
  axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
  return math.prod(mesh.shape[a] for a in axes)


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
