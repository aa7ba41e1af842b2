"""The data section of a training config, and the mixture it resolves to."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pydantic

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError
from mind_jax.data._sources import Source, SourceSection, resolve_source


class DataSection(config_lib.Section):
  """What training reads: sources and weights, tokenization, packing, shuffling."""

  sources: list[SourceSection] = pydantic.Field(
      default_factory=lambda: [SourceSection(path="champ")],
      description="inputs with their weights (a list of source sections; see `mind_jax.mix "
      "--help`)")
  seq_len: int = config_lib.result(4096, ge=2, description="tokens per training sequence")
  packing: Literal["first_fit", "concat"] = config_lib.result(
      "first_fit", description="first_fit: whole documents per sequence (longer ones split "
      "into seq_len pieces), padding the rest; concat: one stream cut every seq_len tokens, "
      "no padding, documents cut at sequence ends")
  pack_bins: int = config_lib.result(
      256, ge=1, description="first_fit: sequences filled side by side; more bins, less padding")
  shuffle_window: int = config_lib.result(
      10_000, ge=1, description="documents (per source and host) shuffled together; 1: off")
  tokenizer: str | None = config_lib.result(
      None, description="tokenizer dir or 'byte' (default: the model's)")
  add_bos: bool = config_lib.result(True, description="start each document with the BOS id")
  add_eos: bool = config_lib.result(True, description="end each document with the EOS id")
  shards: int | None = config_lib.result(
      None, ge=1, description="independent pipelines the global batch is made of, each reading "
      "its share of every source (default: one per host). Fixed, the data a run sees does not "
      "depend on how many hosts read it; a multiple of the host count")
  workers: int = config_lib.speed(
      0, ge=0, description="worker processes per host reading and packing (0: in the training "
      "process; the Rust tokenizer already uses every core); changing it changes the order")
  prefetch: int = config_lib.speed(2, ge=0, description="batches placed on the devices ahead")

  @pydantic.model_validator(mode="after")
  def _weights(self):
    if not self.sources:
      raise ValueError("data.sources is empty; name at least one source")
    if not sum(s.weight for s in self.sources) > 0:
      raise ValueError("data.sources: the weights sum to 0; give a source a positive weight")
    return self


@dataclasses.dataclass(frozen=True)
class Mixture:
  """The resolved sources of a data section (those with a positive weight) and their shares."""

  sources: tuple[Source, ...]
  shares: tuple[float, ...]


def resolve_mixture(data: DataSection) -> Mixture:
  """Checks every source (files exist, text field present) before any work; one line each."""
  picked = [(i, s) for i, s in enumerate(data.sources) if s.weight > 0]
  sources = tuple(resolve_source(s, f"data.sources[{i}]") for i, s in picked)
  names = [s.name for s in sources]
  for name in names:
    if names.count(name) > 1:
      raise MindJaxError(f"data.sources: two sources are named {name!r}; give one a name")
  total = sum(s.weight for _, s in picked)
  return Mixture(sources, tuple(s.weight / total for _, s in picked))
