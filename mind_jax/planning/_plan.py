"""A job's plan for a TPU slice: per-chip HBM against capacity, FLOPs and bytes per step, a
predicted speed at a stated MFU / MBU, and chip-hours for a token budget.

Memory, FLOPs and bytes come from the TPU compiler (`_compile`); speed is a prediction: the
compiler's work per step divided by the chip's peak rate times an assumed fraction of it
(MFU for compute-bound programs, MBU, the fraction of HBM bandwidth, for decoding).
"""

from __future__ import annotations

import dataclasses
import logging

from mind_jax._errors import MindJaxError
from mind_jax.planning import _compile
from mind_jax.planning._lengths import Lengths, job_lengths
from mind_jax.planning._topology import Slice, devices as slice_devices

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Assumptions:
  mfu: float = 0.45   # training and prefill: model FLOPs / peak
  mbu: float = 0.6    # decoding: bytes moved / peak HBM bandwidth
  price: float | None = None  # per chip-hour, the user's currency

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _program_row(program: _compile.Program) -> dict:
  return {"flops_per_chip": program.flops, "bytes_accessed_per_chip": program.bytes_accessed,
          "total_bytes_per_chip": program.total_bytes, "temp_bytes_per_chip": program.temp_bytes,
          "compile_seconds": round(program.compile_seconds, 2), "cached": program.cached}


def _memory(capacity: int, programs: dict, named: dict) -> dict:
  """Per-chip memory: the named state parts, the program temporaries, the total against the
  chip; the total is the largest program's (they do not run at once)."""
  peak = max(programs.values(), key=lambda p: p.total_bytes)
  known = sum(named.values())
  return {**named, "activations_and_temporaries": peak.temp_bytes,
          "other": max(peak.total_bytes - peak.temp_bytes - known, 0),
          "total_bytes_per_chip": peak.total_bytes, "capacity_bytes_per_chip": capacity,
          "largest_program": peak.name}


def _budget(tokens: float, tokens_per_second: float, chips: int, assumptions: Assumptions) -> dict:
  hours = tokens / tokens_per_second / 3600
  out = {"tokens": tokens, "hours": hours, "chip_hours": hours * chips}
  if assumptions.price is not None:
    out["cost"] = out["chip_hours"] * assumptions.price
  return out


def plan_training(cfg, config, tpu_slice: Slice, num_slices: int, assumptions: Assumptions,
                  tokens: float | None = None, exact_cost: bool = True) -> dict:
  """The plan of a TrainConfig's run on `num_slices` x `tpu_slice` (one global program).
  Without `exact_cost`, FLOPs and bytes per step are the compiler's count for a step whose
  loops (scanned layers, microbatches) it counts once."""
  from mind_jax.training import check_batch_divides, step_flops
  chips = tpu_slice.chips * num_slices
  mesh = cfg.mesh.build(slice_devices(tpu_slice, num_slices))
  check_batch_divides(cfg, mesh, tpu_slice.hosts * num_slices)
  capacity = tpu_slice.chip.hbm_bytes
  out = _header("train", tpu_slice, num_slices, mesh, config)
  try:
    compiled = _compile.training_programs(cfg, config, mesh, exact_cost)
  except _compile.DoesNotFit as e:
    return {**out, **_refused(e, capacity, e.named),
            "advice": _train_advice(cfg, e.named, capacity)}
  step = compiled["step"]
  model_flops = step_flops(config, cfg.tokens_per_step, cfg.data.seq_len)
  seconds = model_flops / (chips * tpu_slice.chip.peak_flops * assumptions.mfu)
  tokens_per_second = cfg.tokens_per_step / seconds
  memory = _memory(capacity, {"train_step": step}, compiled["named"])
  out.update(
      fits=memory["total_bytes_per_chip"] <= capacity, memory=memory,
      total_bytes_per_chip=memory["total_bytes_per_chip"],
      programs={"train_step": _program_row(step)},
      step={"tokens": cfg.tokens_per_step, "model_flops": model_flops,
            "compiler_flops": compiled["flops"] * chips,
            "compiler_bytes_accessed": compiled["bytes_accessed"] * chips,
            "predicted_seconds": seconds,
            "predicted_tokens_per_second": tokens_per_second,
            "predicted_tokens_per_second_per_chip": tokens_per_second / chips},
      budget=_budget(tokens or cfg.budget_tokens, tokens_per_second, chips, assumptions),
      assumptions=assumptions.as_dict())
  if not out["fits"]:
    out["advice"] = _train_advice(cfg, compiled["named"], capacity)
  return out


