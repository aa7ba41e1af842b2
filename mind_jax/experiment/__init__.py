"""The end-to-end MIND experiment: generate, filter, train variants, evaluate, compare."""

from mind_jax.experiment._config import (CONVERSATIONS, CORPUS, DEFAULT_CONFIG, GENERATED,
                                         RecipeConfig, VariantSection, load, stage_config)
from mind_jax.experiment._run import run
from mind_jax.experiment._stages import Stage, plan

__all__ = ["CONVERSATIONS", "CORPUS", "DEFAULT_CONFIG", "GENERATED", "RecipeConfig", "Stage",
           "VariantSection", "load", "plan", "run", "stage_config"]
