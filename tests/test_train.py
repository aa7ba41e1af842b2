"""Continued pretraining: exact against PyTorch, resumable to the bit, exported for transformers."""

import json
import math
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
from mind_jax.training import OptimizerSection, TrainConfig, Trainer, read_metrics
from mind_jax.training._metrics import TIMING_FIELDS
from mind_jax.training._optim import learning_rate, optimizer
from mind_jax.training._step import flat_params, host_metrics

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


def train_mind_jax(checkpoint, data, mesh=None, microbatches=1, opt=OPT, z_loss=0.0,
                   **model_keys):
  """Trains on `data`; returns the per-step metrics ({name: array over steps}) and the
  final weights."""
  mesh = mesh or make_mesh({"data": 1}, jax.devices()[:1])
  model, _, _ = load_model(ModelSection(path=checkpoint, **model_keys), mesh, "train")
  trainer = Trainer.create(model.config, mesh, opt.build(STEPS),
                           microbatches=microbatches, z_loss=z_loss)
  state = trainer.init_state(flat_params(model))
  history = []
  for batch in data:
    state, metrics = trainer.train_step(state, {k: jax.device_put(v, trainer.batch_sharding)
                                          for k, v in batch.items()})
    history.append(host_metrics(metrics))
  metrics = {k: np.array([m[k] for m in history]) for k in history[0]}
  return metrics, {k: np.asarray(v) for k, v in state["params"].items()}


def torch_learning_rate(opt, step, steps=STEPS):
  """The schedule the options describe, written out independently of mind_jax's: a linear
  warmup from 0 to the peak at `warmup_steps`, then a decay that reaches `end_learning_rate`
  at step `steps` (the count after the last update, as transformers' schedules count)."""
  peak, end, warmup = opt.learning_rate, opt.end_learning_rate, opt.warmup_steps
  if step < warmup:
    return peak * step / warmup
  done = (step - warmup) / (steps - warmup)  # 0 -> 1 over the decay
  if opt.schedule == "constant":
    return peak
  if opt.schedule == "linear":
    return peak + (end - peak) * done
  return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * done))


def train_torch(checkpoint, data, opt=OPT, z_loss=0.0):
  """The same training in transformers + torch.optim.AdamW, every rule written out here; returns
  the per-step loss, learning rate and (unclipped) gradient norm, and the final weights."""
  import transformers
  model = transformers.LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
  named = dict(model.named_parameters())
  # No decay on norm scales; none on the embedding table and the head unless asked for.
  undecayed = {n for n in named if "norm" in n}
  if not opt.decay_embeddings:
    undecayed |= {"model.embed_tokens.weight", "lm_head.weight"}
  groups = [{"params": [p for n, p in named.items() if n not in undecayed],
             "weight_decay": opt.weight_decay},
            {"params": [p for n, p in named.items() if n in undecayed], "weight_decay": 0.0}]
  adamw = torch.optim.AdamW(groups, lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps)
  scheduler = torch.optim.lr_scheduler.LambdaLR(
      adamw, lambda step: torch_learning_rate(opt, step) / opt.learning_rate)
  model.train()
  metrics = {"loss": [], "lr": [], "grad_norm": []}
  for batch in data:
    tokens = torch.tensor(batch["tokens"], dtype=torch.long)
    out = model(tokens, labels=tokens)
    loss = out.loss
    if z_loss:  # PaLM's z-loss: the squared log-partition, averaged like the loss
      log_z = torch.logsumexp(out.logits[:, :-1].float(), dim=-1)
      loss = loss + z_loss * torch.mean(log_z ** 2)
    adamw.zero_grad()
    loss.backward()
    # Returns the norm of the gradients as they were, before clipping.
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), opt.clip_norm or math.inf)
    metrics["lr"].append(adamw.param_groups[0]["lr"])  # the rate this update uses
    metrics["grad_norm"].append(norm.item())
    metrics["loss"].append(out.loss.item())
    adamw.step()
    scheduler.step()
  metrics = {k: np.array(v) for k, v in metrics.items()}
  return metrics, {n: p.detach().numpy() for n, p in named.items()}