def plan_generation(cfg, config, tpu_slice: Slice, num_slices: int, assumptions: Assumptions,
                    tokens: float | None = None, exact_cost: bool = True,
                    compare_modes: bool = True, records: str | None = None) -> dict:
  """The plan of a GenerateConfig's run: engines of engine.hosts hosts each (1: an engine per
  host, on its own chips and share of the documents; -1: one engine over the whole slice),
  each holding the model and its KV cache on its chips. `tokens`: output tokens to generate
  (default 1e9). On a multi-host slice, `compare_modes` also plans the other mode (per host
  or whole slice, the mesh's data axis scaled to its chips) and reports both under "modes".
  `records`: a previous run's output directory, whose conversations' lengths replace the
  paper's per-style means."""
  out = _plan_engines(cfg, config, tpu_slice, num_slices, assumptions, tokens, exact_cost,
                      records)
  if compare_modes and tpu_slice.hosts > 1:
    other = 1 if cfg.engine.hosts != 1 else -1
    modes = [_mode_row(cfg.engine.hosts, out)]
    try:
      alt = _with_engine_hosts(cfg, other, tpu_slice)
      modes.append(_mode_row(other, _plan_engines(alt, config, tpu_slice, num_slices,
                                                  assumptions, tokens, exact_cost, records)))
    except MindJaxError as e:
      modes.append({"engine_hosts": other, "fits": False, "reason": str(e)})
    out["modes"] = modes
    fitting = [m for m in modes if m["fits"]]
    if fitting:  # the plan's answer to "which mode": the fastest that fits, as overrides
      best = max(fitting, key=lambda m: m["predicted_tokens_per_second"])
      axes = ", ".join(f"{k}: {v}" for k, v in best["mesh"].items())
      out["choice"] = {**best, "overrides": f"engine.hosts={best['engine_hosts']} "
                                            f"mesh.axes={{{axes}}}"}
  return out


def _with_engine_hosts(cfg, hosts: int, tpu_slice: Slice):
  """`cfg` with engines of `hosts` hosts and its mesh's data axis scaled to their chips."""
  now = tpu_slice.engine_slice(cfg.engine.hosts).chips
  then = tpu_slice.engine_slice(hosts).chips
  axes = dict(cfg.mesh.axes)
  if -1 not in axes.values():
    data = axes.get("data", 1) * then
    if data % now:
      raise MindJaxError(f"mesh.axes={axes} needs {now} chips; an engine of engine.hosts={hosts} "
                         f"has {then}")
    axes["data"] = data // now
  return cfg.model_copy(update={
      "engine": cfg.engine.model_copy(update={"hosts": hosts}),
      "mesh": cfg.mesh.model_copy(update={"axes": axes})})


def _mode_row(hosts: int, p: dict) -> dict:
  row = {"engine_hosts": hosts, "engines": p.get("engines"), "mesh": p["mesh"], "fits": p["fits"],
         "total_bytes_per_chip": p["total_bytes_per_chip"]}
  if p["fits"]:
    row["predicted_tokens_per_second"] = p["step"]["predicted_tokens_per_second"]
  return row


