"""YAML + key=value configuration: typed, validated, errors that name the key."""

import pytest

from mind_jax import MindJaxError, config
from mind_jax.smoke import SmokeConfig


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path):
  path = tmp_path / "run.yaml"
  path.write_text("model:\n  dtype: bfloat16\nmax_new_tokens: 8\n")
  cfg = config.load_config(SmokeConfig, str(path), ["max_new_tokens=3", "mesh.axes.tensor=2",
                                                     "prompt=x = 1"])
  assert cfg.model.dtype == "bfloat16" and cfg.model.preset == "tiny"
  assert cfg.max_new_tokens == 3
  assert cfg.prompt == "x = 1"
  # Overriding one mesh axis keeps the others.
  assert cfg.mesh.axes == {"data": -1, "fsdp": 1, "tensor": 2}


def test_unknown_key_is_named_with_its_source(tmp_path):
  path = tmp_path / "run.yaml"
  path.write_text("model:\n  dtpye: bfloat16\n")
  with pytest.raises(MindJaxError, match=r"run.yaml: model.dtpye: unknown key"):
    config.load_config(SmokeConfig, str(path))
  with pytest.raises(MindJaxError, match=r"^command line: mesh.rulez: unknown key$"):
    config.load_config(SmokeConfig, None, ["mesh.rulez=train"])


def test_wrong_type_and_bad_choice():
  with pytest.raises(MindJaxError, match=r"command line: max_new_tokens: .*integer.*'many'"):
    config.load_config(SmokeConfig, None, ["max_new_tokens=many"])
  with pytest.raises(MindJaxError, match=r"command line: model.dtype: Input should be 'float32'"):
    config.load_config(SmokeConfig, None, ["model.dtype=float8"])
  with pytest.raises(MindJaxError, match=r"not key=value"):
    config.load_config(SmokeConfig, None, ["max_new_tokens"])


def test_invalid_yaml_names_file_and_line(tmp_path):
  path = tmp_path / "bad.yaml"
  path.write_text("seed: 1\nmodel: [unclosed\n")
  with pytest.raises(MindJaxError, match=r"bad.yaml: line \d+ invalid YAML"):
    config.load_config(SmokeConfig, str(path))
  with pytest.raises(MindJaxError, match=r"does not exist"):
    config.load_config(SmokeConfig, str(tmp_path / "missing.yaml"))


def test_repository_configs_validate():
  """Every file in configs/ against the schema of the job its name starts with."""
  import glob
  import os
  from mind_jax.curation import FilterConfig
  from mind_jax.mind import GenerateConfig
  from mind_jax.experiment import RecipeConfig, plan
  from mind_jax.training import TrainConfig
  schemas = {"smoke": SmokeConfig, "generate": GenerateConfig, "filter": FilterConfig,
             "train": TrainConfig, "recipe": RecipeConfig}
  root = os.path.join(os.path.dirname(__file__), "..", "configs")
  files = sorted(glob.glob(os.path.join(root, "*.yaml")))
  assert {os.path.basename(f).split("-")[0].split(".")[0] for f in files} == set(schemas)
  for path in files:
    cfg = config.load_config(schemas[os.path.basename(path).split("-")[0].split(".")[0]], path)
    if isinstance(cfg, RecipeConfig):
      plan(cfg)  # the variants' overrides, validated against their stages' schemas


def test_help_shows_each_jobs_own_defaults_of_a_shared_section():
  from mind_jax.convert import ConvertConfig
  from mind_jax.sample import SampleConfig
  sample_help, convert_help = config.describe(SampleConfig), config.describe(ConvertConfig)
  assert any(line.startswith("  model.dtype = 'bfloat16'") for line in sample_help)
  assert any(line.startswith("  mesh.axes = {'data': 1}") for line in sample_help)
  assert any(line.startswith("  mesh.rules = 'train'") for line in convert_help)


def test_a_flag_and_a_key_for_one_setting_must_agree():
  import argparse
  args = argparse.Namespace(limit=5)
  flagged = config.flag_overrides(args, {"limit": "input.limit"})
  assert config.combine_overrides(["input.limit=5", "seed=1"], flagged)[-1] == "input.limit=5"
  with pytest.raises(MindJaxError, match=r"^command line: --limit sets input.limit, and so does "
                     r"input.limit=7; give one$"):
    config.combine_overrides(["input.limit=7"], flagged)


def _sections():
  """Every config section class of every job, found through the job schemas."""
  from mind_jax.convert import ConvertConfig
  from mind_jax.curation import FilterConfig
  from mind_jax.evaluation import EvaluateConfig
  from mind_jax.experiment import RecipeConfig
  from mind_jax.mind import GenerateConfig
  from mind_jax.sample import SampleConfig
  from mind_jax.training import TrainConfig
  seen, todo = set(), [SmokeConfig, ConvertConfig, FilterConfig, EvaluateConfig, RecipeConfig,
                       GenerateConfig, SampleConfig, TrainConfig]
  while todo:
    schema = todo.pop()
    if schema in seen:
      continue
    seen.add(schema)
    for field in schema.model_fields.values():
      default = field.get_default(call_default_factory=True)
      if isinstance(default, config.Section):
        todo.append(type(default))
  return seen


