"""One loader for a config's `model` section: every key takes effect, or the job refuses it."""

import numpy as np
import pytest

from mind_jax import MindJaxError, config
from mind_jax.ckpts import load_model
from mind_jax.mind import GenerateConfig, load_generator, run
from mind_jax.smoke import SmokeConfig
from mind_jax.smoke import run as smoke


def section(*overrides):
  return config.load_config(GenerateConfig, None, list(overrides)).model


def test_every_key_reaches_the_model_of_a_checkpoint(hf_checkpoints):
  path = hf_checkpoints["llama3.1-gqa"][0]
  model, tokenizer, name = load_model(section(f"model.path={path}", "model.scan_layers=true",
                                              "model.remat=dots", "model.dtype=bfloat16",
                                              "model.param_dtype=float32"))
  assert name == path and tokenizer is not None
  c = model.config
  assert (c.scan_layers, c.remat, c.dtype, c.param_dtype) == (True, "dots", "bfloat16", "float32")
  # Scanned layers hold every layer's weights stacked on a leading axis.
  assert model.model.layers.self_attn.q_proj.weight[...].shape[0] == c.num_hidden_layers


def test_scan_gives_the_loops_logits(hf_checkpoints):
  path = hf_checkpoints["llama3.1-gqa"][0]
  ids = np.array([[1, 5, 9, 200, 3, 77]])
  loop = load_model(section(f"model.path={path}"))[0]
  scanned = load_model(section(f"model.path={path}", "model.scan_layers=true"))[0]
  assert np.abs(np.asarray(loop(ids)) - np.asarray(scanned(ids))).max() <= 1e-5


def test_a_preset_takes_the_same_keys():
  model, tokenizer, name = load_model(section("model.preset=tiny", "model.scan_layers=true",
                                              "model.remat=full"))
  assert name == "smoke-test:tiny-random-seed0" and tokenizer.source == "byte"
  assert model.config.scan_layers and model.config.remat == "full"


def test_generate_loads_through_it_with_its_mesh_and_rules():
  cfg = config.load_config(GenerateConfig, None, ["model.scan_layers=true", "mesh.rules=train",
                                                  "mesh.axes.fsdp=2", "mesh.axes.data=-1"])
  model, _, _, mesh = load_generator(cfg)
  assert model.config.scan_layers and dict(mesh.shape)["fsdp"] == 2
  embed = model.model.embed_tokens.weight[...]
  assert "fsdp" in str(embed.sharding.spec)  # the train rules put embed over fsdp


def test_keys_a_job_cannot_use_are_refused_in_one_line(tmp_path):
  with pytest.raises(MindJaxError, match=r"^model.remat=full: rematerialisation trades compute "
                     r"for activation memory in a backward pass, and this job has none"):
    run(config.load_config(GenerateConfig, None, ["model.remat=full",
                                                  f"output.dir={tmp_path / 'out'}"]))
  with pytest.raises(MindJaxError, match=r"^model.path=/ckpt: the smoke check builds its own"):
    smoke(SmokeConfig(model={"path": "/ckpt"}))
  with pytest.raises(MindJaxError, match=r"^model.remat=dots: .* this job has none"):
    smoke(SmokeConfig(model={"remat": "dots"}))
  assert not (tmp_path / "out").exists()
