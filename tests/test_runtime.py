"""The persistent compilation cache: on by default, so a rerun of a job compiles nothing."""

import os
import subprocess
import sys

import pytest

from mind_jax import config
from mind_jax.mind import GenerateConfig


def test_the_cache_is_on_by_default_and_off_with_one_key():
  assert config.load_config(GenerateConfig).runtime.compile_cache == "~/.cache/mind_jax/jax"
  assert config.load_config(GenerateConfig, None, ["runtime.compile_cache=null"]) \
      .runtime.compile_cache is None


@pytest.mark.slow
def test_a_rerun_of_generate_loads_every_program_from_the_cache(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  cache = tmp_path / "cache"

  def generate(out):
    done = subprocess.run(
        [sys.executable, "-m", "mind_jax.generate", f"output.dir={tmp_path / out}",
         "input.limit=1", "prompt.styles=[debate]", "sampling.max_new_tokens=4",
         f"runtime.compile_cache={cache}"], env=env, capture_output=True, text=True, check=True)
    assert "decode program for 8 slots, attention window" in done.stderr  # first calls logged
    return sorted(os.listdir(cache))

  first = generate("first")
  assert first  # the first run compiled, and kept what it compiled
  assert generate("second") == first  # the second compiled nothing new