def test_a_choice_of_values_is_a_literal_type_and_help_lists_the_choices():
  """One way to write a set of choices (a regex pattern hides them from --help)."""
  sections = _sections()
  assert len(sections) > 20
  for schema in sections:
    for name, field in schema.model_fields.items():
      patterns = [m for m in field.metadata if getattr(m, "pattern", None)]
      assert not patterns, f"{schema.__name__}.{name}: a regex pattern; use Literal[...]"
  from mind_jax.curation import FilterConfig
  help_lines = config.describe(FilterConfig)
  assert "  format = 'same'  (output format (same: as each input file); one of: 'same', " \
         "'jsonl', 'parquet')" in help_lines
  assert any(line.startswith("  select.mode = 'all'") and line.endswith(
      "one of: 'all', 'longest')") for line in help_lines)


def _unmarked(schema, prefix=""):
  """Dotted keys reachable from `schema` with no result/speed/source mark (a section field may
  go unmarked: its own fields are walked)."""
  found = []
  for name, field in schema.model_fields.items():
    nested = config.nested_sections(field.annotation)
    if config.mark(field) is None:
      if not nested:
        found.append(f"{prefix}{name}")
      for section in nested:
        found += _unmarked(section, f"{prefix}{name}.")
  return found


def test_every_key_of_every_job_is_marked_result_speed_or_source():
  from mind_jax.curation import FilterConfig, ReportConfig
  from mind_jax.evaluation import EvaluateConfig
  from mind_jax.experiment import RecipeConfig
  from mind_jax.mind import GenerateConfig
  from mind_jax.training import TrainConfig  # train's and mix's
  for schema in (TrainConfig, GenerateConfig, FilterConfig, EvaluateConfig, ReportConfig,
                 RecipeConfig):
    assert _unmarked(schema) == [], schema.__name__


def test_settings_that_decide_leave_speed_keys_out_and_refuse_unmarked_ones():
  import pydantic
  from mind_jax.training import TrainConfig
  kept = config.deciding(TrainConfig(steps=5, microbatches=2, batch_size=4))
  assert kept["steps"] == 5 and "microbatches" not in kept and "mesh" not in kept
  assert "workers" not in kept["data"] and kept["data"]["sources"][0]["path"] == "champ"
  assert "remat" not in kept["model"] and kept["export"] == {"dtype": None}

  class Loose(config.Section):
    size: int = pydantic.Field(1)
  with pytest.raises(MindJaxError, match=r"Loose.size: not marked"):
    config.deciding(Loose())


# What each job recorded in run.json before its settings were derived from the marks: a
# record of that shape must still be accepted (no key both hold differs).
def _train_settings_before_marks(cfg):
  return {"model": f"preset {cfg.model.preset}, seed {cfg.seed}", "dtype": cfg.model.dtype,
          "param_dtype": cfg.model.param_dtype,
          "data": cfg.data.model_dump(exclude={"workers", "prefetch"}),
          "optimizer": cfg.optimizer.model_dump(), "batch_size": cfg.batch_size,
          "steps": cfg.steps, "z_loss": cfg.z_loss, "seed": cfg.seed}


def _generate_settings_before_marks(cfg, styles, model):
  import hashlib
  return {"model": model, "dtype": cfg.model.dtype,
          "param_dtype": cfg.model.param_dtype or cfg.model.dtype,
          "input": {"text_field": cfg.input.text_field, "id_field": cfg.input.id_field},
          "chunking": cfg.chunking.model_dump(),
          "prompt": {"order": cfg.prompt.order, "format": cfg.prompt.format,
                     "styles": {s.key: hashlib.sha256(f"{s.name}\0{s.instruction}".encode())
                                .hexdigest()[:16] for s in styles}},
          "sampling": cfg.sampling.model_dump(), "seed": cfg.seed}


def _added_keys(before, now):
  from mind_jax._outdir import differences, flatten
  assert differences(before, now) == []
  old, new = flatten(before), flatten(now)
  assert old.keys() <= new.keys()
  return sorted(new.keys() - old.keys())


def test_settings_derived_from_the_marks_accept_the_runs_recorded_before():
  from mind_jax.curation._filter import run_settings as filter_settings
  from mind_jax.curation import FilterConfig
  from mind_jax.mind import GenerateConfig, load_styles
  from mind_jax.mind._pipeline import run_settings as generate_settings
  from mind_jax.training import TrainConfig
  from mind_jax.training._loop import run_settings as train_settings
  cfg = TrainConfig(steps=7, seed=3, microbatches=2, eval={"every": 2, "sources": [{"path": "x"}]})
  assert _added_keys(_train_settings_before_marks(cfg), train_settings(cfg)) == [
      "allow_unused_tensors", "eval.batches", "eval.every", "eval.sources", "export.dtype",
      "quantize"]
  cfg = GenerateConfig(seed=2, input={"source": "a.jsonl", "limit": 9}, engine={"slots": 2})
  styles = list(load_styles(None).values())
  assert _added_keys(_generate_settings_before_marks(cfg, styles, "m"),
                     generate_settings(cfg, styles, "m")) == ["allow_unused_tensors"]
  cfg = FilterConfig(input="in", out="out", workers=3, min_tokens=5)
  before = {"tokenizer": "byte", **cfg.model_dump(
      exclude={"input", "out", "tokenizer", "workers", "scratch", "overwrite"})}
  assert filter_settings(cfg, "byte") == before
