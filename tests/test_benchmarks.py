"""The device benchmarks run as prepared commands on a lent GPU: they must not rot meanwhile."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import mind_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_decode_gpu_benchmark_runs_on_cpu_and_counts_the_bytes_a_step_reads(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_gpu.py"), "--preset", "tiny",
                  "--slots", "1", "3", "--prompt-len", "8", "--max-len", "64", "--calls", "1",
                  "--steps-per-call", "2", "--peak-bandwidth", "1e10", "--out", str(tmp_path)],
                 check=True, capture_output=True, text=True, env=env)
  result = json.loads((tmp_path / "decode_gpu.json").read_text())
  cfg = mind_jax.preset("tiny")
  bf16 = 2
  # Every weight but the embedding table, of which a step reads one row per slot.
  expected_weights = (cfg.num_params() - cfg.vocab_size * cfg.hidden_size) * bf16
  assert [row["slots"] for row in result["rows"]] == [1, 3]
  for row in result["rows"]:
    assert row["weight_bytes"] == expected_weights
    kv_per_slot = (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * row["window"]
                   * cfg.resolved_head_dim * bf16)
    assert row["kv_bytes_per_step"] == row["slots"] * kv_per_slot
    assert row["bandwidth_utilisation"] == pytest.approx(row["bytes_per_s"] / 1e10)
    assert row["tokens_per_s"] == pytest.approx(row["slots"] / (row["step_ms"] / 1e3))


@pytest.mark.slow
def test_train_gpu_benchmark_runs_on_cpu_and_counts_the_step_flops(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": ""}
  subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_gpu.py"), "--preset", "tiny",
                  "--batch", "2", "--seq", "128", "--steps", "2", "--peak-flops", "1e11",
                  "--out", str(tmp_path)], check=True, capture_output=True, text=True, env=env)
  result = json.loads((tmp_path / "train_gpu.json").read_text())
  from mind_jax.training import step_flops
  cfg = mind_jax.preset("tiny")
  assert result["step_flops"] == step_flops(cfg, 2 * 128, 128)
  assert result["mfu"] == pytest.approx(result["step_flops"] / result["step_s"] / 1e11)
  assert result["tokens_per_s"] == pytest.approx(256 / result["step_s"])
  assert 0 < result["final_loss"] < 20


def test_the_chip_table_names_the_card_variant_before_its_family():
  from mind_jax._devices import peak_bandwidth, peak_flops
  assert peak_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
  assert peak_bandwidth("NVIDIA H100 PCIe") == 2.0e12
  assert peak_bandwidth("NVIDIA H100 NVL") == 3.9e12
  assert peak_bandwidth("NVIDIA A100-PCIE-40GB") == 1.555e12
  assert peak_bandwidth("NVIDIA A100-SXM4-80GB") == 2.039e12
  assert peak_flops("NVIDIA H100 PCIe") == 756e12
  assert peak_bandwidth("NVIDIA H200") == 4.8e12
  assert peak_bandwidth("TPU v5 lite") == 0.819e12
  assert peak_bandwidth("cpu") is None