# --- fidelity -----------------------------------------------------------------------------------

PARITY_CASES = {
    # AdamW 0.9/0.95, wd 0.1, a 2-step warmup into cosine decay; the gradient norm stays near
    # 0.9, so clipping at 1.0 never acts here.
    "defaults": (OPT, 0.0),
    # A clip that rescales every step's gradients.
    "clipping-at-0.1": (OptimizerSection(warmup_steps=2, clip_norm=0.1), 0.0),
    # Linear decay, no decay on embeddings and head (a large rate and weight decay, so the
    # decay shows in the weights), and a z-loss heavy enough to steer the gradients.
    "linear-no-embedding-decay-z-loss": (
        OptimizerSection(warmup_steps=3, schedule="linear", learning_rate=1e-3,
                         end_learning_rate=1e-4, weight_decay=1.0, decay_embeddings=False),
        1e-2),
}


@pytest.mark.parametrize("case", PARITY_CASES)
def test_ten_steps_equal_transformers_with_torch_adamw(checkpoint, case):
  opt, z_loss = PARITY_CASES[case]
  data = batches()
  ours, our_weights = train_mind_jax(checkpoint, data, opt=opt, z_loss=z_loss)
  theirs, their_weights = train_torch(checkpoint, data, opt=opt, z_loss=z_loss)
  np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-5)
  # The logged metrics are those of the update each step made: its rate and the norm of
  # the gradients it started from.
  np.testing.assert_allclose(ours["lr"], theirs["lr"], rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(ours["grad_norm"], theirs["grad_norm"], rtol=1e-5)
  assert set(our_weights) == set(their_weights)
  worst = max(np.abs(our_weights[n] - their_weights[n]).max() for n in their_weights)
  assert worst < 1e-5, worst


def test_gradient_accumulation_equals_the_large_batch(checkpoint):
  data = batches(1, packed=True)
  plain, plain_weights = train_mind_jax(checkpoint, data)
  accumulated, accumulated_weights = train_mind_jax(checkpoint, data, microbatches=4)
  np.testing.assert_allclose(accumulated["loss"], plain["loss"], rtol=1e-6)
  for name, value in plain_weights.items():
    np.testing.assert_allclose(accumulated_weights[name], value, atol=1e-6)


def test_an_8_device_mesh_equals_one_device(checkpoint):
  data = batches(2, packed=True)
  one, one_weights = train_mind_jax(checkpoint, data)
  eight, eight_weights = train_mind_jax(
      checkpoint, data, mesh=make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), microbatches=2)
  np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
  for name, value in one_weights.items():
    np.testing.assert_allclose(eight_weights[name], value, atol=1e-5)


def test_scanned_and_rematerialised_layers_train_the_same(checkpoint):
  data = batches(3, packed=True)
  plain, _ = train_mind_jax(checkpoint, data)
  scanned, weights = train_mind_jax(checkpoint, data, scan_layers=True, remat="full")
  np.testing.assert_allclose(scanned["loss"], plain["loss"], rtol=1e-5)
  assert weights["model.layers.self_attn.q_proj.weight"].shape[0] == 2  # stacked: one per layer


# --- the optimizer's rules, the held-out loss and the FLOP count, against hand arithmetic -------

