"""The generation job's configuration: its sections and their checks."""

from __future__ import annotations

from typing import Literal

import pydantic

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError


class InputSection(config_lib.Section):
  source: str = config_lib.source(
      "champ", description="'champ' (the champ-dataset package), a .jsonl[.gz|.bz2|.xz] or "
      ".parquet file, a directory or a glob of them, a Hugging Face datasets save_to_disk "
      "directory, or tfds:name[/config][:split]")
  text_field: str = config_lib.result("text", description="field holding the document text")
  id_field: str | None = config_lib.result("id", description="field holding the document id "
                                           "(default when missing: file:line)")
  split: str = config_lib.source("train", description="split of a datasets DatasetDict directory "
                                 "or of a tfds: source without one")
  data_dir: str | None = config_lib.source(
      None, description="TFDS data directory for tfds: sources")
  on_bad_record: Literal["error", "skip"] = config_lib.source(
      "error", description="error: stop naming file and line; skip: count")
  limit: int | None = config_lib.source(3, ge=1, description="read at most this many documents")


class ChunkSection(config_lib.Section):
  max_tokens: int = config_lib.result(500, ge=16, description="chunk size in generator tokens")
  min_tail_tokens: int = config_lib.result(
      50, ge=0, description="shorter tails join the chunk before")


class PromptSection(config_lib.Section):
  styles: list[str] | None = config_lib.result(None, description="style keys (default: all)")
  styles_file: str | None = config_lib.result(
      None, description="YAML file of extra/replacement styles")
  order: Literal["context_first", "instruction_first"] = config_lib.result(
      "context_first", description="where the chunk goes relative to the instruction")
  format: Literal["chat", "raw"] = config_lib.result(
      "chat", description="chat: the checkpoint's chat template; raw: base model")


class SamplingSection(config_lib.Section):
  temperature: float = config_lib.result(1.0, ge=0.0)
  top_p: float = config_lib.result(0.9, gt=0.0, le=1.0)
  top_k: int = config_lib.result(0, ge=0)
  max_new_tokens: int | None = config_lib.result(
      48, ge=1, description="cap per conversation (null: up to the context limit)")
  context_limit: int = config_lib.result(4096, ge=64, description="prompt + output tokens")


class EngineSection(config_lib.Section):
  slots: int = config_lib.speed(8, ge=1, description="the most sequences decoding at once")
  steps_per_call: int = config_lib.speed(8, ge=1)
  page_size: int | None = config_lib.speed(
      None, ge=1, description="tokens per KV-cache page: a multiple of 8 dividing "
      "sampling.context_limit (default 64, or the largest power of two below that divides it)")
  kv_pages: int | None = config_lib.speed(
      None, ge=1, description="pages in the KV pool over all chips (default: from kv_memory)")
  kv_memory: str | None = config_lib.speed(
      None, description="KV pool per chip, e.g. 20GiB or 500MB (default: 90% of the memory "
      "left after the weights, up to every slot at the context limit)")
  kv_dtype: Literal["int8"] | None = config_lib.kv_dtype_field()
  admission: Literal["projected", "eager"] = config_lib.speed(
      "projected", description="when a request starts: projected, once the pages its shard's "
      "running sequences will need (each grown to the mean length of the conversations ended "
      "so far, or to the cap before any has) still fit beside its prompt's, so the pool "
      "rarely runs dry; eager, once its prompt's pages are free (more sequences at once, more "
      "preempted and recomputed when the pool runs dry)")
  share_prefixes: bool = config_lib.speed(
      True, description="prefill the prompt tokens a chunk's styles have in common once and "
      "share their KV pages (off: every prompt prefilled whole; the records are the same)")

  @pydantic.field_validator("kv_memory")
  @classmethod
  def _kv_memory(cls, value):
    if value is not None:
      from mind_jax.ckpts import parse_size
      try:
        parse_size(value)
      except MindJaxError as error:
        raise ValueError(str(error)) from error
    return value
  hosts: int = config_lib.speed(
      1, description="hosts one engine spans on a multi-host slice: 1, an engine per host on "
      "its own chips (the fastest where the model fits a host); -1, one engine over every "
      "host's chips (a model too large for a host: 70B on v5e or v4); k, engines of k hosts "
      "side by side, each on its own share of the documents")

  @pydantic.field_validator("hosts")
  @classmethod
  def _hosts(cls, value):
    if value == 0 or value < -1:
      raise ValueError("must be -1 (every host) or a positive number of hosts")
    return value


class OutputSection(config_lib.Section):
  dir: str = config_lib.speed("mind_output", description="output directory")
  format: Literal["jsonl", "parquet"] = config_lib.speed("jsonl")
  records_per_part: int = config_lib.speed(500, ge=1)
  flush_seconds: float = config_lib.speed(
      300.0, gt=0, description="write a part at least this often")
  log_seconds: float = config_lib.speed(300.0, gt=0, description="progress log line interval")
  overwrite: bool = config_lib.speed(
      False, description="when dir holds a run with other settings (model, dtype, seed, "
      "sampling, prompts, chunking, input fields), delete the files that run wrote and start "
      "afresh; off: refuse")


class GenerateConfig(config_lib.Section):
  input: InputSection = pydantic.Field(default_factory=InputSection)
  chunking: ChunkSection = pydantic.Field(default_factory=ChunkSection)
  prompt: PromptSection = pydantic.Field(default_factory=PromptSection)
  sampling: SamplingSection = pydantic.Field(default_factory=SamplingSection)
  model: config_lib.ModelSection = pydantic.Field(
      default_factory=lambda: config_lib.ModelSection(preset="tiny"))
  engine: EngineSection = pydantic.Field(default_factory=EngineSection)
  mesh: config_lib.MeshSection = pydantic.Field(default_factory=config_lib.MeshSection)
  runtime: config_lib.RuntimeSection = pydantic.Field(default_factory=config_lib.RuntimeSection)
  output: OutputSection = pydantic.Field(default_factory=OutputSection)
  seed: int = config_lib.result(0, description="global seed; each unit's key derives from it")
  num_shards: int = config_lib.speed(1, ge=1, description="independent jobs splitting the work")
  shard_index: int = config_lib.speed(0, ge=0, description="which of them this job is")
  dry_run: bool = config_lib.speed(False, description="print the plan and token estimate only")
  distributed: config_lib.OnOffAuto = config_lib.speed(
      "auto",
      description="multi-host slices: start JAX's distributed runtime (auto: when the TPU "
      "runtime lists several hosts); engines then span engine.hosts hosts each")

  @pydantic.model_validator(mode="after")
  def _shard_in_range(self):
    if self.shard_index >= self.num_shards:
      raise ValueError(f"shard_index={self.shard_index} must be < num_shards={self.num_shards}")
    if self.engine.page_size is not None:
      from mind_jax.engine import check_page_size
      try:
        check_page_size(self.engine.page_size, self.sampling.context_limit)
      except MindJaxError as error:
        raise ValueError(str(error)) from error
    return self
