"""The training job's configuration, and the checks it passes before anything is built."""

from __future__ import annotations

import os
from typing import Literal

import pydantic

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError
from mind_jax.data import (DataSection, Framing, Mixture, SourceSection, host_dataset,
                           resolve_mixture)


class OptimizerSection(config_lib.Section):
  """AdamW with warmup and a decay schedule, global-norm clipping."""

  learning_rate: float = config_lib.result(3e-4, gt=0, description="peak learning rate")
  end_learning_rate: float = config_lib.result(
      3e-5, ge=0, description="learning rate at the last step (cosine and linear)")
  schedule: Literal["cosine", "linear", "constant"] = config_lib.result(
      "cosine", description="decay after the warmup")
  warmup_steps: int = config_lib.result(10, ge=0, description="linear warmup from 0")
  b1: float = config_lib.result(0.9, ge=0, lt=1, description="AdamW beta1")
  b2: float = config_lib.result(0.95, ge=0, lt=1, description="AdamW beta2")
  eps: float = config_lib.result(1e-8, gt=0, description="AdamW epsilon")
  weight_decay: float = config_lib.result(
      0.1, ge=0, description="decoupled weight decay; never on norm scales")
  decay_embeddings: bool = config_lib.result(
      True, description="decay the token embeddings and the output head too")
  clip_norm: float | None = config_lib.result(
      1.0, gt=0, description="clip gradients to this global norm (null: no clipping)")

  def build(self, steps: int):
    """The optax transformation of a `steps`-long run (see training/_optim.py): the one place
    the optimizer is made; the rate each update used is in its state (`applied_learning_rate`)."""
    from mind_jax.training._optim import optimizer
    return optimizer(self, steps)


class CheckpointSection(config_lib.Section):
  """Orbax checkpoints of the whole run (weights, optimizer, data position, step)."""

  every: int = config_lib.speed(100, ge=1, description="save every N steps (and at the end)")
  keep: int = config_lib.speed(3, ge=1, description="newest checkpoints kept")
  async_save: bool = config_lib.speed(
      True, description="write in the background while training goes on")


class ExportSection(config_lib.Section):
  """Hugging Face weights of the trained model."""

  every: int = config_lib.speed(
      0, ge=0, description="also export WORKDIR/hf-stepN every N steps (0: only at the end)")
  dtype: Literal["float32", "bfloat16", "float16"] | None = config_lib.result(
      None, description="dtype of the exported weights (default: the model's param_dtype)")


class EvalSection(config_lib.Section):
  """A held-out loss during training."""

  every: int = config_lib.result(0, ge=0, description="every N steps (0: never)")
  sources: list[SourceSection] = config_lib.result(
      default_factory=list, description="held-out data, as data.sources (read in order, the "
      "same batches each time)")
  batches: int = config_lib.result(4, ge=1, description="batches per evaluation")

  @pydantic.model_validator(mode="after")
  def _sources_given(self):
    if self.every and not self.sources:
      raise ValueError("eval.every is set but eval.sources is empty; name the held-out data")
    return self


