"""The MIND generation job: seven-style conversations from math text, exactly once."""

from mind_jax.mind._config import GenerateConfig
from mind_jax.mind._pipeline import (PAPER_MEAN_OUTPUT_TOKENS, Loaded, Unit, check_model_path,
                                     engine_config, load_generator, plan_units, run)
from mind_jax.mind._styles import (Style, check_style_keys, format_prompt, load_styles,
                                   prompt_text)
from mind_jax.data import part_files
from mind_jax.mind._writer import PartWriter, done_ids, read_records

__all__ = ["GenerateConfig", "Loaded", "PAPER_MEAN_OUTPUT_TOKENS", "PartWriter", "Style", "Unit",
           "check_model_path", "check_style_keys", "done_ids", "engine_config", "format_prompt",
           "load_generator", "load_styles", "part_files", "plan_units", "prompt_text",
           "read_records", "run"]
