"""The training job's configuration, and the checks it passes before anything is built."""

from __future__ import annotations

import os

import pydantic

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError
from mind_jax.data._mixture import DataSection, Framing, Mixture, resolve_mixture, training_dataset


class TrainConfig(config_lib.Section):
  model: config_lib.ModelSection = pydantic.Field(
      default_factory=lambda: config_lib.ModelSection(preset="tiny"))
  data: DataSection = pydantic.Field(default_factory=lambda: DataSection(seq_len=256))
  mesh: config_lib.MeshSection = pydantic.Field(
      default_factory=lambda: config_lib.MeshSection(rules="train"))
  batch_size: int = pydantic.Field(8, ge=1, description="sequences per step, over all hosts")
  steps: int = pydantic.Field(200, ge=1, description="optimizer steps of the run")
  seed: int = pydantic.Field(0, description="seeds the data order (and the model's init)")
  distributed: str = pydantic.Field(
      "auto", pattern="^(auto|on|off)$",
      description="multi-host slices: one program over every host's chips, each host reading "
      "its own share of the data (auto: when the TPU runtime lists several hosts)")

  @property
  def tokens_per_step(self) -> int:
    return self.batch_size * self.data.seq_len

  @property
  def budget_tokens(self) -> int:
    """Token positions the run trains on (padding included)."""
    return self.steps * self.tokens_per_step


def _model_config(cfg: TrainConfig):
  from mind_jax.nn import preset, read_hf_config
  if cfg.model.path:
    from mind_jax.ckpts._pretrained import require_model_dir
    require_model_dir(cfg.model.path, "model.path")
    return read_hf_config(cfg.model.path)
  return preset(cfg.model.preset or "tiny")


def load_tokenizer_for(cfg: TrainConfig):
  """The tokenizer training frames documents with: data.tokenizer, else the model's (the
  checkpoint's files; the byte-level tokenizer for a preset), checked against the model."""
  from mind_jax.text import BYTE_TOKENIZER, load_tokenizer
  model = _model_config(cfg)
  if cfg.data.seq_len > model.max_position_embeddings:
    raise MindJaxError(f"data.seq_len={cfg.data.seq_len}: above the model's limit of "
                       f"{model.max_position_embeddings} positions (max_position_embeddings)")
  name, key = cfg.data.tokenizer, "data.tokenizer"
  if name is None:
    from mind_jax.text._tokenizer import has_tokenizer_files
    name, key = cfg.model.path or BYTE_TOKENIZER, "model.path"
    if cfg.model.path and not has_tokenizer_files(cfg.model.path):
      raise MindJaxError(f"model.path={cfg.model.path}: no tokenizer files; set data.tokenizer")
  try:
    tokenizer = load_tokenizer(name if name == BYTE_TOKENIZER else os.path.expanduser(name))
  except MindJaxError as e:
    raise MindJaxError(f"{key}: {e}") from None
  if tokenizer.vocab_size > model.vocab_size:
    raise MindJaxError(f"{key}: the tokenizer has {tokenizer.vocab_size} ids, the model's "
                       f"embedding only {model.vocab_size}")
  return tokenizer


def data_pipeline(cfg: TrainConfig, host: int = 0, hosts: int = 1, tokenizer=None):
  """(mixture, framing, this host's batch dataset), every input checked first."""
  if cfg.batch_size % hosts:
    raise MindJaxError(f"batch_size={cfg.batch_size}: not divisible by the {hosts} hosts, "
                       "each of which loads its own share")
  tokenizer = tokenizer or load_tokenizer_for(cfg)
  mixture: Mixture = resolve_mixture(cfg.data)
  framing = Framing(tokenizer, cfg.data.add_bos, cfg.data.add_eos)
  dataset = training_dataset(cfg.data, mixture, framing, batch_size=cfg.batch_size // hosts,
                             seed=cfg.seed, shard=(host, hosts))
  return mixture, framing, dataset