@pytest.mark.parametrize("schedule, expected", [
    # at step:    0    1    2    4          6    10
    ("constant", [0.0, 1.0, 2.0, 2.0,       2.0, 2.0]),
    ("linear",   [0.0, 1.0, 2.0, 1.55,      1.1, 0.2]),  # 2 - 1.8 x (step - 2) / 8
    ("cosine",   [0.0, 1.0, 2.0, 1.7363961, 1.1, 0.2]),  # 0.2 + 0.9 x (1 + cos(pi (step - 2) / 8))
])
def test_the_learning_rate_warms_up_from_0_to_the_peak_then_decays_to_the_end_rate(
    schedule, expected):
  # Peak 2 (not 1), so a rule that confuses the end rate with its ratio to the peak shows.
  opt = OptimizerSection(learning_rate=2.0, end_learning_rate=0.2, warmup_steps=2,
                         schedule=schedule)
  rates = learning_rate(opt, 10)
  np.testing.assert_allclose([float(rates(s)) for s in (0, 1, 2, 4, 6, 10)], expected,
                             rtol=1e-6)


def test_without_warmup_the_first_update_runs_at_the_peak():
  rates = learning_rate(OptimizerSection(learning_rate=2.0, warmup_steps=0), 10)
  assert float(rates(0)) == pytest.approx(2.0)


LLAMA_PARAMETER_NAMES = [
    "model.embed_tokens.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.post_attention_layernorm.weight",
    "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.norm.weight",
    "lm_head.weight",
]


@pytest.mark.parametrize("decay_embeddings", [True, False])
def test_weight_decay_spares_norm_scales_and_the_embeddings_and_head_unless_asked(
    decay_embeddings):
  import jax.numpy as jnp
  import optax
  opt = OptimizerSection(learning_rate=0.1, weight_decay=0.5, warmup_steps=0,
                         schedule="constant", decay_embeddings=decay_embeddings)
  tx = optimizer(opt, 1)
  params = {name: jnp.ones(3) for name in LLAMA_PARAMETER_NAMES}
  # With zero gradients AdamW's step is its decay alone: w -> w x (1 - lr x wd) = 0.95.
  grads = {name: jnp.zeros(3) for name in LLAMA_PARAMETER_NAMES}
  updates, _ = tx.update(grads, tx.init(params), params)
  after = optax.apply_updates(params, updates)
  spared = {"model.layers.0.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight", "model.norm.weight"}
  if not decay_embeddings:
    spared |= {"model.embed_tokens.weight", "lm_head.weight"}
  for name in LLAMA_PARAMETER_NAMES:
    np.testing.assert_allclose(after[name], 1.0 if name in spared else 0.95, rtol=1e-6,
                               err_msg=name)


def test_the_held_out_loss_is_the_token_mean_over_every_batch_it_reads(checkpoint):
  import grain
  import transformers
  from mind_jax.training._hooks import held_out_loss
  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  model, _, _ = load_model(ModelSection(path=checkpoint), mesh, "train")
  trainer = Trainer.create(model.config, mesh, OPT.build(STEPS))
  state = trainer.init_state(flat_params(model))
  held_out = batches(5)[:3]
  loss = held_out_loss(trainer, state, grain.MapDataset.source(held_out).to_iter_dataset(), 3)
  reference = transformers.LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
  with torch.no_grad():
    per_batch = [reference(torch.tensor(b["tokens"], dtype=torch.long),
                           labels=torch.tensor(b["tokens"], dtype=torch.long)).loss.item()
                 for b in held_out]
  # Every batch weighs B x (L - 1) tokens, so the mean over all tokens is that of the batches.
  assert loss == pytest.approx(np.mean(per_batch), rel=1e-5), per_batch


