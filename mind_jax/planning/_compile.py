"""Compiles a job's device programs for a TPU slice from abstract inputs, and reads back what
the TPU compiler says they need: HBM per chip, FLOPs and bytes per step.

Nothing is allocated and no weights are read: parameters, optimizer state, KV cache and
batches are `jax.ShapeDtypeStruct`s carrying the shardings the real run would give them, so
the programs compiled are the real run's, on the real compiler.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp

from mind_jax.planning import _cache


@dataclasses.dataclass
class Program:
  """What the compiler reports for one program, per chip."""

  name: str
  flops: float
  bytes_accessed: float
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  compile_seconds: float = 0.0  # the compile's, also when read from the cache
  cached: bool = False          # read from the compile cache, not compiled by this plan

  @property
  def total_bytes(self) -> int:
    """Peak HBM the program holds: its inputs, its outputs not written over donated inputs,
    its temporaries and its code."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes


class DoesNotFit(Exception):
  """The compiler refused a program for want of HBM."""

  def __init__(self, name: str, used: float | None, capacity: float | None, message: str):
    super().__init__(message)
    self.name, self.used, self.capacity = name, used, capacity
    self.named: dict = {}  # the state's per-chip bytes, known without the compiler


_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _bytes(text: str) -> float:
  number, unit = re.fullmatch(r"([\d.]+)([KMGT]?)", text).groups()
  return float(number) * _UNITS[unit]


def compile_program(name: str, lowered, mesh) -> Program:
  """`lowered` (a program over `mesh`) compiled, or its result read from the active compile
  cache (`_cache.compile_cache`); raises DoesNotFit where the compiler ran out of HBM."""
  cache = _cache.active()
  key = _cache.program_key(lowered, mesh) if cache else None
  result = cache.get(key, {f.name for f in dataclasses.fields(Program)}) if cache else None
  if result is not None:
    if "does_not_fit" in result:
      refused = result["does_not_fit"]
      raise DoesNotFit(name, refused["used"], refused["capacity"], refused["message"])
    return Program(**{**result, "name": name, "cached": True})
  try:
    program = _compiled(name, lowered)
  except DoesNotFit as e:
    if cache:
      cache.put(key, {"does_not_fit": {"used": e.used, "capacity": e.capacity,
                                       "message": str(e)}})
    raise
  if cache:
    cache.put(key, dataclasses.asdict(program))
  return program


def _compiled(name: str, lowered) -> Program:
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # the TPU compiler's out-of-memory is an XlaRuntimeError
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
      raise
    # Two forms of the message, depending on where the compiler ran out.
    used = re.search(r"Used ([\d.]+[KMGT]?) of ([\d.]+[KMGT]?) hbm", text)
    temps = re.search(r"HLO temporaries \(([\d.]+[KMGT]?)\) exceeds available HBM \(([\d.]+[KMGT]?)\)", text)
    found = used or temps
    raise DoesNotFit(name, _bytes(found.group(1)) if found else None,
                     _bytes(found.group(2)) if found else None, text.splitlines()[0]) from e
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return Program(name, float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)),
                 memory.argument_size_in_bytes, memory.output_size_in_bytes,
                 memory.alias_size_in_bytes, memory.temp_size_in_bytes,
                 memory.generated_code_size_in_bytes, seconds)