def _plan_engines(cfg, config, tpu_slice: Slice, num_slices: int, assumptions: Assumptions,
                  tokens: float | None, exact_cost: bool, records: str | None = None) -> dict:
  from mind_jax.mind import engine_config
  engine_slice = tpu_slice.engine_slice(cfg.engine.hosts)
  devices = slice_devices(engine_slice)
  try:
    mesh = cfg.mesh.build(devices)
  except MindJaxError as e:
    raise MindJaxError(f"{e} (an engine of engine.hosts={cfg.engine.hosts} on {tpu_slice.name} "
                       f"has {len(devices)} chips)") from e
  engines = tpu_slice.chips // engine_slice.chips * num_slices
  chips = tpu_slice.chips * num_slices
  chip = tpu_slice.chip
  econfig = engine_config(cfg)
  lengths = job_lengths(cfg, records)
  out = _header("generate", tpu_slice, num_slices, mesh, config)
  out.update(engines=engines, engine_hosts=cfg.engine.hosts, engine_chips=engine_slice.chips)
  state = _compile.generation_state(econfig, config, mesh, cfg.mesh.rules, chip.hbm_bytes)
  named = {"weights": state["weights"], "kv_cache": state["kv_cache"]}
  try:
    compiled = _compile.generation_programs(state, lengths.prompt, lengths.suffix,
                                            lengths.read_tokens(econfig.page), exact_cost)
  except _compile.DoesNotFit as e:
    return {**out, **_refused(e, chip.hbm_bytes, named),
            "advice": _generate_advice(named, chip.hbm_bytes, e.used)}
  prefill, decode = compiled["prefill"], compiled["decode"]
  pages = _paged_load(state, lengths)

  def seconds(flops, moved):  # the slower of the compute bound and the memory bound
    return max(flops / (chip.peak_flops * assumptions.mfu),
               moved / (chip.hbm_bandwidth * assumptions.mbu))

  # The one-step program runs every slot's row; the step is predicted for that program, its
  # rows holding `sequences` conversations.
  moved = _decode_bytes(state, compiled, pages)
  step_seconds = seconds(decode.flops, moved)
  sequences = pages["sequences_at_once"]
  share = lengths.sharers
  calls = lambda programs: sum(seconds(p.flops, p.bytes_accessed) for p in programs)  # noqa: E731
  prefill_seconds = (calls(compiled["prefill_whole"])
                     + (share - 1) * calls(compiled["prefill_sharer"])) / share
  budget = tokens or 1e9
  conversations = budget / lengths.output
  engine_seconds = budget / (sequences / step_seconds) + conversations * prefill_seconds
  tokens_per_second = budget / engine_seconds * engines
  memory = _memory(chip.hbm_bytes, {**{f"prefill {i}": p for i, p in enumerate(
      compiled["prefill_programs"])}, "decode": compiled["decode_full"]}, named)
  out.update(
      fits=memory["total_bytes_per_chip"] <= chip.hbm_bytes, memory=memory,
      total_bytes_per_chip=memory["total_bytes_per_chip"],
      programs={"prefill": _program_row(prefill),
                "prefill_suffix": _program_row(compiled["prefill_sharer"][-1]),
                "decode": _program_row(decode),
                "decode_full_window": _program_row(compiled["decode_full"])},
      pages=pages,
      step={"slots": econfig.slots, "sequences_at_once": sequences,
            "steps_per_call": econfig.steps_per_call, "prompt_bucket": compiled["buckets"][0],
            "suffix_bucket": compiled["suffix_buckets"][-1],
            "prompt_buckets": compiled["buckets"], "suffix_buckets": compiled["suffix_buckets"],
            "decode_window": compiled["window"], "context_limit": econfig.max_len,
            "decode_bytes_per_step_per_chip": moved,
            "predicted_decode_step_seconds": step_seconds,
            "predicted_prefill_seconds": prefill_seconds,
            "predicted_tokens_per_second": tokens_per_second,
            "predicted_tokens_per_second_per_chip": tokens_per_second / chips},
      budget=_budget(budget, tokens_per_second, chips, assumptions),
      assumptions={**assumptions.as_dict(), "lengths": lengths.as_dict()})
  if not out["fits"]:
    out["advice"] = _generate_advice(named, chip.hbm_bytes, memory["total_bytes_per_chip"])
  return out