def test_step_flops_counts_causal_attention_at_a_long_sequence():
  import dataclasses
  from mind_jax.nn import LlamaConfig
  from mind_jax.training import step_flops
  config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32)
  seq, rows = 8192, 2
  tokens = seq * rows
  # The weights each token multiplies: per layer q and o (64 x 4 heads x 32), k and v
  # (64 x 2 heads x 32), the MLP (3 x 64 x 96) and two norm scales; the final norm; the head
  # (64 x 300). Not the embedding table, a lookup. 2 FLOPs forward, 4 backward, per weight.
  per_layer = 2 * 64 * 128 + 2 * 64 * 64 + 3 * 64 * 96 + 2 * 64
  weights = 2 * per_layer + 64 + 64 * 300
  # Attention, per token and layer: scores (q . k) and the sum over v, each a multiply-add
  # (2 FLOPs) per key and width (4 heads x 32 = 128); causal, a query sees seq/2 keys on
  # average. Backward is twice forward.
  forward = 2 * 2 * (seq // 2) * 128
  attention = 2 * 3 * forward
  assert attention > 10 * 6 * weights  # at this length attention is most of the work
  assert step_flops(config, tokens, seq) == tokens * (6 * weights + attention)
  # Tied embeddings: the table serves as the head, whose matmul still runs.
  tied = dataclasses.replace(config, tie_word_embeddings=True)
  assert step_flops(tied, tokens, seq) == tokens * (6 * weights + attention)


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
                           cfg.optimizer.build(cfg.steps))
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


def test_a_run_whose_steps_are_not_a_multiple_of_checkpoint_every_saves_its_last_step(tmp_path):
  workdir = tmp_path / "run"
  _run(workdir, "steps=10")  # checkpoint.every=3: saves after steps 3, 6, 9 and the last, 10
  assert _saved(workdir)[-1] == 10
  # So rerunning the finished command finds it finished: no step is trained again.
  done = _run(workdir, "steps=10")
  last = read_metrics(workdir)[-1]
  assert last["step"] == 10 and f"final_loss: {last['loss']}" in done.stdout, done.stdout
  assert "already_complete: True" in done.stdout and "the run is already complete" in done.stderr
  assert _steps_logged(workdir) == 10


def test_a_finished_run_extended_to_more_steps_continues_with_the_schedule_of_its_new_length(
    tmp_path):
  """steps=6 finished, then the same command with steps=10: it resumes at step 6 (nothing
  trained twice), and from there the rate is the schedule for 10 steps (written out here),
  said in run.json and as a marker line in metrics.jsonl. Any other change stays refused."""
  workdir = tmp_path / "run"
  linear = ["optimizer.schedule=linear", "optimizer.end_learning_rate=1e-4"]
  _run(workdir, "steps=6", *linear)
  extended = _run(workdir, "steps=10", *linear)
  assert "extending the run from 6 to 10 steps at step 6" in extended.stderr
  opt = OptimizerSection(schedule="linear", learning_rate=1e-3, end_learning_rate=1e-4,
                         warmup_steps=2)
  # The update of logged step n runs at the rate of n - 1 updates done.
  expected = [torch_learning_rate(opt, n - 1, steps=6 if n <= 6 else 10) for n in range(1, 11)]
  logged = read_metrics(workdir)
  assert [m["step"] for m in logged] == list(range(1, 11))
  np.testing.assert_allclose([m["lr"] for m in logged], expected, rtol=1e-6)
  with open(workdir / "metrics.jsonl") as f:
    events = [json.loads(line) for line in f if "event" in line]
  assert events == [{"step": 6, "event": "extended", "from_steps": 6, "to_steps": 10}]
  with open(workdir / "run.json") as f:
    record = json.load(f)
  assert record["settings"]["steps"] == 10
  assert record["notes"]["extended"] == [{"from_steps": 6, "to_steps": 10, "at_step": 6}]
  shorter = subprocess.run(_command(workdir, "steps=8", *linear), capture_output=True,
                           text=True, env=_env())
  assert shorter.returncode == 2 and "steps (10 -> 8)" in shorter.stderr


def test_with_a_constant_rate_an_extended_run_ends_as_one_made_in_one_go(tmp_path):
  constant = "optimizer.schedule=constant"
  _run(tmp_path / "extended", "steps=6", constant)
  _run(tmp_path / "extended", "steps=10", constant)
  _run(tmp_path / "one_go", "steps=10", constant)
  from safetensors.numpy import load_file
  extended, one_go = (load_file(str(tmp_path / name / "hf" / "model.safetensors"))
                      for name in ("extended", "one_go"))
  assert extended.keys() == one_go.keys()
  assert all(np.array_equal(extended[k], one_go[k]) for k in one_go)  # bit for bit
  assert [m["loss"] for m in read_metrics(tmp_path / "extended")] == [
      m["loss"] for m in read_metrics(tmp_path / "one_go")]


