"""The MIND generation job: seven-style conversations from math text, exactly once."""

from mind_jax.mind._pipeline import GenerateConfig, Unit, plan_units, run
from mind_jax.mind._styles import Style, format_prompt, load_styles, prompt_text
from mind_jax.data import part_files
from mind_jax.mind._writer import PartWriter, done_ids, read_records

__all__ = ["GenerateConfig", "PartWriter", "Style", "Unit", "done_ids", "format_prompt",
           "load_styles", "part_files", "plan_units", "prompt_text", "read_records", "run"]
