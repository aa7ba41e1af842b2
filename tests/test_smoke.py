"""The README's first command: the smoke run on the embedded default."""

import subprocess
import sys

import pytest

from mind_jax import MindJaxError, smoke


def test_smoke_run_generates_and_checks_cached_decoding(tmp_path, capsys):
  result = smoke.run(smoke.SmokeConfig(workdir=str(tmp_path), max_new_tokens=6))
  assert len(result["token_ids"]) == 6 and result["finish_reason"] == "length"
  assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()
  assert "random smoke-test weights" in capsys.readouterr().out


def test_smoke_is_deterministic(tmp_path):
  runs = [smoke.run(smoke.SmokeConfig(workdir=str(tmp_path / str(i)), max_new_tokens=4))
          for i in range(2)]
  assert runs[0]["token_ids"] == runs[1]["token_ids"]


@pytest.mark.slow
def test_smoke_cli_on_a_sharded_mesh_and_help():
  out = subprocess.run([sys.executable, "-m", "mind_jax.smoke", "mesh.axes.tensor=2",
                        "model.scan_layers=true", "max_new_tokens=4"],
                       capture_output=True, text=True, check=True)
  assert "KV-cache decoding checks out" in out.stdout
  assert "mesh {'data': 4, 'fsdp': 1, 'tensor': 2}" in out.stderr
  # A machine without a TPU starts quietly, libtpu installed or not (the test extra has it).
  assert "TPU" not in out.stderr and "E0000" not in out.stderr, out.stderr
  help_text = subprocess.run([sys.executable, "-m", "mind_jax.smoke", "--help"],
                             capture_output=True, text=True, check=True).stdout
  assert "model.dtype = 'float32'" in help_text and "key=value" in help_text
  bad = subprocess.run([sys.executable, "-m", "mind_jax.smoke", "model.dtpye=x"],
                       capture_output=True, text=True)
  assert bad.returncode == 2
  assert bad.stderr.strip() == "error: command line: model.dtpye: unknown key"


def test_a_workdir_that_is_not_empty_is_refused_before_anything_is_built(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(MindJaxError, match=r"^workdir=\S+: not empty; give a new or empty"):
    smoke.run(smoke.SmokeConfig(workdir=str(tmp_path), max_new_tokens=2))
  assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
