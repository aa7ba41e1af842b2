"""The recipe's configuration: each stage's section is that command's own schema, and the
variants are named overrides of those sections.

A variant's train section names its data with three symbolic paths, resolved per variant:
  @corpus          the corpus the generator reads (generate.input.source, read as raw text
                   with generate.input.text_field)
  @generated       the variant's generation output (every conversation, unfiltered)
  @conversations   the variant's filter output (the kept conversations)
"""

from __future__ import annotations

import os
import re

import pydantic

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError
from mind_jax.curation import FilterConfig, ReportConfig
from mind_jax.evaluation import EvaluateConfig
from mind_jax.mind import GenerateConfig
from mind_jax.training import TrainConfig

CORPUS, GENERATED, CONVERSATIONS = "@corpus", "@generated", "@conversations"
SYMBOLS = (CORPUS, GENERATED, CONVERSATIONS)

# python -m mind_jax.recipe with no --config runs this file.
DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "default.yaml")
# A config that names no variants compares these two.
DEFAULT_VARIANTS = [
    {"name": "raw", "description": "math text only",
     "train": {"data": {"sources": [{"path": CORPUS, "name": "corpus"}]}}},
    {"name": "mind", "description": "all conversations",
     "train": {"data": {"sources": [{"path": CONVERSATIONS, "name": "conversations"}]}}},
]

# Keys the recipe sets itself (where each stage writes and what it reads): giving one is
# refused rather than ignored.
OWNED_KEYS = {
    "generate": ("output.dir", "output.overwrite", "dry_run", "num_shards", "shard_index"),
    "filter": ("input", "out", "overwrite"),
    "report": ("dir", "out"),
    "train": ("workdir", "overwrite"),
    "evaluate": ("model", "out", "overwrite"),
}
SCHEMAS = {"generate": GenerateConfig, "filter": FilterConfig, "report": ReportConfig,
           "train": TrainConfig, "evaluate": EvaluateConfig}
VARIANT_STAGES = ("generate", "filter", "train")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class VariantSection(config_lib.Section):
  """One arm of the comparison: overrides of the train stage (and of generate or filter
  where the variant needs other conversations)."""

  name: str = config_lib.result(description="names the variant's directories and its report rows")
  description: str = config_lib.result("", description="one line for the report")
  generate: dict = config_lib.result(default_factory=dict, description="overrides of generate")
  filter: dict = config_lib.result(default_factory=dict, description="overrides of filter")
  train: dict = config_lib.result(default_factory=dict, description="overrides of train")


class RecipeConfig(config_lib.Section):
  """generate -> filter -> dataset report -> train each variant (HF export at its end) ->
  evaluate each -> compare, in one work dir."""

  workdir: str = config_lib.speed("mind_recipe", description="the experiment's directory")
  experiment: str = config_lib.result(
      "mind", description="the experiment's name: a workdir holding another one is refused")
  baseline: str | None = config_lib.result(
      None, description="variant the others are compared with (default: the first)")
  generate: GenerateConfig = pydantic.Field(default_factory=GenerateConfig)
  filter: FilterConfig = pydantic.Field(default_factory=FilterConfig)
  report: ReportConfig = pydantic.Field(default_factory=ReportConfig)
  train: TrainConfig = pydantic.Field(default_factory=TrainConfig)
  evaluate: EvaluateConfig = pydantic.Field(default_factory=EvaluateConfig)
  variants: list[VariantSection] = pydantic.Field(
      default_factory=lambda: [VariantSection(**v) for v in DEFAULT_VARIANTS],
      description="named overrides of the generate, filter and train sections; data paths "
      "@corpus, @generated and @conversations name the variant's own inputs")

  @pydantic.model_validator(mode="after")
  def _check(self):
    names = [v.name for v in self.variants]
    if not names:
      raise ValueError("variants: the recipe needs at least one variant")
    for index, name in enumerate(names):
      if not NAME.fullmatch(name):
        raise ValueError(f"variants[{index}].name={name!r}: use letters, digits and _ . + - "
                         "(it names directories)")
      if name in names[:index]:
        raise ValueError(f"variants[{index}].name={name!r}: two variants with the same name "
                         f"(variants[{names.index(name)}] too); names must be unique")
    if self.baseline is not None and self.baseline not in names:
      raise ValueError(f"baseline={self.baseline!r}: not a variant ({', '.join(names)})")
    for stage, keys in OWNED_KEYS.items():
      _refuse_owned(stage, getattr(self, stage).model_dump(), keys, stage)
    return self

  @property
  def baseline_name(self) -> str:
    return self.baseline or self.variants[0].name


def _lookup(data: dict, dotted: str):
  node = data
  for key in dotted.split("."):
    if not isinstance(node, dict) or key not in node:
      return _MISSING
    node = node[key]
  return node


_MISSING = object()


def _refuse_owned(stage: str, data: dict, keys, where: str, defaults: dict | None = None) -> None:
  """`data` (a dump or a variant's override dict) must leave the recipe's own keys alone."""
  defaults = SCHEMAS[stage]().model_dump() if defaults is None else defaults
  for key in keys:
    value = _lookup(data, key)
    if value is not _MISSING and value != _lookup(defaults, key):
      raise ValueError(f"{where}.{key}: set by the recipe (each stage's directories are its "
                       "own); leave it out")


def stage_config(cfg: RecipeConfig, stage: str, variant: VariantSection | None = None):
  """The stage's section with the variant's overrides applied, validated by its own schema:
  a bad key names the variant."""
  base = getattr(cfg, stage).model_dump()
  overrides = getattr(variant, stage, {}) if variant is not None else {}
  if not overrides:
    return getattr(cfg, stage)
  where = f"variants[{cfg.variants.index(variant)}] ({variant.name}).{stage}"
  if not isinstance(overrides, dict):
    raise MindJaxError(f"{where}: must be a mapping of {stage} keys")
  try:
    _refuse_owned(stage, overrides, OWNED_KEYS[stage], where, defaults=base)
  except ValueError as e:
    raise MindJaxError(str(e)) from e
  try:
    return SCHEMAS[stage].model_validate(config_lib.deep_merge(base, overrides))
  except pydantic.ValidationError as e:
    error = e.errors()[0]
    key = ".".join(str(p) for p in error["loc"])
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
    raise MindJaxError(f"{where}.{key}: {message.removeprefix('Value error, ')}") from e


def load(path: str | None = DEFAULT_CONFIG, overrides=()) -> RecipeConfig:
  """The recipe of `path` (default: the embedded one) with key=value `overrides`."""
  return config_lib.load_config(RecipeConfig, path, list(overrides))
