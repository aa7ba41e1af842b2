"""Checkpoints from elsewhere are input to distrust; outputs never overwrite what we did not write.

Weight file names come from a downloaded index, so none may lead outside the model directory;
tensors config.json does not account for are an error; pickles are never read; convert and
save_pretrained never write into their source or delete a file they did not write.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import mind_jax
from mind_jax import convert, sample
from mind_jax.ckpts import load_pretrained, save_orbax_model, save_pretrained
from conftest import make_hf_checkpoint

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  path = tmp_path_factory.mktemp("base") / "ckpt"
  make_hf_checkpoint(path, num_attention_heads=4, num_key_value_heads=2)
  return str(path)


def copy(base, dst):
  shutil.copytree(base, dst)
  return str(dst)


def weights(model):
  return {".".join(map(str, p)): np.asarray(v[...])
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def cli(capsys, main, args):
  """Runs a CLI's main(); its exit status and its stderr lines but the log's (INFO lines of
  the work done before the refusal)."""
  code = main(args)
  return code, [line for line in capsys.readouterr().err.strip().splitlines()
                if not re.match(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ", line)]


def snapshot(directory):
  """Every file under `directory` with its bytes, to show a refused call changed nothing."""
  out = {}
  for dirpath, _, files in os.walk(directory):
    for name in files:
      full = os.path.join(dirpath, name)
      out[os.path.relpath(full, directory)] = open(full, "rb").read()
  return out


# --- 1. weight files named by a checkpoint stay inside its directory ------------------------


def escaping_checkpoint(base, tmp_path, how):
  """A model dir whose weights are a real, loadable safetensors file outside it (so a read
  that was not refused would load fine and the test would fail); the expected message."""
  model_dir = copy(base, tmp_path / "ckpt")
  outside = str(tmp_path / "outside.safetensors")
  os.replace(os.path.join(model_dir, SINGLE), outside)
  index = os.path.join(model_dir, INDEX)
  refuse = f"lies outside the model directory {model_dir}; refusing to read it"
  if how == "single-symlink":
    os.symlink(outside, os.path.join(model_dir, SINGLE))
    return model_dir, f"{model_dir}/{SINGLE} is a link to {outside}, which {refuse}"
  if how == "symlink":  # in a subfolder: a top-level link is refused before the index is read
    os.makedirs(os.path.join(model_dir, "shards"))
    os.symlink(outside, os.path.join(model_dir, "shards", "model-00001-of-00001.safetensors"))
    name = "shards/model-00001-of-00001.safetensors"
  elif how == "dotdot-inside":  # lands inside, on a real copy; still refused
    os.makedirs(os.path.join(model_dir, "sub"))
    shutil.copy(outside, os.path.join(model_dir, "inside.safetensors"))
    name = "sub/../inside.safetensors"
  else:
    name = {"dotdot": "../outside.safetensors", "absolute": outside,
            "dotdot-dotdot": "sub/../../ckpt/../outside.safetensors"}[how]
  names = load_file(outside).keys()
  with open(index, "w") as f:
    json.dump({"metadata": {}, "weight_map": {n: name for n in names}}, f)
  if how == "dotdot-inside":
    return model_dir, (f"{index}: weight_map names {name!r}, a path through '..'; a file of the "
                       f"model directory {model_dir} needs none, so refusing to read it")
  link = f", a link to {outside}," if how == "symlink" else ","
  return model_dir, f"{index}: weight_map names {name!r}{link} which {refuse}"


ESCAPES = ["dotdot", "absolute", "symlink", "single-symlink", "dotdot-dotdot", "dotdot-inside"]


@pytest.mark.parametrize("how", ESCAPES)
def test_weight_files_outside_the_model_dir_are_refused(base, tmp_path, how):
  model_dir, message = escaping_checkpoint(base, tmp_path, how)
  with pytest.raises(mind_jax.MindJaxError) as e:
    load_pretrained(model_dir, progress=False)
  assert str(e.value) == message


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_cli_refuses_escaping_weight_files_in_one_line(base, tmp_path, how, capsys):
  model_dir, message = escaping_checkpoint(base, tmp_path, how)
  out = tmp_path / "out"
  assert cli(capsys, convert.main, [model_dir, str(out), "-q"]) == (2, [f"error: {message}"])
  assert not out.exists()
  assert cli(capsys, sample.main, ["--model", model_dir, "--prompt-ids", "1,2"]) == \
      (2, [f"error: {message}"])


def test_orbax_params_linked_outside_are_refused(base, tmp_path):
  model, tokenizer = load_pretrained(base, progress=False)
  real = save_orbax_model(model, str(tmp_path / "real"), tokenizer)
  fake = tmp_path / "fake"
  fake.mkdir()
  for name in ("config.json", "mind_jax.json"):
    shutil.copy(os.path.join(real, name), fake / name)
  os.symlink(os.path.join(real, "params"), fake / "params")
  with pytest.raises(mind_jax.MindJaxError) as e:
    load_pretrained(str(fake), progress=False)
  assert str(e.value) == (f"{fake}/params is a link to {real}/params, which lies outside the "
                          f"model directory {fake}; refusing to read it")


def hub_cache(base, root, repo="models--x--y"):
  """`base` laid out as the Hugging Face hub cache does: every file of snapshots/<rev>/ is a
  relative symlink to blobs/<hash>."""
  blobs = root / repo / "blobs"
  snap = root / repo / "snapshots" / "abc"
  blobs.mkdir(parents=True)
  snap.mkdir(parents=True)
  for i, name in enumerate(sorted(os.listdir(base))):
    shutil.copy(os.path.join(base, name), blobs / f"blob{i:02d}")
    os.symlink(f"../../blobs/blob{i:02d}", snap / name)
  return str(snap)


def test_hub_cache_layout_loads(base, tmp_path):
  snap = hub_cache(base, tmp_path / "hub")
  assert os.path.islink(os.path.join(snap, SINGLE))
  model, tokenizer = load_pretrained(snap, progress=False)
  ref, _ = load_pretrained(base, progress=False)
  got, want = weights(model), weights(ref)
  assert got.keys() == want.keys()
  assert all(np.array_equal(got[k], want[k]) for k in want)
  assert tokenizer is not None


def test_hub_cache_links_into_another_repos_blobs_are_refused(base, tmp_path):
  snap = hub_cache(base, tmp_path / "hub")
  other = hub_cache(base, tmp_path / "hub", repo="models--evil--z")
  os.remove(os.path.join(snap, SINGLE))
  target = os.path.realpath(os.path.join(other, SINGLE))
  os.symlink(target, os.path.join(snap, SINGLE))
  with pytest.raises(mind_jax.MindJaxError,
                     match=f"is a link to {target}, which lies outside the model directory"):
    load_pretrained(snap, progress=False)


# --- 2. tensors the model does not use ------------------------------------------------------


def fewer_layers(base, tmp_path):
  model_dir = copy(base, tmp_path / "ckpt")
  config_path = os.path.join(model_dir, "config.json")
  config = json.load(open(config_path))
  config["num_hidden_layers"] -= 1
  json.dump(config, open(config_path, "w"))
  return model_dir


def unused_message(model_dir):
  return (f"{model_dir}: config.json describes a model that does not use 9 of the checkpoint's "
          "tensors (model.layers.1.input_layernorm.weight, model.layers.1.mlp.down_proj.weight, "
          "model.layers.1.mlp.gate_proj.weight, model.layers.1.mlp.up_proj.weight, "
          "model.layers.1.post_attention_layernorm.weight ...), so it does not match the weights; "
          "pass allow_unused=True (--allow-unused-tensors) to load it anyway")


def test_unused_tensors_are_an_error_before_any_read(base, tmp_path, monkeypatch):
  model_dir = fewer_layers(base, tmp_path)

  def no_read(*args, **kwargs):
    raise AssertionError("read a tensor before checking for unused ones")

  monkeypatch.setattr(mind_jax.ckpts.SafetensorsReader, "read", no_read)
  with pytest.raises(mind_jax.MindJaxError) as e:
    load_pretrained(model_dir, progress=False)
  assert str(e.value) == unused_message(model_dir)


def test_allow_unused_loads_with_a_warning(base, tmp_path, mind_jax_log):
  model_dir = fewer_layers(base, tmp_path)
  model, _ = load_pretrained(model_dir, progress=False, allow_unused=True)
  assert model.config.num_hidden_layers == 1
  [warning] = [r for r in mind_jax_log if r.levelno == logging.WARNING]
  assert warning.getMessage().startswith(
      f"{model_dir}: ignoring 9 tensor(s) the model does not use (allow_unused): "
      "model.layers.1.input_layernorm.weight, ")


def test_unused_tensors_through_the_clis(base, tmp_path, capsys):
  model_dir = fewer_layers(base, tmp_path)
  out = str(tmp_path / "out")
  assert cli(capsys, convert.main, [model_dir, out, "-q"]) == \
      (2, [f"error: {unused_message(model_dir)}"])
  assert not os.path.exists(out)
  assert cli(capsys, sample.main, ["--model", model_dir, "--prompt-ids", "1,2"]) == \
      (2, [f"error: {unused_message(model_dir)}"])
  assert convert.main([model_dir, out, "-q", "--allow-unused-tensors"]) == 0
  assert json.load(open(os.path.join(out, "config.json")))["num_hidden_layers"] == 1
  assert sample.main(["--model", model_dir, "--prompt-ids", "1,2", "--max-new-tokens", "2",
                      "--json", "--allow-unused-tensors", "--dtype", "float32"]) == 0


def test_tensors_transformers_ignores_too_still_load(tmp_path, mind_jax_log):
  """A tied head saved anyway, and Llama-2-era rotary_emb.inv_freq buffers."""
  make_hf_checkpoint(tmp_path / "tied", num_attention_heads=4, num_key_value_heads=2,
                     tie_word_embeddings=True)
  model_dir = str(tmp_path / "tied")
  tensors = load_file(os.path.join(model_dir, SINGLE))
  assert "lm_head.weight" not in tensors
  tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] + 1
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)
  save_file(tensors, os.path.join(model_dir, SINGLE), metadata={"format": "pt"})
  model, _ = load_pretrained(model_dir, progress=False)
  assert model.config.tie_word_embeddings
  assert mind_jax_log and not [r for r in mind_jax_log if r.levelno >= logging.WARNING]
  # The untied head is an error: there lm_head.weight is used, so an extra tensor is not it.
  config = json.load(open(os.path.join(model_dir, "config.json")))
  config["tie_word_embeddings"] = False
  json.dump(config, open(os.path.join(model_dir, "config.json"), "w"))
  tensors["model.layers.0.extra.weight"] = np.ones(8, np.float32)
  save_file(tensors, os.path.join(model_dir, SINGLE), metadata={"format": "pt"})
  with pytest.raises(mind_jax.MindJaxError, match=r"does not use 1 of the checkpoint's tensors "
                     r"\(model\.layers\.0\.extra\.weight\)"):
    load_pretrained(model_dir, progress=False)


# --- 3. pickles are never read --------------------------------------------------------------


@pytest.mark.parametrize("pickle", ["pytorch_model.bin", "pytorch_model.bin.index.json",
                                    "consolidated.00.pth"])
def test_pickle_only_checkpoint_points_at_a_conversion(base, tmp_path, pickle, capsys):
  model_dir = copy(base, tmp_path / "ckpt")
  os.remove(os.path.join(model_dir, SINGLE))
  # Not a pickle at all: any attempt to unpickle it would fail differently.
  with open(os.path.join(model_dir, pickle), "wb") as f:
    f.write(b"not a pickle")
  found = (f"{model_dir}: no {SINGLE} or {INDEX}, only PyTorch pickle weights ({pickle}), which "
           "mind_jax does not read because unpickling can run code; ")
  if pickle.endswith(".pth"):
    how = ("convert once with transformers' models/llama/convert_llama_weights_to_hf.py, which "
           "writes safetensors")
  else:
    how = ("convert once with transformers: python -c \"from transformers import "
           f"AutoModelForCausalLM as M; M.from_pretrained('{model_dir}')"
           f".save_pretrained('{model_dir}-safetensors')\"")
  with pytest.raises(mind_jax.MindJaxError) as e:
    load_pretrained(model_dir, progress=False)
  assert str(e.value) == found + how
  assert cli(capsys, convert.main, [model_dir, str(tmp_path / "out")]) == \
      (2, [f"error: {found}{how}"])


# --- 4. convert and save_pretrained write only where they may, delete only what they wrote --


def test_convert_never_writes_into_its_source(base, tmp_path, capsys):
  src = copy(base, tmp_path / "src")
  before = snapshot(src)
  assert cli(capsys, convert.main, [src, src]) == \
      (2, [f"error: dst={src}: is the source checkpoint {src}; write the conversion elsewhere"])
  assert cli(capsys, convert.main, [src, src + "/."]) == \
      (2, [f"error: dst={src}/.: is the source checkpoint {src}; write the conversion elsewhere"])
  inside = os.path.join(src, "orbax")
  assert cli(capsys, convert.main, [src, inside]) == \
      (2, [f"error: dst={inside}: lies inside the input {src}; write elsewhere"])
  assert cli(capsys, convert.main, [src, str(tmp_path)]) == \
      (2, [f"error: dst={tmp_path}: contains the input {src}; write elsewhere"])
  assert snapshot(src) == before


def test_convert_refuses_a_non_empty_dst_and_a_file(base, tmp_path, capsys):
  dst = tmp_path / "dst"
  dst.mkdir()
  (dst / "notes.txt").write_bytes(b"my notes\x00\xff")
  (dst / SINGLE).write_bytes(b"a user's own file under our name")
  before = snapshot(dst)
  assert cli(capsys, convert.main, [base, str(dst), "--to", "hf"]) == \
      (2, [f"error: dst={dst}: exists and is not empty; give a new or empty directory, or "
           "--overwrite to replace a checkpoint written there before"])
  assert snapshot(dst) == before
  file = tmp_path / "file"
  file.write_bytes(b"x")
  assert cli(capsys, convert.main, [base, str(file)]) == \
      (2, [f"error: dst={file}: is a file, not a directory"])
  assert file.read_bytes() == b"x"


@pytest.mark.parametrize("to", ["orbax", "hf"])
def test_convert_overwrite_replaces_its_own_output_and_keeps_user_files(base, tmp_path, to,
                                                                        capsys):
  dst = str(tmp_path / "dst")
  assert convert.main([base, dst, "-q", "--to", to, "--max-shard-size", "40KB"]) == 0
  with open(os.path.join(dst, "notes.txt"), "wb") as f:
    f.write(b"keep me\n")
  assert cli(capsys, convert.main, [base, dst, "-q", "--to", to])[0] == 2
  assert convert.main([base, dst, "-q", "--to", to, "--overwrite"]) == 0
  assert open(os.path.join(dst, "notes.txt"), "rb").read() == b"keep me\n"
  if to == "hf":  # the second write is one file: the first one's shards and index are gone
    assert sorted(f for f in os.listdir(dst) if f.startswith("model")) == [SINGLE]
  model, _ = load_pretrained(dst, progress=False)
  ref, _ = load_pretrained(base, progress=False)
  got, want = weights(model), weights(ref)
  assert all(np.array_equal(got[k], want[k]) for k in want)


def test_save_pretrained_refuses_non_empty_and_overwrite_removes_only_its_own_files(tmp_path):
  model = mind_jax.Llama(mind_jax.preset("tiny"), rngs=nnx.Rngs(0))
  out = tmp_path / "out"
  save_pretrained(model, str(out), max_shard_size="200KB", progress=False)
  shards = sorted(f for f in os.listdir(out) if f.startswith("model-"))
  assert len(shards) > 2 and (out / INDEX).exists()
  user = {"model-notes.safetensors": b"user data", "notes.txt": b"notes",
          "model.safetensors.bak": b"backup", "my-model-00001-of-00002.safetensors": b"mine"}
  for name, data in user.items():
    (out / name).write_bytes(data)
  (out / "model-00003-of-00005.safetensors").write_bytes(b"ours by name")
  before = snapshot(out)
  with pytest.raises(mind_jax.MindJaxError) as e:
    save_pretrained(model, str(out), progress=False)
  assert str(e.value) == (f"{out}: is not empty; write into a new or empty directory, or pass "
                          "overwrite=True to replace a checkpoint written there before")
  with pytest.raises(mind_jax.MindJaxError, match="is not empty"):
    save_orbax_model(model, str(out))
  assert snapshot(out) == before
  save_pretrained(model, str(out), progress=False, overwrite=True)
  assert sorted(os.listdir(out)) == sorted(
      ["config.json", "generation_config.json", SINGLE] + list(user))
  assert all((out / name).read_bytes() == data for name, data in user.items())
  reloaded, _ = load_pretrained(str(out), dtype=model.config.dtype, progress=False)
  got, want = weights(reloaded), weights(model)
  assert all(np.array_equal(got[k], want[k]) for k in want)


# --- 5. no advisory noise from transformers in each worker --------------------------------


def test_transformers_advisory_warnings_are_off_after_import():
  env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
  out = subprocess.run([sys.executable, "-c", "import os, mind_jax.text; "
                        "print(os.environ.get('TRANSFORMERS_NO_ADVISORY_WARNINGS'))"],
                       capture_output=True, text=True, check=True, env=env)
  assert out.stdout.strip() == "1"
