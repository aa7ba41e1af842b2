"""The MIND generation job: documents -> chunks -> (chunk, style) prompts -> engine -> records."""

from __future__ import annotations

import array
import dataclasses
import hashlib
import itertools
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import NamedTuple

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError
from mind_jax._hosts import init_hosts, sync_hosts
from mind_jax._progress import progress_bar
from mind_jax.data import ReadStats, chunk_text, read_documents
from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams
from mind_jax.mind._config import GenerateConfig
from mind_jax.mind._styles import Style, check_style_keys, format_prompt, load_styles, prompt_text
from mind_jax.mind._writer import PartWriter, done_ids

log = logging.getLogger("mind_jax.generate")

# The paper's mean conversation length, averaged over styles (452 to 630 tokens per style):
# the --dry-run output estimate.
PAPER_MEAN_OUTPUT_TOKENS = 540


@dataclasses.dataclass(frozen=True)
class Unit:
  """One (chunk, style) pair: the job's unit of work, named by a stable id."""

  id: str
  doc_id: str
  chunk_index: int
  style: Style
  chunk: str
  prompt_ids: list[int]
  prefix_len: int = 0  # prompt tokens shared with the chunk's other styles


def tokenizer_name(cfg: GenerateConfig, tokenizer=None) -> str:
  """What `load_tokenizer` takes for the generator's tokenizer: the checkpoint's directory, or
  the byte-level tokenizer of the random preset model; a `tokenizer` handed in names its own."""
  from mind_jax.text import BYTE_TOKENIZER
  source = tokenizer.source if tokenizer is not None else cfg.model.path or BYTE_TOKENIZER
  return source if source == BYTE_TOKENIZER else os.path.abspath(source)


def generator_tokenizer(cfg: GenerateConfig):
  """The generator's tokenizer alone (planning and --dry-run need no weights)."""
  from mind_jax.text import load_tokenizer
  return load_tokenizer(tokenizer_name(cfg))


