"""Every shipped config that names a TPU target (a `# plan:` line) fits that slice, compiled
by the real TPU compiler with the kernels the run uses. Apart from test_plan.py so that these
long compiles run beside the rest of the suite.

Compiling these programs takes the TPU compiler about 15 minutes of a CPU; their results are
kept in tests/tpu_compiles/ by the plan's compile cache, whose key is the program's whole
lowered text with the jax, jaxlib and libtpu versions, the XLA flags and the devices
(mind_jax/planning/_cache.py). A program this repository's code lowers differently, or another
compiler version, misses and is compiled here as before (and its result written there: commit
it, and delete the entries no test reads any more, to keep the suite fast)."""

import importlib.util
import json
import os
import pathlib
import re
import shlex

import pytest

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # tests may run beside another libtpu user

from mind_jax.plan import plan  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="the TPU compiler (libtpu) is not installed: "
                                  "pip install 'mind_jax[tpu]'")


def _shipped_plans():
  """(config, plan arguments) of every shipped config that names a TPU target."""
  found = []
  for path in sorted([*ROOT.glob("configs/*.yaml"), *ROOT.glob("tpu/configs/*.yaml")]):
    for line in path.read_text().splitlines():
      match = re.match(r"#\s*plan:\s*(.*)", line)
      if match:
        found.append(pytest.param(str(path.relative_to(ROOT)), shlex.split(match.group(1)),
                                  id=f"{path.name}:{match.group(1).split()[1]}"))
  return found


RECORDED = ROOT / "tests" / "tpu_compiles"


@pytest.fixture(scope="module", autouse=True)
def _say_what_was_compiled():
  """Names the programs compiled here rather than read (each costs a CI run up to minutes)."""
  before = set(os.listdir(RECORDED)) if RECORDED.is_dir() else set()
  yield
  new = sorted(set(os.listdir(RECORDED)) - before) if RECORDED.is_dir() else []
  if new:
    import warnings
    warnings.warn(f"{len(new)} shipped-config programs were compiled, not read from "
                  f"{RECORDED.relative_to(ROOT)}: commit {', '.join(new)} (and delete the "
                  "entries no shipped config reads any more)")


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("config,flags", _shipped_plans())
def test_every_shipped_tpu_config_fits_its_target(config, flags):
  from mind_jax.plan import _parser
  key = _programs_key(config, flags)
  if key not in _PLANNED:  # a recipe's stage is often a shipped job config: compiled once
    args = _parser().parse_args(["--config", str(ROOT / config), *flags, "--no-exact-cost",
                                 "--cache", str(RECORDED)])
    args.compare_modes = False  # the config's own mode fits; the other's is another test's
    _PLANNED[key] = plan(args)
  out = _PLANNED[key]
  assert out["fits"], (config, out.get("memory"), out.get("advice"))
  assert out["model"]["attention"] == "tpu"  # planned with the kernels the run uses


_PLANNED = {}


def _programs_key(config, flags):
  """What the compiled programs depend on: the slice, the architecture, and the job's config
  less where it reads and writes (and what only the training loop, not its step, reads)."""
  from mind_jax.plan import _parser, job_kind, load_job
  args = _parser().parse_args(["--config", str(ROOT / config), *flags])
  job = job_kind(args.config, args.job)
  cfg, _ = load_job(args.config, args.overrides, job, args.preset, [], args.variant)
  settings = cfg.model_dump(mode="json", exclude={"input", "output", "workdir", "eval",
                                                  "checkpoint", "export"})
  settings.get("data", {}).pop("sources", None)
  return json.dumps([job, args.topology, args.num_slices, args.preset, settings], sort_keys=True)
