"""HF <-> mind_jax checkpoints: bit-exact round trips, streaming reads, clear errors."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.torch import load_file

import mind_jax
from mind_jax import convert
from mind_jax.ckpts import SafetensorsReader, load_pretrained, save_orbax_model, stored_dtype
from mind_jax.nn import LlamaConfig, RopeConfig
from conftest import make_hf_checkpoint


def hf_tensors(path):
  """All tensors of an HF directory as torch tensors (via the official safetensors reader)."""
  index = os.path.join(path, "model.safetensors.index.json")
  files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) \
      else ["model.safetensors"]
  out = {}
  for f in files:
    out.update(load_file(os.path.join(path, f)))
  return out


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("bf16")
  make_hf_checkpoint(path, dtype="bfloat16", num_attention_heads=4, num_key_value_heads=2,
                     num_hidden_layers=3)
  return str(path)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_hf_round_trip_is_bit_exact_and_transformers_reproduces_logits(
    bf16_checkpoint, tmp_path, scan_layers):
  model, tokenizer = load_pretrained(bf16_checkpoint, dtype="bfloat16", scan_layers=scan_layers,
                                     progress=False)
  out = str(tmp_path / "export")
  mind_jax.save_pretrained(model, out, tokenizer, max_shard_size="40KB", progress=False)
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
  before, after = hf_tensors(bf16_checkpoint), hf_tensors(out)
  assert sorted(before) == sorted(after)
  for name in before:
    assert after[name].dtype == torch.bfloat16
    assert torch.equal(before[name].view(torch.int16), after[name].view(torch.int16)), name
  exported = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  original = transformers.AutoModelForCausalLM.from_pretrained(bf16_checkpoint).eval()
  ids = torch.tensor(np.random.RandomState(0).randint(0, 300, (2, 19)))
  with torch.no_grad():
    assert torch.equal(exported(ids).logits, original(ids).logits)
  reloaded = transformers.AutoTokenizer.from_pretrained(out)
  assert reloaded.encode("x^2 + 1", add_special_tokens=False) == tokenizer.encode("x^2 + 1")


def test_exported_config_carries_rope_in_both_spellings(tmp_path):
  cfg = mind_jax.preset("tiny")
  mind_jax.save_pretrained(mind_jax.Llama(cfg, rngs=nnx.Rngs(0)), str(tmp_path),
                           progress=False)
  written = json.load(open(tmp_path / "config.json"))
  # What a transformers-4 reader looks at: rope_theta and rope_scaling only.
  assert written["rope_theta"] == cfg.rope.theta
  legacy = written["rope_scaling"]
  assert legacy["rope_type"] == "llama3"
  assert legacy["factor"] == cfg.rope.factor
  assert legacy["original_max_position_embeddings"] == cfg.rope.original_max_position_embeddings
  # transformers 5 reads rope_parameters and agrees.
  t5 = transformers.AutoConfig.from_pretrained(str(tmp_path))
  assert t5.rope_parameters["rope_type"] == "llama3"
  assert t5.rope_parameters["rope_theta"] == cfg.rope.theta
  # Either spelling alone yields the same RoPE when read back.
  legacy_only = {k: v for k, v in written.items() if k != "rope_parameters"}
  new_only = {k: v for k, v in written.items() if k not in ("rope_scaling", "rope_theta")}
  assert LlamaConfig.from_hf_dict(legacy_only).rope == cfg.rope
  assert LlamaConfig.from_hf_dict(new_only).rope == cfg.rope


def test_llama3_rope_frequencies_match_transformers():
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  hf_cfg = transformers.LlamaConfig(
      hidden_size=128, num_attention_heads=2,
      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192})
  ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
  ours = RopeConfig(theta=500000.0, type="llama3").inv_freq(64)
  np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)


def test_orbax_round_trip_restores_onto_a_mesh(bf16_checkpoint, tmp_path):
  model, tokenizer = load_pretrained(bf16_checkpoint, dtype="bfloat16", progress=False)
  save_orbax_model(model, str(tmp_path / "orbax"), tokenizer)
  assert stored_dtype(str(tmp_path / "orbax")) == "bfloat16"
  mesh = mind_jax.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  restored, tok = load_pretrained(str(tmp_path / "orbax"), dtype="bfloat16", mesh=mesh,
                                  rules="train")
  q = restored.model.layers[0].self_attn.q_proj.weight[...]
  assert q.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  for a, b in zip(jax.tree.leaves(nnx.state(model)),
                  jax.tree.leaves(nnx.state(restored))):
    assert np.array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16))
  assert tok.encode("abc") == tokenizer.encode("abc")


def test_convert_cli_hf_to_orbax_to_hf_is_bit_exact(bf16_checkpoint, tmp_path):
  assert convert.main([bf16_checkpoint, str(tmp_path / "o"), "-q", "--scan-layers"]) == 0
  assert convert.main([str(tmp_path / "o"), str(tmp_path / "hf"), "-q"]) == 0
  before, after = hf_tensors(bf16_checkpoint), hf_tensors(str(tmp_path / "hf"))
  assert sorted(before) == sorted(after)
  assert all(torch.equal(before[k].view(torch.int16), after[k].view(torch.int16)) for k in before)


def test_sharded_import_reads_each_device_slice(bf16_checkpoint):
  mesh = mind_jax.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  model, _ = load_pretrained(bf16_checkpoint, dtype="float32", mesh=mesh, rules="train",
                             progress=False)
  ref = hf_tensors(bf16_checkpoint)["model.layers.1.mlp.down_proj.weight"].float().numpy()
  down = model.model.layers[1].mlp.down_proj.weight[...]
  assert down.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  for shard in down.addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), ref[shard.index])


def test_safetensors_reader_slices_equal_full_reads(bf16_checkpoint):
  ref = hf_tensors(bf16_checkpoint)["model.embed_tokens.weight"].float().numpy()
  with SafetensorsReader(bf16_checkpoint) as reader:
    part = reader.read("model.embed_tokens.weight", (slice(100, 150), slice(8, 40)))
    np.testing.assert_array_equal(part.astype(np.float32), ref[100:150, 8:40])


# --- bad input: one clear line naming the problem ------------------------------------------


def copy_checkpoint(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_missing_directory(tmp_path):
  with pytest.raises(mind_jax.MindJaxError, match="does not exist"):
    load_pretrained(str(tmp_path / "nope"))


def test_missing_and_invalid_config(bf16_checkpoint, tmp_path):
  path = copy_checkpoint(bf16_checkpoint, tmp_path / "c")
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write('{"model_type": "llama",\n  "hidden_size": }')
  with pytest.raises(mind_jax.MindJaxError, match=r"config.json: invalid JSON at line 2"):
    load_pretrained(path)
  os.remove(os.path.join(path, "config.json"))
  with pytest.raises(mind_jax.MindJaxError, match=r"config.json: missing"):
    load_pretrained(path)


def test_unsupported_architecture(bf16_checkpoint, tmp_path):
  path = copy_checkpoint(bf16_checkpoint, tmp_path / "c")
  cfg = json.load(open(os.path.join(path, "config.json")))
  cfg.update(model_type="mistral", architectures=["MistralForCausalLM"])
  json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
  with pytest.raises(mind_jax.MindJaxError, match="unsupported architecture.*mistral"):
    load_pretrained(path)


def test_missing_tensor_and_shape_mismatch_name_the_tensor(bf16_checkpoint, tmp_path):
  from safetensors.torch import save_file
  path = copy_checkpoint(bf16_checkpoint, tmp_path / "c")
  tensors = hf_tensors(path)
  removed = {k: v for k, v in tensors.items() if k != "model.layers.2.self_attn.k_proj.weight"}
  save_file(removed, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(mind_jax.MindJaxError, match=r"missing tensor model\.layers\.2\.self_attn\.k_proj"):
    load_pretrained(path)
  tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:90]
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(mind_jax.MindJaxError,
                     match=r"tensor model\.layers\.0\.mlp\.up_proj\.weight has shape \[90, 64\], "
                           r"expected \[96, 64\]"):
    load_pretrained(path)


def test_mesh_that_does_not_fit(bf16_checkpoint):
  with pytest.raises(mind_jax.MindJaxError, match="needs 6 devices but 8 are available"):
    mind_jax.make_mesh({"data": 3, "tensor": 2})
  mesh = mind_jax.make_mesh({"data": 1, "tensor": 8})
  with pytest.raises(mind_jax.MindJaxError,
                     match="num_attention_heads=4 is not divisible by mesh axis tensor=8"):
    load_pretrained(bf16_checkpoint, mesh=mesh)


def test_convert_cli_reports_bad_input_in_one_line(tmp_path, capsys):
  assert convert.main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"error: {tmp_path / 'missing'}: model directory does not exist (mind_jax never "
                 "downloads; fetch the checkpoint first, e.g. with `huggingface-cli download`)"]