def _paged_load(state: dict, lengths: Lengths) -> dict:
  """The pool against the job's lengths, per engine: how many sequences decode at once (the
  slots, or fewer where the pool runs out of pages first), the KV bytes per chip they hold
  and read, and the prompt tokens sharing keeps from being prefilled again."""
  engine = state["engine"]
  cfg = engine.config
  token_bytes = state["kv_cache"] / (state["kv_pages"] * cfg.page)  # per chip, per pool token
  pool_tokens = state["kv_pages"] * cfg.page
  # A sequence never holds more than a row at the context limit, and each shard of the pool
  # holds at least one (the engine sizes it so).
  held = min(lengths.held_tokens(cfg.page, cfg.steps_per_call), cfg.max_len)
  fit = max(int(pool_tokens / engine.shards // held), 1) * engine.shards
  sequences = min(cfg.slots, fit)
  read = min(lengths.read_tokens(cfg.page), cfg.max_len)
  return {"page_size": cfg.page, "pool_pages": state["kv_pages"], "pool_tokens": pool_tokens,
          "pool_bytes_per_chip": state["kv_cache"],
          "held_tokens_per_sequence": held, "read_tokens_per_sequence": read,
          "sequences_that_fit": fit, "sequences_at_once": sequences,
          "kv_bytes_held_per_chip": sequences * held * token_bytes,
          "kv_bytes_read_per_step_per_chip": sequences * read * token_bytes,
          "prefill_tokens_per_conversation": lengths.prefill_tokens(),
          "prefill_tokens_saved_by_sharing": lengths.prompt - lengths.prefill_tokens(),
          "prefill_saved_fraction": 1 - lengths.prefill_tokens() / lengths.prompt}


def _decode_bytes(state: dict, compiled: dict, pages: dict) -> float:
  """HBM bytes a decode step moves per chip: the compiler's count for the one-step program,
  plus what it cannot count or counts once too often."""
  from mind_jax.nn import paged_kernel_reads
  decode, engine = compiled["decode"], state["engine"]
  model = engine.model_config
  if model.attention == "tpu" and paged_kernel_reads(engine._cache_dtype, model.resolved_head_dim,
                                                     engine.config.page):
    # The paged kernel reads the live sequences' pages in place; the compiler does not count
    # what a Pallas kernel reads.
    return decode.bytes_accessed + pages["kv_bytes_read_per_step_per_chip"]
  if model.attention == "tpu":
    # Pages the kernel does not take (int8, 64-dim heads) are gathered by XLA at every step of
    # the one-step program, as it counts them.
    return decode.bytes_accessed
  # XLA: a call gathers its rows' windows out of the pages and writes the entries back once
  # for its steps (read and write each way), which the one-step program counts at each step.
  token_bytes = state["kv_cache"] / pages["pool_tokens"]
  window_copy = 4 * engine.config.slots * compiled["window"] * token_bytes
  return decode.bytes_accessed - window_copy * (1 - 1 / engine.config.steps_per_call)


def _header(job: str, tpu_slice: Slice, num_slices: int, mesh, config) -> dict:
  return {"job": job, "topology": tpu_slice.name, "num_slices": num_slices,
          "chips": tpu_slice.chips * num_slices, "hosts": tpu_slice.hosts * num_slices,
          "chip": tpu_slice.row(), "mesh": dict(mesh.shape),
          "model": {"parameters": config.num_params(), "layers": config.num_hidden_layers,
                    "hidden_size": config.hidden_size, "dtype": str(config.dtype),
                    "param_dtype": str(config.param_dtype), "attention": config.attention}}


def _refused(e: _compile.DoesNotFit, capacity: int, named: dict | None = None) -> dict:
  """A plan whose program the compiler refused: the use it reported (plus the state, where it
  reported temporaries only) against the chip's capacity."""
  # The figure the compiler gives is what it failed to place, live inputs included (for a
  # 70B decode state it equalled weights + KV cache), so it is taken as the total.
  memory = {**(named or {}), "total_bytes_per_chip": e.used, "capacity_bytes_per_chip": capacity,
            "largest_program": e.name}
  return {"fits": False, "total_bytes_per_chip": e.used, "memory": memory, "compiler": str(e)}


def _train_advice(cfg, named: dict, capacity: int) -> list[str]:
  state = named.get("weights", 0) + named.get("optimizer_state", 0)
  if state > capacity:
    # Activations are not the problem: microbatches and remat cannot help.
    return [f"the weights and optimizer state alone are {state / 2 ** 30:.2f} GiB per chip of "
            f"{capacity / 2 ** 30:.0f}: only more chips on the fsdp axis can fit it (a larger "
            f"slice, or mesh.axes.fsdp over more of this one)"]
  advice = []
  per = cfg.batch_size // cfg.microbatches
  if per > 1:
    advice.append(f"microbatches={cfg.microbatches * 2} (activations of {per // 2} sequences at "
                  f"a time instead of {per})")
  if cfg.model.remat != "full":
    advice.append("model.remat=full (keep only each layer's input for the backward pass)")
  advice.append("a larger slice (the fsdp axis splits weights and optimizer state over more chips)")
  return advice


def _generate_advice(named: dict, capacity: int, used: float | None = None) -> list[str]:
  advice = []
  # What is not KV pool stays (the compiler's figure where it gave one; else the weights and
  # a tenth of the chip for temporaries); the pool may take the rest, less 5% headroom.
  rest = used - named["kv_cache"] if used else named["weights"] + 0.1 * capacity
  pool = 0.95 * capacity - rest
  if pool > 0:
    advice.append(f"engine.kv_memory={pool / 2 ** 30:.1f}GiB (a KV pool that leaves the "
                  f"programs {(rest - named['weights']) / 2 ** 30:.1f} GiB per chip)")
    advice.append("fewer engine.slots (the decode program's temporaries grow with them)")
  else:
    advice.append(f"the weights take {named['weights'] / 2 ** 30:.1f} GiB of the chip's "
                  f"{capacity / 2 ** 30:.0f} GiB: a larger mesh.axes.tensor or a larger host")
  advice.append("a larger mesh.axes.tensor (weights and KV pool split over more chips)")
  return advice
