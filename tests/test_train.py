"""Continued pretraining: exact against PyTorch, resumable to the bit, exported for transformers."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import torch

from conftest import make_hf_checkpoint
from mind_jax.ckpts import load_model, load_pretrained
from mind_jax.config import ModelSection, load_config
from mind_jax.sharding import make_mesh
from mind_jax.training import TrainConfig
from mind_jax.training._config import OptimizerSection
from mind_jax.training._metrics import TIMING_FIELDS, read_metrics
from mind_jax.training._optim import learning_rate, optimizer
from mind_jax.training._step import Trainer, flat_params, host_metrics

STEPS, B, L = 10, 8, 32
PREEMPTED_AFTER_STEP = os.path.join(os.path.dirname(__file__), "helpers",
                                    "train_preempted_after_step.py")
OPT = OptimizerSection(warmup_steps=2)  # the defaults: AdamW 0.9/0.95, wd 0.1, clip 1.0, cosine


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("base")
  make_hf_checkpoint(path)
  return str(path)


def batches(seed=0, packed=False):
  """STEPS batches as the data pipeline lays them out; `packed`: two documents per row."""
  rs = np.random.RandomState(seed)
  out = []
  for _ in range(STEPS):
    tokens = rs.randint(0, 300, (B, L)).astype(np.int32)
    segments = np.ones((B, L), np.int32)
    positions = np.broadcast_to(np.arange(L), (B, L)).astype(np.int32).copy()
    if packed:
      segments[:, L // 2:] = 2
      positions[:, L // 2:] -= L // 2
    targets = np.zeros_like(tokens)
    targets[:, :-1] = tokens[:, 1:]
    weights = np.zeros((B, L), np.float32)
    weights[:, :-1] = segments[:, 1:] == segments[:, :-1]
    out.append({"tokens": tokens, "segment_ids": segments, "positions": positions,
                "targets": targets, "loss_weights": weights})
  return out


def train_mind_jax(checkpoint, data, mesh=None, microbatches=1, **model_keys):
  mesh = mesh or make_mesh({"data": 1}, jax.devices()[:1])
  model, _, _ = load_model(ModelSection(path=checkpoint, **model_keys), mesh, "train")
  trainer = Trainer.create(model.config, mesh, optimizer(OPT, STEPS), learning_rate(OPT, STEPS),
                           microbatches=microbatches)
  state = trainer.init_state(flat_params(model))
  losses = []
  for batch in data:
    state, metrics = trainer.step(state, {k: jax.device_put(v, trainer.batch_sharding)
                                          for k, v in batch.items()})
    losses.append(host_metrics(metrics)["loss"])
  return np.array(losses), {k: np.asarray(v) for k, v in state["params"].items()}


def train_torch(checkpoint, data):
  import transformers
  model = transformers.LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
  named = dict(model.named_parameters())
  # The usual rule, written out here: no decay on norm scales.
  groups = [{"params": [p for n, p in named.items() if "norm" not in n],
             "weight_decay": OPT.weight_decay},
            {"params": [p for n, p in named.items() if "norm" in n], "weight_decay": 0.0}]
  adamw = torch.optim.AdamW(groups, lr=OPT.learning_rate, betas=(OPT.b1, OPT.b2), eps=OPT.eps)
  schedule = learning_rate(OPT, STEPS)
  scheduler = torch.optim.lr_scheduler.LambdaLR(
      adamw, lambda step: float(schedule(step)) / OPT.learning_rate)
  model.train()
  losses = []
  for batch in data:
    labels = torch.tensor(batch["tokens"], dtype=torch.long)
    out = model(torch.tensor(batch["tokens"], dtype=torch.long), labels=labels)
    adamw.zero_grad()
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), OPT.clip_norm)
    adamw.step()
    scheduler.step()
    losses.append(out.loss.item())
  return np.array(losses), {n: p.detach().numpy() for n, p in named.items()}


# --- fidelity -----------------------------------------------------------------------------------

def test_ten_steps_equal_transformers_with_torch_adamw(checkpoint):
  data = batches()
  ours, our_weights = train_mind_jax(checkpoint, data)
  theirs, their_weights = train_torch(checkpoint, data)
  assert np.max(np.abs(ours - theirs) / theirs) < 1e-5, (ours, theirs)
  assert set(our_weights) == set(their_weights)
  worst = max(np.abs(our_weights[n] - their_weights[n]).max() for n in their_weights)
  assert worst < 1e-5, worst


def test_gradient_accumulation_equals_the_large_batch(checkpoint):
  data = batches(1, packed=True)
  plain, plain_weights = train_mind_jax(checkpoint, data)
  accumulated, accumulated_weights = train_mind_jax(checkpoint, data, microbatches=4)
  np.testing.assert_allclose(accumulated, plain, rtol=1e-6)
  for name, value in plain_weights.items():
    np.testing.assert_allclose(accumulated_weights[name], value, atol=1e-6)


def test_an_8_device_mesh_equals_one_device(checkpoint):
  data = batches(2, packed=True)
  one, one_weights = train_mind_jax(checkpoint, data)
  eight, eight_weights = train_mind_jax(
      checkpoint, data, mesh=make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), microbatches=2)
  np.testing.assert_allclose(eight, one, rtol=1e-5)
  for name, value in one_weights.items():
    np.testing.assert_allclose(eight_weights[name], value, atol=1e-5)


def test_scanned_and_rematerialised_layers_train_the_same(checkpoint):
  data = batches(3, packed=True)
  plain, _ = train_mind_jax(checkpoint, data)
  scanned, weights = train_mind_jax(checkpoint, data, scan_layers=True, remat="full")
  np.testing.assert_allclose(scanned, plain, rtol=1e-5)
  assert weights["model.layers.self_attn.q_proj.weight"].shape[0] == 2  # stacked: one per layer


# --- the job: resume, preemption, export --------------------------------------------------------

FAST = ["steps=12", "checkpoint.every=3", "batch_size=4", "data.seq_len=64",
        "data.shuffle_window=64", "optimizer.warmup_steps=2", "optimizer.learning_rate=1e-3"]


def _command(workdir, *extra):
  return [sys.executable, "-m", "mind_jax.train", f"workdir={workdir}", *FAST, *extra]


def _env(devices=4):
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _run(workdir, *extra, devices=4):
  done = subprocess.run(_command(workdir, *extra), capture_output=True, text=True,
                        env=_env(devices))
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def _steps_logged(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return sum(1 for _ in open(path)) if os.path.exists(path) else 0


def _saved(workdir):
  """Steps of the complete checkpoints (Orbax renames a checkpoint to its step when done)."""
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def _interrupt(workdir, at_step, sig, after_checkpoint=0):
  """Starts the job and sends `sig` once `at_step` steps are logged (and a checkpoint of at
  least `after_checkpoint` is complete); returns the exit code."""
  process = subprocess.Popen(_command(workdir), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env=_env())
  while process.poll() is None and (_steps_logged(workdir) < at_step or
                                    max(_saved(workdir), default=0) < after_checkpoint):
    time.sleep(0.01)
  process.send_signal(sig)
  process.wait(timeout=120)
  return process.returncode


def _restore_state(path, *overrides):
  """A train state checkpoint restored onto this process's 8 devices."""
  import orbax.checkpoint as ocp
  from mind_jax.training._config import model_config
  cfg = load_config(TrainConfig, None, [*FAST, *overrides])
  trainer = Trainer.create(model_config(cfg), make_mesh({"data": 8}),
                           optimizer(cfg.optimizer, cfg.steps), learning_rate(cfg.optimizer, cfg.steps))
  return ocp.StandardCheckpointer().restore(str(path), trainer.abstract_state())