class TrainConfig(config_lib.Section):
  model: config_lib.ModelSection = pydantic.Field(
      default_factory=lambda: config_lib.ModelSection(preset="tiny"))
  data: DataSection = pydantic.Field(default_factory=lambda: DataSection(seq_len=256))
  mesh: config_lib.MeshSection = pydantic.Field(
      default_factory=lambda: config_lib.MeshSection(rules="train"))
  runtime: config_lib.RuntimeSection = pydantic.Field(default_factory=config_lib.RuntimeSection)
  optimizer: OptimizerSection = pydantic.Field(default_factory=OptimizerSection)
  checkpoint: CheckpointSection = pydantic.Field(default_factory=CheckpointSection)
  export: ExportSection = pydantic.Field(default_factory=ExportSection)
  eval: EvalSection = pydantic.Field(default_factory=EvalSection)
  workdir: str = config_lib.speed(
      "mind_train", description="checkpoints, metrics, TensorBoard logs and the HF export")
  batch_size: int = config_lib.result(8, ge=1, description="sequences per step, over all hosts")
  microbatches: int = config_lib.speed(
      1, ge=1, description="gradient accumulation: each step runs batch_size / microbatches "
      "sequences at a time (same result, less activation memory)")
  steps: int = config_lib.result(200, ge=1, description="optimizer steps of the run")
  z_loss: float = config_lib.result(
      0.0, ge=0, description="weight of the squared log-partition term (PaLM's z-loss; 0: off)")
  loss_chunk: int = config_lib.speed(
      512, ge=0, description="positions of a row whose output-head logits exist at a time: "
      "the loss and its gradient go through the head a chunk at a time, never holding the "
      "whole [tokens, vocab] logits (same result; 0: the whole row at once)")
  seed: int = config_lib.result(0, description="seeds the data order (and a preset's init)")
  peak_flops: float | None = config_lib.speed(
      None, gt=0, description="peak FLOP/s of one device, for MFU (default: the chip's bf16 "
      "peak for TPUs and NVIDIA GPUs; none for CPUs)")
  distributed: config_lib.OnOffAuto = config_lib.speed(
      "auto",
      description="multi-host slices: one program over every host's chips, each host reading "
      "its own share of the data (auto: when the TPU runtime lists several hosts)")
  overwrite: bool = config_lib.speed(
      False, description="when workdir holds a run with other settings, delete what that run "
      "wrote and start afresh; off: refuse")

  @pydantic.model_validator(mode="after")
  def _microbatches_divide(self):
    if self.batch_size % self.microbatches:
      raise ValueError(f"batch_size={self.batch_size} is not divisible by "
                       f"microbatches={self.microbatches}")
    return self

  @property
  def tokens_per_step(self) -> int:
    return self.batch_size * self.data.seq_len

  @property
  def budget_tokens(self) -> int:
    """Token positions the run trains on (padding included)."""
    return self.steps * self.tokens_per_step


def model_config(cfg: TrainConfig):
  """The architecture trained (config.json or preset, no weights), with the run's dtypes, scan
  and remat: the loader's rule, so the train state matches what it loads."""
  from mind_jax.ckpts import architecture
  cfg.model.check_training()
  return architecture(cfg.model)


def framing_tokenizer(cfg: TrainConfig):
  """The tokenizer training frames documents with: data.tokenizer, else the model's (the
  checkpoint's files; the byte-level tokenizer for a preset), checked against the model."""
  from mind_jax.text import BYTE_TOKENIZER, load_tokenizer
  model = model_config(cfg)
  if cfg.data.seq_len > model.max_position_embeddings:
    raise MindJaxError(f"data.seq_len={cfg.data.seq_len}: above the model's limit of "
                       f"{model.max_position_embeddings} positions (max_position_embeddings)")
  name, key = cfg.data.tokenizer, "data.tokenizer"
  if name is None:
    from mind_jax.text import has_tokenizer_files
    name, key = cfg.model.path or BYTE_TOKENIZER, "model.path"
    if cfg.model.path and not has_tokenizer_files(cfg.model.path):
      raise MindJaxError(f"model.path={cfg.model.path}: no tokenizer files; set data.tokenizer")
  try:
    tokenizer = load_tokenizer(name if name == BYTE_TOKENIZER else os.path.expanduser(name))
  except MindJaxError as e:
    raise MindJaxError(f"{key}: {e}") from e
  if tokenizer.vocab_size > model.vocab_size:
    raise MindJaxError(f"{key}: the tokenizer has {tokenizer.vocab_size} ids, the model's "
                       f"embedding only {model.vocab_size}")
  return tokenizer


def data_pipeline(cfg: TrainConfig, host: int = 0, hosts: int = 1, tokenizer=None,
                  held_out: bool = False):
  """(mixture, framing, this host's batch dataset), every input checked first. `held_out`:
  the eval sources instead, read in order (no shuffle window)."""
  if held_out:
    data = cfg.data.model_copy(update={"sources": cfg.eval.sources, "shuffle_window": 1,
                                       "workers": 0})
    cfg = cfg.model_copy(update={"data": data})
  tokenizer = tokenizer or framing_tokenizer(cfg)
  mixture: Mixture = resolve_mixture(cfg.data)
  framing = Framing(tokenizer, cfg.data.add_bos, cfg.data.add_eos)
  dataset = host_dataset(cfg.data, mixture, framing, batch_size=cfg.batch_size, seed=cfg.seed,
                         host=host, hosts=hosts)
  return mixture, framing, dataset
