"""The end-to-end MIND experiment: generate, filter, train variants, evaluate, compare."""

from mind_jax.experiment._config import (CONVERSATIONS, CORPUS, DEFAULT_CONFIG, GENERATED,
                                         OWNED_KEYS, RecipeConfig, VariantSection, load,
                                         stage_config)
from mind_jax.experiment._run import run
from mind_jax.experiment._stages import Stage, decide, plan

__all__ = ["CONVERSATIONS", "CORPUS", "DEFAULT_CONFIG", "GENERATED", "OWNED_KEYS", "RecipeConfig",
           "Stage", "VariantSection", "decide", "load", "plan", "run", "stage_config"]