def _deterministic(metrics):
  return [{k: v for k, v in m.items() if k not in TIMING_FIELDS} for m in metrics]


def _weights(workdir):
  from safetensors.numpy import load_file
  return load_file(os.path.join(workdir, "hf", "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("whole") / "run"
  _run(workdir)
  return workdir


def test_killed_twice_and_rerun_ends_bit_identical(uninterrupted, tmp_path):
  workdir = tmp_path / "run"
  rs = np.random.RandomState(int(time.time()))
  first, second = sorted(rs.choice(np.arange(4, 11), 2, replace=False))
  # Each kill lands after a complete checkpoint, so each rerun resumes from one.
  assert _interrupt(workdir, first, signal.SIGKILL, after_checkpoint=3) == -signal.SIGKILL
  resumed_from = _saved(workdir)[-1]
  assert _interrupt(workdir, second, signal.SIGKILL, after_checkpoint=resumed_from + 3) in (
      -signal.SIGKILL, 0)
  done = _run(workdir)
  assert "start_step: 0" not in done.stdout, (first, second)
  assert _deterministic(read_metrics(workdir)) == _deterministic(read_metrics(uninterrupted))
  ours, reference = _weights(workdir), _weights(uninterrupted)
  assert all(np.array_equal(ours[k], reference[k]) for k in reference)


def test_sigterm_saves_at_once_and_exits_0(uninterrupted, tmp_path):
  workdir = tmp_path / "run"
  assert _interrupt(workdir, 4, signal.SIGTERM) == 0
  assert _saved(workdir)[-1] == _steps_logged(workdir) >= 4  # saved where it stopped
  _run(workdir)
  assert _deterministic(read_metrics(workdir)) == _deterministic(read_metrics(uninterrupted))
  ours, reference = _weights(workdir), _weights(uninterrupted)
  assert all(np.array_equal(ours[k], reference[k]) for k in reference)


def test_a_checkpoint_restores_onto_another_mesh(uninterrupted, tmp_path):
  workdir = tmp_path / "run"
  _run(workdir, "mesh.axes={data: 1, fsdp: 4, tensor: 2}", "checkpoint.every=6", devices=8)
  # Cut the run back to its step-6 checkpoint (saved on 8 devices), then finish it on 4.
  import shutil
  shutil.rmtree(workdir / "checkpoints" / "12")
  done = _run(workdir, "mesh.axes={data: 1, fsdp: 2, tensor: 2}", "checkpoint.every=6")
  assert "start_step: 6" in done.stdout
  ours, reference = read_metrics(workdir), read_metrics(uninterrupted)
  np.testing.assert_allclose([m["loss"] for m in ours], [m["loss"] for m in reference], rtol=1e-5)


def test_a_checkpoint_cut_off_mid_save_is_skipped_with_a_warning(tmp_path):
  workdir = tmp_path / "run"
  _run(workdir, "steps=6")
  (workdir / "checkpoints" / "9.orbax-checkpoint-tmp-1700000000").mkdir()
  done = _run(workdir, "steps=6")
  assert "9.orbax-checkpoint-tmp-1700000000: a checkpoint cut off while it was written; " \
      "skipped" in done.stderr and "start_step: 6" in done.stdout


def test_the_export_loads_in_transformers_with_the_trained_logits(uninterrupted):
  import transformers
  hf_dir = str(uninterrupted / "hf")
  reference, info = transformers.LlamaForCausalLM.from_pretrained(
      hf_dir, dtype=torch.float32, output_loading_info=True)
  assert not any(info.values()), info  # nothing missing, unexpected or mismatched
  ours, tokenizer = load_pretrained(hf_dir)
  assert tokenizer is not None and reference.config.bos_token_id == tokenizer.bos_id
  ids = np.random.RandomState(0).randint(0, 300, (2, 24))
  with torch.no_grad():
    theirs = reference(torch.tensor(ids)).logits.numpy()
  assert np.abs(np.asarray(ours(ids)) - theirs).max() <= 1e-4
  # The trained weights themselves, as the last checkpoint holds them.
  state = _restore_state(uninterrupted / "checkpoints" / "12" / "state")
  trained = flat_params(ours)
  assert all(np.array_equal(np.asarray(trained[k]), np.asarray(v))
             for k, v in state["params"].items())


def test_the_default_run_lowers_the_loss_and_writes_tensorboard(tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  workdir = tmp_path / "run"
  _run(workdir, "steps=40", "optimizer.learning_rate=3e-3", "eval.every=20",
       "eval.sources=[{path: champ}]", "eval.batches=2")
  metrics = read_metrics(workdir)
  losses = [m["loss"] for m in metrics]
  assert len(losses) == 40 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
  held_out = {m["step"]: m["eval_loss"] for m in metrics if "eval_loss" in m}
  assert set(held_out) == {20, 40} and held_out[40] < held_out[20]
  events = EventAccumulator(str(workdir / "tensorboard"))
  events.Reload()
  assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 41))
  record = json.loads((workdir / "run.json").read_text())
  assert record["job"] == "train" and record["settings"]["steps"] == 40


def test_training_starts_from_a_scanned_orbax_checkpoint(tmp_path):
  """An Orbax checkpoint stores its layers stacked: the train state follows it unasked."""
  import mind_jax
  from flax import nnx
  from mind_jax.ckpts import save_orbax_model
  from mind_jax.text import byte_tokenizer
  model = mind_jax.Llama(mind_jax.preset("tiny", scan_layers=True), rngs=nnx.Rngs(3))
  save_orbax_model(model, str(tmp_path / "orbax"), byte_tokenizer())
  done = _run(tmp_path / "run", f"model.path={tmp_path / 'orbax'}", "steps=3")
  assert "final_loss" in done.stdout and len(read_metrics(tmp_path / "run")) == 3


def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  done = subprocess.run(_command(workdir, "optimizer.learning_rate=1e30", "optimizer.clip_norm=null",
                                 "checkpoint.every=1"),
                        capture_output=True, text=True, env=_env())
  assert done.returncode == 2
  line = done.stderr.strip().splitlines()[-1]
  assert line.startswith("error: step ") and "the loss is nan" in line
  step = int(line.split()[2].rstrip(":"))
  assert _saved(workdir)[-1] == step - 1


def test_config_rejects_microbatches_that_do_not_divide_the_batch():
  from mind_jax import MindJaxError
  with pytest.raises(MindJaxError, match="batch_size=6 is not divisible by microbatches=4"):
    load_config(TrainConfig, None, ["batch_size=6", "microbatches=4"])


# --- multi-host, for real: two processes on this machine -----------------------------------------

def test_two_processes_train_as_one_8_device_mesh(tmp_path):
  """Two hosts of 4 devices train as one 8-device mesh, each reading its own data shard; a
  preemption notice that reaches one host stops both at the same step; the rerun resumes on
  both; losses and weights are the single process's."""
  import socket
  common = ["steps=6", "checkpoint.every=3", "data.shards=2", "batch_size=8",
            "mesh.axes={data: 2, fsdp: 4}"]
  single = tmp_path / "single"
  done = subprocess.run(_command(single, *common), capture_output=True, text=True, env={
      **os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert done.returncode == 0, done.stderr[-3000:]
  multi = tmp_path / "multi"

  def two_processes(notice_after_step=None):
    job = [sys.executable, "-m", "mind_jax.train"]
    first = [sys.executable, PREEMPTED_AFTER_STEP, str(notice_after_step)] if notice_after_step else job
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    processes = [subprocess.Popen(
        [*(first if i == 0 else job), *_command(multi, *common, "distributed=on")[3:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={
            **os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(i)}) for i in range(2)]
    for process in processes:
      _, err = process.communicate(timeout=180)
      assert process.returncode == 0, err[-3000:]
  # A preemption notice reaches process 0 alone, after step 2: both save step 2 and exit 0.
  two_processes(notice_after_step=2)
  assert _saved(multi) == [2] and _steps_logged(multi) == 2
  two_processes()  # the rerun resumes from it on both
  # Each process read its own data shard; together they made the single process's batches.
  np.testing.assert_allclose([m["loss"] for m in read_metrics(multi)],
                             [m["loss"] for m in read_metrics(single)], rtol=1e-5)
  assert sorted(n for n in os.listdir(multi / "checkpoints" / "6" / "data")
                if n.endswith(".json")) == ["process_0-of-2.json", "process_1-of-2.json"]
  # The checkpoint both processes wrote restores here, in one process.
  theirs = _restore_state(multi / "checkpoints" / "6" / "state", *common)
  ours = _restore_state(single / "checkpoints" / "6" / "state", *common)
  for name, value in ours["params"].items():
    np.testing.assert_allclose(np.asarray(theirs["params"][name]), np.asarray(value), atol=1e-6)