def bytes_per_chip(tree) -> int:
  """Bytes one chip holds of a tree of ShapeDtypeStructs with shardings (the largest shard
  where shards differ, as on an unevenly split axis)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


# --- training -----------------------------------------------------------------------------------


def _train_step(cfg, config, mesh) -> tuple[Program, dict]:
  from mind_jax.data import MODEL_INPUTS
  from mind_jax.training import Trainer
  trainer = Trainer.create(config, mesh, cfg.optimizer.build(cfg.steps), microbatches=cfg.microbatches,
                           z_loss=cfg.z_loss, loss_chunk=cfg.loss_chunk, seed=cfg.seed)
  state = trainer.abstract_state()
  shape = (cfg.batch_size, cfg.data.seq_len)
  batch = {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "loss_weights" else jnp.int32,
                                   sharding=trainer.batch_sharding) for k in MODEL_INPUTS}
  named = {"weights": bytes_per_chip(state["params"]),
           "optimizer_state": bytes_per_chip(state["opt_state"]), "batch": bytes_per_chip(batch)}
  try:
    return compile_program("train_step", trainer.train_step.lower(state, batch), mesh), named
  except DoesNotFit as e:
    e.named = named
    raise


def training_programs(cfg, config, mesh, exact_cost: bool = True) -> dict:
  """The train step of `cfg` (a TrainConfig) for `config` on `mesh`, compiled: its Program,
  the per-chip bytes of weights, optimizer state and batch, and the step's FLOPs and bytes.

  The compiler's cost analysis counts a loop's body once, whatever its trip count: where
  the step loops (scanned layers, microbatches, the loss's chunks), its cost is read from a second compile of
  one microbatch with the layers unrolled, times the microbatches.
  """
  step, named = _train_step(cfg, config, mesh)
  flops, moved, m = step.flops, step.bytes_accessed, cfg.microbatches
  if exact_cost and (config.scan_layers or m > 1 or 0 < cfg.loss_chunk < cfg.data.seq_len):
    # The loss's chunk loop too: the whole row's head at once has the same FLOPs.
    one = cfg.model_copy(update={"batch_size": cfg.batch_size // m, "microbatches": 1,
                                 "loss_chunk": 0})
    unrolled, _ = _train_step(one, config.replace(scan_layers=False), mesh)
    flops, moved = unrolled.flops * m, unrolled.bytes_accessed * m
  return {"step": step, "named": named, "flops": flops, "bytes_accessed": moved}


# --- generation ---------------------------------------------------------------------------------


def abstract_model(config, mesh, rules: str):
  """(abstract Llama, its parameters as ShapeDtypeStructs with the `rules` shardings)."""
  from flax import nnx

  from mind_jax import sharding
  from mind_jax.nn import Llama
  _, flat, shardings = sharding.abstract_state(lambda: Llama(config, rngs=nnx.Rngs(0)), mesh,
                                               rules)
  model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
  params = nnx.state(model)
  for path, variable in nnx.to_flat_state(params):
    variable.set_value(jax.ShapeDtypeStruct(variable.shape, variable.dtype,
                                            sharding=shardings[path]))
  return model, params


def decode_window(engine, context_tokens: float) -> int:
  """The attention window of a typical decode call (a sequence `context_tokens` long), as
  the engine picks it (on TPU the whole context limit: the paged kernel has no window)."""
  return engine._window_for(math.ceil(context_tokens))


def generation_state(engine_config, config, mesh, rules: str, capacity: int) -> dict:
  """The engine over an abstract model with its KV pool sized as the run sizes it on chips of
  `capacity` bytes, its parameters, and per-chip bytes of the weights and of the pool
  (arithmetic on the shardings: known even when a program does not fit)."""
  from mind_jax.engine import Engine
  model, params = abstract_model(config, mesh, rules)
  weights = bytes_per_chip(params)
  engine = Engine(model, None, engine_config, mesh, allocate=False, rules=rules)
  if engine_config.kv_pages is None and engine_config.kv_memory is None:
    pages = default_pool_pages(engine, capacity - weights)
    engine = Engine(model, None, dataclasses.replace(engine_config, kv_pages=pages), mesh,
                    allocate=False, rules=rules)
  pages = engine.pages_per_shard * engine.shards
  return {"engine": engine, "model": model, "params": params, "weights": weights,
          "kv_cache": engine._per_device(pages), "kv_pages": pages}


def default_pool_pages(engine, free: int) -> int:
  """The pool the engine takes by default on chips with `free` bytes after the weights (its
  share of them, up to every slot at the context limit), never under one sequence at the
  context limit per shard: a pool that small the compiler then refuses, with advice."""
  from mind_jax.engine import KV_CACHE_MEMORY_FRACTION
  cfg, shards = engine.config, engine.shards
  fit = int(KV_CACHE_MEMORY_FRACTION * max(free, 0)) // engine._per_device(shards) * shards
  return max(min(cfg.slots * cfg.row_pages, fit), cfg.row_pages * shards)


def generation_programs(state: dict, prompt_tokens: float, suffix_tokens: float,
                        context_tokens: float, exact_cost: bool = True) -> dict:
  """The prefill programs of a whole prompt and of a sharer's (its prompt less the shared
  prefix), in the pieces the engine runs them (`Engine.prefill_pieces`), decode at the full
  context window (the memory peak) and at the typical window (the speed), compiled.
  "prefill" is the whole prompt's first piece; "prefill_whole" and "prefill_sharer" list
  each call's program."""
  engine, params = state["engine"], state["params"]
  prompt = math.ceil(prompt_tokens)
  prefix = prompt - math.ceil(suffix_tokens)
  window = decode_window(engine, context_tokens)
  compiled = {}

  def program(start: int, end: int, bucket: int):
    key = (bucket, None if start == 0 else engine._prefill_window(end))
    if key not in compiled:
      compiled[key] = compile_program("prefill", engine.lower_prefill(
          params, bucket, None if start == 0 else end), engine.mesh)
    return compiled[key]

  whole_pieces = engine.prefill_pieces(0, prompt)
  sharer_pieces = engine.prefill_pieces(prefix, prompt) if prefix else whole_pieces
  whole = [program(*piece) for piece in whole_pieces]
  out = {"prefill": whole[0], "prefill_whole": whole,
         "prefill_sharer": [program(*piece) for piece in sharer_pieces],
         "prefill_programs": list(compiled.values()),
         "decode_full": compile_program("decode", engine.lower_decode(params), engine.mesh),
         "buckets": [b for _, _, b in whole_pieces],
         "suffix_buckets": [b for _, _, b in sharer_pieces], "window": window}
  # The cost of one decode step: the program's scan over steps_per_call counts once in the
  # compiler's cost analysis, so compile a one-step call at the typical window.
  if not exact_cost:  # the memory figures only: the full call's cost, loop counted once
    out["decode"] = out["decode_full"]
    return out
  from mind_jax.engine import Engine
  one_step = Engine(state["model"], None, dataclasses.replace(engine.config, steps_per_call=1),
                    engine.mesh, allocate=False, rules=engine.rules)
  out["decode"] = compile_program("decode", one_step.lower_decode(params, window),
                                  engine.mesh)
  return out


def flops_arithmetic(config, tokens: int, factor: int) -> float:
  """`factor` x parameters x tokens, the textbook count (6 training, 2 inference)."""
  return float(factor * config.num_params() * tokens)