def test_checkpoint_keep_holds_the_newest_and_export_every_writes_the_weights_of_its_steps(
    tmp_path):
  """checkpoint.keep=2 of saves at 3, 6, 9, 12: the newest two stay; extended to 15 with
  keep=1, the run restores 12 and keeps 15 alone. export.every=4 writes
  hf-step4 and hf-step8 (not hf-step12: the final export is hf/), each equal to the final
  export of a run that stops there (constant rate, so the schedules agree)."""
  constant = "optimizer.schedule=constant"
  workdir = tmp_path / "run"
  _run(workdir, "checkpoint.keep=2", "export.every=4", constant)
  assert _saved(workdir) == [9, 12]
  assert sorted(n for n in os.listdir(workdir) if n.startswith("hf-step")) == ["hf-step4",
                                                                              "hf-step8"]
  _run(workdir, "steps=15", "checkpoint.keep=1", "export.every=4", constant)
  assert _saved(workdir) == [15]
  from safetensors.numpy import load_file
  _run(tmp_path / "four", "steps=4", constant)
  step4, four = (load_file(str(d / "model.safetensors"))
                 for d in (workdir / "hf-step4", tmp_path / "four" / "hf"))
  assert step4.keys() == four.keys() and all(np.array_equal(step4[k], four[k]) for k in four)


def test_mfu_is_the_hand_counted_flops_per_second_over_the_peak_of_every_device(tmp_path):
  workdir = tmp_path / "run"
  _run(workdir, "steps=2", "peak_flops=1e12")  # 4 devices, the batch split over them
  # The tiny preset: per layer q and o (64 x 64), k and v (64 x 2 heads x 16), the MLP
  # (3 x 64 x 160), two norm scales; the final norm; the head (64 x 512); 6 FLOPs per weight
  # and token. Causal attention: 6 x 64 positions x width 64 per layer and token.
  per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 160 + 2 * 64
  weights = 2 * per_layer + 64 + 64 * 512
  attention = 2 * 6 * 64 * 64
  flops = 4 * 64 * (6 * weights + attention)  # batch_size=4 rows of seq_len=64
  for m in read_metrics(workdir):
    assert m["mfu"] == pytest.approx(flops / m["step_seconds"] / (4 * 1e12), rel=1e-9), m


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
  assert done.returncode == 1  # not bad input: the run diverged
  line = done.stderr.strip().splitlines()[-1]
  assert line.startswith("error: step ") and "the loss is nan" in line
  step = int(line.split()[2].rstrip(":"))
  assert _saved(workdir)[-1] == step - 1
  assert f"the last good checkpoint (step {step - 1}) is kept in {workdir}/checkpoints" in line


def test_a_run_diverging_before_its_first_checkpoint_says_none_was_written(tmp_path):
  from mind_jax import Diverged, MindJaxError
  assert not issubclass(Diverged, MindJaxError)  # library callers tell it from bad input
  done = subprocess.run(_command(tmp_path / "run", "optimizer.learning_rate=1e30",
                                 "optimizer.clip_norm=null", "checkpoint.every=100"),
                        capture_output=True, text=True, env=_env())
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1].endswith(
      "no checkpoint was written yet; lower optimizer.learning_rate or check the data")


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
  # A preemption notice reaches process 0 alone, after step 2: the hosts compare notices at
  # the next checkpoint (step 3), so both save step 3, stop there and exit 0.
  two_processes(notice_after_step=2)
  assert _saved(multi) == [3] and _steps_logged(multi) == 3
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