@dataclasses.dataclass(frozen=True)
class EngineGroup:
  """The hosts that run one engine together (engine.hosts of them), and this host's place."""

  index: int   # which engine of the slice
  count: int   # engines on the slice
  rank: int    # this host within its engine: rank 0 writes the engine's part files
  size: int    # hosts per engine

  @classmethod
  def of(cls, cfg: GenerateConfig, host: int, hosts: int) -> EngineGroup:
    size = hosts if cfg.engine.hosts == -1 else cfg.engine.hosts
    if hosts % size:
      raise MindJaxError(f"engine.hosts={cfg.engine.hosts}: does not divide the slice's {hosts} "
                         "host(s)")
    return cls(host // size, hosts // size, host % size, size)

  def devices(self) -> list:
    """Every chip of this engine's hosts, in process order (the same list on each of them)."""
    import jax
    first = self.index * self.size
    return sorted((d for d in jax.devices() if first <= d.process_index < first + self.size),
                  key=lambda d: (d.process_index, d.id))


def host_shard(cfg: GenerateConfig, group: EngineGroup) -> tuple[int, int]:
  """(shard index, shard count) of one engine: job shard i of n is split again over the
  slice's engines (one per host, or one per engine.hosts hosts)."""
  return cfg.shard_index * group.count + group.index, cfg.num_shards * group.count


def load_generator(cfg: GenerateConfig, group: EngineGroup | None = None) -> Loaded:
  """The checkpoint or preset `cfg.model` names, placed by `cfg.mesh` on the devices of this
  host's engine (default: this host's own)."""
  import jax
  from mind_jax.ckpts import load_model
  mesh = cfg.mesh.build(group.devices() if group else jax.local_devices())
  model, tokenizer, name = load_model(cfg.model, mesh, cfg.mesh.rules)
  if tokenizer is None:
    raise MindJaxError(f"model.path={cfg.model.path}: the generator needs its tokenizer files")
  return Loaded(model, tokenizer, name, mesh)


def engine_config(cfg: GenerateConfig) -> EngineConfig:
  """The decode engine's shape for a generate config."""
  from mind_jax.ckpts import parse_size
  memory = cfg.engine.kv_memory
  return EngineConfig(slots=cfg.engine.slots, max_len=cfg.sampling.context_limit,
                      steps_per_call=cfg.engine.steps_per_call, seed=cfg.seed,
                      page_size=cfg.engine.page_size, kv_pages=cfg.engine.kv_pages,
                      kv_memory=None if memory is None else parse_size(memory),
                      cache_dtype=cfg.engine.kv_dtype, admission=cfg.engine.admission)


def unit_id(doc_id: str, chunk_index: int, style_key: str) -> str:
  return f"{doc_id}#{chunk_index}#{style_key}"


class ChunkPlan:
  """Where each document of a shard was cut, recorded by the planning pass so that the pass
  feeding the engine re-reads the documents but never tokenizes them again to chunk them
  (chunking tokenizes each chunk several times over). Four bytes per chunk and per document."""

  def __init__(self):
    self.chunks_per_doc = array.array("I")
    self.chunk_chars = array.array("I")
    self._doc = self._chunk = 0

  def record(self, chunks: list[str]) -> None:
    self.chunks_per_doc.append(len(chunks))
    self.chunk_chars.extend(len(c) for c in chunks)

  def replay(self, doc) -> list[str]:
    """The chunks recorded for the next document, cut from its text again."""
    if self._doc >= len(self.chunks_per_doc):
      raise MindJaxError(f"document {doc.id}: the input holds more documents than when it was "
                         "planned; it changed while the job ran")
    n = self.chunks_per_doc[self._doc]
    lengths = self.chunk_chars[self._chunk:self._chunk + n]
    self._doc, self._chunk = self._doc + 1, self._chunk + n
    if sum(lengths) != len(doc.text):
      raise MindJaxError(f"document {doc.id}: its text changed since the job planned it")
    starts = [0, *itertools.accumulate(lengths)]
    return [doc.text[a:b] for a, b in zip(starts, starts[1:])]


def chunked_documents(cfg: GenerateConfig, tokenizer, stats: ReadStats,
                      shard: tuple[int, int] | None = None, plan: ChunkPlan | None = None,
                      replay: bool = False) -> Iterator[tuple]:
  """(document, its chunks) for every document of a shard (default: the job's), in a fixed
  order: document k belongs to shard k % count. Chunks are recorded into `plan`, or with
  `replay` cut where `plan` recorded them."""
  shard_index, shard_count = shard or (cfg.shard_index, cfg.num_shards)
  # Window by window: a huge text's count holds one window's ids, not a list of all of them.
  count = lambda text: sum(map(len, tokenizer.encode_windows(text)))  # noqa: E731
  docs = read_documents(cfg.input.source, cfg.input.text_field, cfg.input.id_field,
                        cfg.input.on_bad_record, stats, cfg.input.limit, cfg.input.split,
                        cfg.input.data_dir)
  for k, doc in enumerate(docs):
    if k % shard_count != shard_index:
      continue
    if replay:
      chunks = plan.replay(doc)
    else:
      chunks = chunk_text(doc.text, count, cfg.chunking.max_tokens, cfg.chunking.min_tail_tokens)
      if plan is not None:
        plan.record(chunks)
    stats["chunks"] += len(chunks)
    if len(chunks) > 1:
      stats["documents_split"] += 1
    yield doc, chunks


def plan_units(cfg: GenerateConfig, tokenizer, styles: list[Style], stats: ReadStats,
               shard: tuple[int, int] | None = None, plan: ChunkPlan | None = None,
               skip: set[str] | frozenset = frozenset()) -> Iterator[Unit]:
  """Every unit of a shard but those in `skip`, in a fixed order, with its prompt; with a
  `plan` recorded by `chunked_documents`, the documents are cut where it says."""
  for doc, chunks in chunked_documents(cfg, tokenizer, stats, shard, plan, replay=plan is not None):
    for index, chunk in enumerate(chunks):
      ids = {style.key: format_prompt(tokenizer, prompt_text(chunk, style, cfg.prompt.order),
                                      cfg.prompt.format)
             for style in styles
             if len(styles) > 1 or unit_id(doc.id, index, style.key) not in skip}
      shared = common_prefix_len(list(ids.values())) if len(ids) > 1 else 0
      for style in styles:
        uid = unit_id(doc.id, index, style.key)
        if uid in skip:
          continue
        yield Unit(id=uid, doc_id=doc.id, chunk_index=index, style=style, chunk=chunk,
                   prompt_ids=ids[style.key], prefix_len=shared)


def common_prefix_len(prompts: list[list[int]]) -> int:
  """Tokens every prompt starts with: with `prompt.order: context_first`, the template's
  header and the chunk that a chunk's styles share."""
  first = prompts[0]
  n = min(map(len, prompts))
  for other in prompts[1:]:
    n = next((i for i in range(n) if other[i] != first[i]), n)
  return n


def check_model_path(cfg: GenerateConfig) -> None:
  """A model.path that cannot be the generator fails here, before any corpus is read."""
  path = cfg.model.path
  if not path:
    return
  from mind_jax.ckpts import is_orbax_dir, require_model_dir
  from mind_jax.text import has_tokenizer_files
  require_model_dir(path, "model.path")
  if not os.path.exists(os.path.join(path, "config.json")) and not is_orbax_dir(path):
    raise MindJaxError(f"model.path={path}: no config.json (not a Hugging Face model directory "
                       "or mind_jax Orbax checkpoint)")
  if not has_tokenizer_files(path):
    raise MindJaxError(f"model.path={path}: no tokenizer files (tokenizer.json or "
                       "tokenizer.model); the generator needs its tokenizer")


def run_settings(cfg: GenerateConfig, styles: list[Style], model_name: str | None) -> dict:
  """The settings that determine the records (the keys marked so in the config), recorded in
  output.dir/run.json: a rerun with other values would mix two datasets in one directory.
  Engine slots, mesh and part sizes are not among them (a record does not depend on its slot
  or batch-mates), nor the input source and limit (more documents extend a dataset; their ids
  differ): which corpus is read is free (a corpus may arrive in pieces), how its records
  become documents and ids is not."""
  from mind_jax._outdir import dir_fingerprint
  settings = config_lib.deciding(cfg, leave_out=(config_lib.SPEED, config_lib.SOURCE))
  del settings["model"]
  # A checkpoint is known by its content, so one copied or moved elsewhere is the same model.
  model = (f"{os.path.basename(os.path.abspath(cfg.model.path))}, content "
           f"{dir_fingerprint(cfg.model.path)}"
           if cfg.model.path and model_name is None else model_name or _smoke_name(cfg))
  beside = {**cfg.model.settings_beside_identity(), **settings.pop("engine", {})}
  beside["param_dtype"] = beside["param_dtype"] or beside["dtype"]
  # Styles by content, per style, so adding a style to a run is a resume, not a conflict.
  settings["prompt"].pop("styles_file")
  settings["prompt"]["styles"] = {
      s.key: hashlib.sha256(f"{s.name}\0{s.instruction}".encode()).hexdigest()[:16]
      for s in styles}
  # An unset key (int8 weights or cache off) is not recorded, so a run made before the key
  # existed resumes.
  return {"model": model, **{k: v for k, v in beside.items() if v is not None}, **settings}


def _owned_parts(out_dir: str) -> list:
  """The files of `out_dir` named as this job names its output: part files (and their
  temporary names) and shard manifests."""
  from etils import epath
  root = epath.Path(out_dir)
  if not root.is_dir():
    return []
  return [p for p in root.iterdir() if OWNED_NAME.fullmatch(p.name)]


OWNED_NAME = re.compile(r"part-\d{5}-\d{6}\.(jsonl|parquet)(\.tmp)?|manifest-\d{5}\.json(\.tmp)?")


def claim_output(cfg: GenerateConfig, settings: dict, dry_run: bool, tokenizer: str,
                 styles: list[Style]) -> None:
  """Refuses an output.dir written with other settings (see mind_jax._outdir.claim)."""
  from mind_jax._outdir import claim

  def remove_owned(record):
    paths = _owned_parts(cfg.output.dir)
    log.warning("output.overwrite: deleting %d file(s) of the earlier run in %s", len(paths),
                cfg.output.dir)
    for path in paths:
      path.unlink()

  # The generator's tokenizer and what its styles write are noted for the jobs that read this
  # output (the filter counts tokens with the one and strips closing notes naming the other),
  # as notes: a moved checkpoint is still the same generator.
  notes = {"tokenizer": tokenizer, "genres": sorted({style.genre for style in styles})}
  claim(cfg.output.dir, "generate", settings, overwrite=cfg.output.overwrite, key="output.dir",
        remove_owned=remove_owned, dry_run=dry_run, notes=notes,
        foreign=[p.name for p in _owned_parts(cfg.output.dir) if p.name.startswith("part-")])


def _smoke_name(cfg: GenerateConfig) -> str:
  from mind_jax.ckpts import random_model_name
  return random_model_name(cfg.model.preset or "tiny")


class Loaded(NamedTuple):
  """A generator in memory: what `load_generator` returns and `run` may be handed."""

  model: object
  tokenizer: object
  name: str
  mesh: object


@dataclasses.dataclass
class Plan:
  """Pass 1 over this shard's corpus: what it holds, what earlier runs already wrote, and where
  each document was cut (so the pass that feeds the engine does not chunk again)."""

  shard: tuple[int, int]
  done: set[str]
  chunks: ChunkPlan
  summary: dict
  units: int
  already: int


def run(cfg: GenerateConfig, loaded: Loaded | None = None) -> dict:
  """Runs (or resumes) the job; returns the summary it prints.

  `loaded` is a generator already in memory (a notebook, a benchmark); by default `cfg.model`
  is loaded.
  """
  start = time.perf_counter()
  styles, settings = _preflight(cfg, loaded)
  host, hosts, group = _join_hosts(cfg, loaded)
  tokenizer = loaded.tokenizer if loaded else generator_tokenizer(cfg)
  sampling = _sampling_params(cfg)
  plan = _plan(cfg, tokenizer, styles, settings, host_shard(cfg, group), sampling)
  if cfg.dry_run:
    plan.summary["estimated_output_tokens"] = (plan.units - plan.already) * min(
        sampling.max_new_tokens, PAPER_MEAN_OUTPUT_TOKENS)
    _print_summary(plan.summary, "dry run: nothing generated")
    return plan.summary
  loaded = loaded or load_generator(cfg, group)
  engine = _start_engine(cfg, loaded, settings, styles, host, hosts)
  summary = {**plan.summary, "model": loaded.name}
  summary.update(_generate(cfg, engine, loaded, styles, plan, sampling, group))
  summary["elapsed_seconds"] = time.perf_counter() - start
  # What paging and prefix sharing did: prompt tokens computed and read from shared pages.
  summary.update({key: int(engine.stats[key]) for key in (
      "prefill_tokens", "prefix_tokens_reused", "preemptions", "most_sequences_at_once")})
  return _final_summary(cfg, summary, group)


def _sampling_params(cfg: GenerateConfig) -> SamplingParams:
  """The engine's sampling for a generate config (no max_new_tokens: up to the context)."""
  return SamplingParams(max_new_tokens=cfg.sampling.max_new_tokens or cfg.sampling.context_limit,
                        temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                        top_k=cfg.sampling.top_k)


def _preflight(cfg: GenerateConfig, loaded: Loaded | None) -> tuple[list[Style], dict]:
  """Every path and setting checked before the corpus is read and long before the model
  loads: (the styles in use, the settings recorded in output.dir/run.json)."""
  from mind_jax._outdir import check_output_dir
  styles = check_style_keys(load_styles(cfg.prompt.styles_file), cfg.prompt.styles)
  cfg.model.check_inference()
  if not loaded:
    check_model_path(cfg)
  check_output_dir(cfg.output.dir, "output.dir", inputs=[cfg.input.source])
  settings = run_settings(cfg, styles, loaded.name if loaded else None)
  claim_output(cfg, settings, dry_run=True, styles=styles,
               tokenizer=tokenizer_name(cfg, loaded.tokenizer if loaded else None))
  return styles, settings


def _join_hosts(cfg: GenerateConfig, loaded: Loaded | None) -> tuple[int, int, EngineGroup]:
  """(this host, hosts, this host's engine group), the runtime flags applied and the slots
  checked against the mesh (the engine would say so too, but only after the model loads)."""
  host, hosts = init_hosts(cfg.distributed)
  group = EngineGroup.of(cfg, host, hosts)
  cfg.runtime.apply()
  if not loaded:
    from mind_jax.engine import slot_ways
    ways = slot_ways(cfg.mesh.build(group.devices()), cfg.mesh.rules)
    if cfg.engine.slots % ways:
      raise MindJaxError(f"engine.slots={cfg.engine.slots} must be a multiple of the mesh's batch "
                         f"axes ({ways} here; set mesh.axes.data or engine.slots)")
  return host, hosts, group


def _plan(cfg: GenerateConfig, tokenizer, styles: list[Style], settings: dict,
          shard: tuple[int, int], sampling: SamplingParams) -> Plan:
  """Pass 1: the units of this shard and their prompt tokens, counted without building a prompt
  (a chunk's prompt is its tokens plus its style's instruction and template, counted once per
  style), so the corpus is tokenized once to plan and once to feed."""
  from mind_jax._outdir import replaces
  # What an earlier run wrote counts as done, unless an overwrite is about to delete it.
  overwriting = cfg.output.overwrite and replaces(cfg.output.dir, "generate", settings)
  done = set() if overwriting else done_ids(cfg.output.dir)
  stats, chunks = ReadStats(), ChunkPlan()
  overhead = {s.key: len(format_prompt(tokenizer, prompt_text("", s, cfg.prompt.order),
                                       cfg.prompt.format)) for s in styles}
  units = prompt_tokens = already = 0
  for doc, doc_chunks in chunked_documents(cfg, tokenizer, stats, shard, chunks):
    for index, tokens in enumerate(tokenizer.count_tokens(doc_chunks)):
      for style in styles:
        units += 1
        prompt_tokens += tokens + overhead[style.key]
        already += unit_id(doc.id, index, style.key) in done
  log.info("plan: %d documents, %d chunks, %d styles -> %d units (%d already done), "
           "~%d prompt tokens; up to %d output tokens each", stats["documents"],
           stats["chunks"], len(styles), units, already, prompt_tokens,
           sampling.max_new_tokens)
  if not stats["documents"]:
    raise MindJaxError(f"input.source={cfg.input.source}: no documents to generate from "
                       f"({stats['empty_documents']} empty, {stats['bad_records']} "
                       "bad records skipped)")
  if not units:
    log.warning("this shard has no units: all %d documents belong to other shards",
                stats["documents"])
  summary = {
      "documents_read": stats["documents"], "empty_documents": stats["empty_documents"],
      "bad_records": stats["bad_records"], "chunks": stats["chunks"],
      "styles": [s.key for s in styles], "units": units, "prompt_tokens": prompt_tokens,
      "already_done": already, "output_dir": cfg.output.dir,
  }
  return Plan(shard, done, chunks, summary, units, already)


def _start_engine(cfg: GenerateConfig, loaded: Loaded, settings: dict, styles: list[Style],
                  host: int, hosts: int) -> Engine:
  """The engine (its KV pool built), then output.dir claimed: a load or a pool that fails
  leaves output.dir as it was. On a slice host 0 alone claims it (with output.overwrite,
  deleting the earlier run's parts), and no host writes a part before: another host's claim
  could delete a part just written."""
  engine = Engine(loaded.model, loaded.tokenizer, engine_config(cfg), mesh=loaded.mesh,
                  rules=cfg.mesh.rules)
  if host == 0:
    claim_output(cfg, settings, dry_run=False, styles=styles,
                 tokenizer=tokenizer_name(cfg, loaded.tokenizer))
  sync_hosts(hosts, "generate: output.dir claimed")
  return engine


def _generate(cfg: GenerateConfig, engine: Engine, loaded: Loaded, styles: list[Style],
              plan: Plan, sampling: SamplingParams, group: EngineGroup) -> dict:
  """Pass 2: the units not yet done through the engine, each result written as it comes.
  Every host of an engine sees every result (the engine's tokens come back replicated); one
  of them writes the engine's part files. Returns the counts."""
  writer = PartWriter(cfg.output.dir, plan.shard[0], cfg.output.format,
                      cfg.output.records_per_part, cfg.output.flush_seconds,
                      enabled=group.rank == 0)
  units: dict[str, Unit] = {}

  def requests():
    for unit in plan_units(cfg, loaded.tokenizer, styles, ReadStats(), plan.shard, plan.chunks,
                           skip=plan.done):
      units[unit.id] = unit
      yield Request(unit.id, unit.prompt_ids, sampling,
                    prefix_len=unit.prefix_len if cfg.engine.share_prefixes else 0)

  todo = plan.units - plan.already
  counts = {"units_written": 0, "output_tokens": 0, "errors": 0}
  last_log = time.monotonic()
  start = time.perf_counter()
  interactive = sys.stderr.isatty()
  with progress_bar(todo, "generate", unit="conv", enabled=group.rank == 0) as bar:
    for result in engine.generate(requests()):
      unit = units.pop(result.id)
      writer.add(_record(unit, result, loaded.name, sampling, cfg.seed))
      counts["units_written"] += 1
      counts["output_tokens"] += result.output_tokens
      counts["errors"] += result.finish_reason == "error"
      rate = counts["output_tokens"] / max(1e-9, time.perf_counter() - start)
      bar.set_postfix_str(f"{rate:.0f} out tok/s", refresh=False)
      bar.update(1)
      if not interactive and time.monotonic() - last_log >= cfg.output.log_seconds:
        last_log = time.monotonic()
        log.info("%d/%d units, %.0f output tokens/s", counts["units_written"], todo, rate)
  writer.flush()
  return counts


def _final_summary(cfg: GenerateConfig, summary: dict, group: EngineGroup) -> dict:
  """The slice's figures (over its engines), rounded, printed and returned."""
  if group.count > 1:
    summary = _over_engines(summary, group)
  seconds = summary["elapsed_seconds"]
  summary.update(elapsed_seconds=round(seconds, 2),
                 output_tokens_per_s=round(summary["output_tokens"] / max(1e-9, seconds), 1))
  _print_summary(summary, f"wrote {summary['units_written']} records to "
                          f"{os.path.abspath(cfg.output.dir)}/")
  return summary


def _over_engines(summary: dict, group: EngineGroup) -> dict:
  """The whole slice's figures on every host: each engine's share summed (its first host
  contributes), what every engine reads alike (the input's counts) and the time taken as the
  largest. The gather is also a barrier: the job ends on every host once every engine has
  written its share, so nothing run after it finds a share half written."""
  import numpy as np
  from jax.experimental import multihost_utils
  counted = [k for k, v in summary.items() if type(v) in (int, float)]
  mine = np.array([summary[k] if group.rank == 0 else 0 for k in counted], np.float64)
  every = np.asarray(multihost_utils.process_allgather(mine))
  alike = ("documents_read", "empty_documents", "bad_records", "elapsed_seconds")
  totals = {k: every[:, i].max() if k in alike else every[:, i].sum() for i, k in enumerate(counted)}
  return {**summary, **{k: type(summary[k])(v) for k, v in totals.items()}, "engines": group.count}


def _record(unit: Unit, result, model_name: str, sampling: SamplingParams, seed: int) -> dict:
  return {
      "id": unit.id, "doc_id": unit.doc_id, "chunk_index": unit.chunk_index,
      "style": unit.style.key, "style_name": unit.style.name, "source": unit.chunk,
      "conversation": result.text or "", "prompt_tokens": result.prompt_tokens,
      "output_tokens": result.output_tokens, "finish_reason": result.finish_reason,
      "error": result.error, "model": model_name, "temperature": sampling.temperature,
      "top_p": sampling.top_p, "top_k": sampling.top_k, "max_new_tokens": sampling.max_new_tokens,
      "seed": seed,
  }


def _print_summary(summary: dict, headline: str) -> None:
  print(headline)
  for key, value in summary.items():
    print(f"  {key}: {value}")
