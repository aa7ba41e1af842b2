"""The end-to-end MIND experiment: generate, filter, train variants, evaluate, compare."""

from mind_jax.experiment._config import (CONVERSATIONS, CORPUS, GENERATED, RecipeConfig,
                                         VariantSection, stage_config)
from mind_jax.experiment._run import run
from mind_jax.experiment._stages import Stage, plan

__all__ = ["CONVERSATIONS", "CORPUS", "GENERATED", "RecipeConfig", "Stage", "VariantSection",
           "plan", "run", "stage_config"]
