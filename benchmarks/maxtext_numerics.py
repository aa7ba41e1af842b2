"""Numerics: the first training losses of MaxText and of mind_jax from the same weights on the
same tokens, fp32 on CPU.

Both sides start from one HF-format Llama checkpoint made here (transformers'
LlamaForCausalLM, random weights, norm scales perturbed away from 1 so a misplaced norm
shows) and train on one fixed sequence of token batches, each stack in its own process:

  maxtext           MaxText's trainer (`python -m maxtext.trainers.pre_train.train`) in its
                    venv (benchmarks/maxtext_venv.sh), decoupled from Google Cloud, hardware=cpu.
                    Weights: MaxText's own HF -> MaxText converter (checkpoint_conversion's
                    to_maxtext). Its model_name must be one MaxText lists, each with a fixed
                    HF config, so the tiny model's HF config takes llama3.1-8b's place in the
                    converter's table, in-process, and the sizes are given on the command line
                    (override_model_config=true); the Llama 3.1 parameter mapping and hooks
                    follow the config. Its lazy reader (the default) cannot be saved by the
                    Orbax its venv resolves, and its eager reader needs torch, which that venv
                    lacks: the eager path runs with safetensors giving numpy arrays. The
                    result is loaded by load_parameters_path.
                    Tokens: dataset_type=olmo_grain, MaxText's reader of pre-tokenized uint32
                    token windows, n-gram filter off. It shuffles windows with a fixed
                    permutation, so the file is written in the order that makes its batches
                    ours (the permutation is taken from MaxText's own sampler, and the loader's
                    first batches are checked against ours before training).
  mind_jax          our Trainer (mind_jax.training) on the same checkpoint
                    (mind_jax.ckpts.load_pretrained) and the same rows, one document per row.
  mind_jax+mtq      control: the same, with the optimizer run in MaxText's coordinates for
                    the query projections (see "Query scale" below). Not a library setting:
                    a wrapper around our optimizer, built in this script.
  ablations         (--no-ablations leaves them out) MaxText runs that each undo one setting
                    (ABLATIONS), compared with the control, to show what that setting is worth.

Settings shared by both: fp32 weights and compute; AdamW b1 0.9, b2 0.95, eps 1e-8, weight
decay 0.1 on all but the norm scales, global-norm clipping (--clip-norm, 0.5: below this
model's gradient norms, so every step is clipped), a constant learning rate (--lr, 1e-3; no
warmup; MaxText: wsd schedule with no warmup and no decay); no dropout, no z-loss; scanned
layers and full remat on both. Each row of T tokens gives T-1 targets on both sides, and the
loss is the mean over them.

Data: a seeded first-order Markov chain over the vocabulary (each token has 4 likely
successors), so the loss has somewhere to go in 10 steps; rows start at random tokens.

Differences found, and what was done (also written to the JSON):
  - Query scale (remains; explained by the control): MaxText folds Llama's 1/sqrt(head_dim)
    attention scale into the query weights (its converter multiplies q_proj by it, its
    attention does not scale); we keep HF's weights and scale at run time. The same function,
    so step 0's losses agree exactly; but AdamW is not invariant to the reparametrisation:
    in MaxText's coordinates the query gradient is sqrt(head_dim) times larger (which also
    changes the global norm the clipping divides by) and each step moves the query weights
    sqrt(head_dim) times further in HF terms. No setting removes it: MaxText's
    query_pre_attn_scalar is not passed by its llama2 decoder layer, and ours has no way to
    fold the scale. The control mind_jax+mtq (our step, the optimizer moved into MaxText's
    coordinates for q_proj) matches MaxText to fp32 round-off, so this is the whole
    difference.
  - Weight-decay mask (resolved): MaxText decays every parameter by default; adamw_mask=[norm]
    leaves out its three norm scales, as ours does (embeddings and head decayed on both). The
    ablation "maxtext, norms decayed" shows what it is worth.
  - RoPE (resolved): MaxText's llama3.1 RoPE rotates interleaved pairs and hard-codes Llama
    3.1's scaling (factor 8, low/high frequency factors 1 and 4, original context 8192); its
    converter permutes the q/k projections to match. The checkpoint here uses exactly those
    constants. The ablation "maxtext, RoPE unscaled" (rope_use_scale=false) shows what they
    are worth at this sequence length (little: the scaling only touches wavelengths over
    2048 positions).
  - Last position's target (none): MaxText's olmo_grain reader masks each row's last position
    as ours does; both count B x (T-1) targets (checked in the loader and in MaxText's logged
    total_weights).
  - Loss normalisation (round-off): both divide the summed cross-entropy by the target count;
    MaxText adds 1e-8 to the count and sums a one-hot product where ours gathers the target.
  - Gradient clipping (none): both use optax.clip_by_global_norm over every gradient; what
    differs is the norm of MaxText's query gradients (see the first item).
  - Attention kernel (round-off): MaxText's CPU dot_product attention against our blocked
    causal attention: the same sums in a different order.
  - Versions (round-off): each side on its own venv's JAX/flax/optax (JAX 0.10 against 0.12
    here; listed in the JSON).

  python benchmarks/maxtext_numerics.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(REPO, "docs", "results", "maxtext_numerics.json")
# MaxText's config accepts only the model names it lists; the converter's entry for this one is
# replaced by the tiny model's HF config in the converting process (maxtext_prepare).
MODEL_NAME = "llama3.1-8b"

# The checkpoint's architecture (HF keys) and, written down separately, the same model in
# MaxText's keys; check_same_model compares the two before anything runs.
HF_CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                 max_position_embeddings=16384, tie_word_embeddings=False,
                 rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192})
MAXTEXT_MODEL = dict(base_emb_dim=64, base_num_query_heads=4, base_num_kv_heads=2,
                     base_mlp_dim=160, base_num_decoder_layers=2, head_dim=16, vocab_size=256,
                     normalization_layer_epsilon=1e-5, logits_via_embedding=False,
                     decoder_block="llama2", rope_type="llama3.1", rope_use_scale=True,
                     rope_max_timescale=500000, rope_min_timescale=1)

OPTIMIZER = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)  # + --lr, --clip-norm


def check_same_model() -> None:
  hf, mt = HF_CONFIG, MAXTEXT_MODEL
  rope = hf["rope_parameters"]
  pairs = {"width": (hf["hidden_size"], mt["base_emb_dim"]),
           "heads": (hf["num_attention_heads"], mt["base_num_query_heads"]),
           "kv heads": (hf["num_key_value_heads"], mt["base_num_kv_heads"]),
           "mlp": (hf["intermediate_size"], mt["base_mlp_dim"]),
           "layers": (hf["num_hidden_layers"], mt["base_num_decoder_layers"]),
           "head dim": (hf["head_dim"], mt["head_dim"]),
           "vocab": (hf["vocab_size"], mt["vocab_size"]),
           "eps": (hf["rms_norm_eps"], mt["normalization_layer_epsilon"]),
           "tied": (hf["tie_word_embeddings"], mt["logits_via_embedding"]),
           "theta": (rope["rope_theta"], mt["rope_max_timescale"]),
           # MaxText's llama3.1 RoPE hard-codes these (layers/embeddings.py)
           "rope factor": (rope["factor"], 8.0), "low freq": (rope["low_freq_factor"], 1.0),
           "high freq": (rope["high_freq_factor"], 4.0),
           "original context": (rope["original_max_position_embeddings"], 8192)}
  wrong = {k: v for k, v in pairs.items() if float(v[0]) != float(v[1])}
  if wrong:
    raise SystemExit(f"the HF and MaxText descriptions of the model disagree (HF, MaxText): "
                     f"{wrong}")


# --- inputs, made in our venv ------------------------------------------------------------------
def make_checkpoint(path: str, seed: int) -> None:
  """A random transformers Llama in fp32 safetensors, norm scales 1 + 0.1 N(0, 1)."""
  import torch
  import transformers
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF_CONFIG)).float()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1 + 0.1 * torch.randn_like(p))
  model.save_pretrained(path)


def make_rows(n_rows: int, seq_len: int, vocab: int, seed: int):
  """Rows of a first-order Markov chain: each token's next is one of 4 fixed successors
  (probabilities .55/.25/.15/.05), so a model can learn something in a few steps."""
  import numpy as np
  rs = np.random.RandomState(seed)
  successors = np.stack([rs.permutation(vocab)[:4] for _ in range(vocab)])
  rows = np.empty((n_rows, seq_len), np.int64)
  rows[:, 0] = rs.randint(0, vocab, n_rows)
  for t in range(1, seq_len):
    pick = rs.choice(4, size=n_rows, p=[0.55, 0.25, 0.15, 0.05])
    rows[:, t] = successors[rows[:, t - 1], pick]
  return rows.astype(np.int32)


# --- MaxText's side, run in its venv -------------------------------------------------------------
def maxtext_keys(args, workdir: str) -> dict:
  """Everything but the architecture that the converter and the trainer are given."""
  return dict(
      run_name="numerics", base_output_directory=workdir, hardware="cpu",
      skip_jax_distributed_system=True, dtype="float32", weight_dtype="float32",
      scan_layers=True, remat_policy="full", attention="dot_product", enable_dropout=False,
      per_device_batch_size=args.batch, max_target_length=args.seq_len, steps=args.steps,
      enable_checkpointing=False, enable_tensorboard=False, log_config=False, jax_cache_dir="")


def _value(v) -> str:
  return str(v).lower() if isinstance(v, bool) else str(v)


def maxtext_prepare(args) -> None:
  """In MaxText's venv: convert the checkpoint with MaxText's converter (the tiny model in
  MODEL_NAME's place), write the token file in the order its olmo_grain sampler reads it, and
  check that its loader yields our batches."""
  import numpy as np
  import transformers
  import maxtext
  from maxtext.checkpoint_conversion import to_maxtext
  from maxtext.input_pipeline.olmo_data import load_index
  from maxtext.input_pipeline.olmo_data_grain import OlmoIndexSampler, make_olmo_grain_data_loader

  work = args.workdir
  rows = np.load(os.path.join(work, "rows.npy"))
  n_rows, seq_len = rows.shape
  # The sampler emits file window order[i] as the i-th row read; put our row i there.
  order = OlmoIndexSampler(total_instances=n_rows, seed=args.data_seed).shard_indices(
      seed=args.data_seed, epoch=0).astype(np.int64)
  laid_out = np.empty_like(rows)
  laid_out[order] = rows
  token_file = os.path.join(work, "tokens.u32")
  laid_out.astype(np.uint32).tofile(token_file)
  index = {"format_version": "1", "sequence_length": seq_len, "dtype": "uint32",
           "tokenizer": "none (token ids)", "total_instances": n_rows,
           "total_tokens": n_rows * seq_len, "fingerprint": f"rows-{n_rows}x{seq_len}",
           "files": [{"path": token_file, "label": "numerics", "n_tokens": n_rows * seq_len,
                      "n_instances": n_rows, "instance_offset": 0}]}
  with open(os.path.join(work, "index.json"), "w") as f:
    json.dump(index, f)
  loader = make_olmo_grain_data_loader(
      load_index(os.path.join(work, "index.json")), seed=args.data_seed, batch_size=args.batch,
      shard_index=0, shard_count=1, apply_ngram_filter=False)
  for step, batch in zip(range(args.steps), iter(loader)):
    want = rows[step * args.batch:(step + 1) * args.batch]
    if not np.array_equal(batch["inputs"], want):
      raise SystemExit(f"MaxText's loader does not give our batch {step}")
    scored = batch["targets_segmentation"]
    if scored[:, -1].any() or not scored[:, :-1].all():
      raise SystemExit("MaxText's loader masks other positions than each row's last")

  # The converter reads the model's sizes from its table of HF configs (the Llama 3.1 mapping
  # and hooks take layer count and head_dim from there): put the tiny model's in.
  hf_dir = os.path.join(work, "hf")
  to_maxtext.HF_MODEL_CONFIGS[MODEL_NAME] = transformers.LlamaConfig.from_pretrained(hf_dir)
  root = os.path.dirname(maxtext.__file__)
  keys = {**MAXTEXT_MODEL, **maxtext_keys(args, os.path.join(work, "mt_ckpt")),
          "model_name": MODEL_NAME, "override_model_config": True,
          # a local file, so nothing asks the Hub for llama3.1-8b's tokenizer (none is used)
          "tokenizer_path": os.path.join(root, "assets", "tokenizers", "tokenizer.llama2")}
  base_yml = os.path.join(root, "configs", "base.yml")
  # Its lazy reader (the default) hands Orbax proxy objects that the Orbax this venv resolves
  # cannot save (NoEntryError: no handler for the TrainState holding them); its eager reader
  # asks safetensors for torch tensors, and this venv has no torch. So: the eager path, with
  # safetensors giving numpy arrays, which its tensor conversion accepts as they are.
  read = to_maxtext.load_hf_dict_from_safetensors
  to_maxtext.load_hf_dict_from_safetensors = (
      lambda path, token=None, revision=None, framework=None: read(path, token, revision, "np"))
  to_maxtext.main([sys.argv[0], base_yml] + [f"{k}={_value(v)}" for k, v in keys.items()],
                  lazy_load_tensors=False, eager_load_method="safetensors", hf_model_path=hf_dir,
                  save_dtype="float32", simulated_cpu_devices_count=1)
  print("PREPARED", flush=True)


# MaxText runs that each undo one of the settings above, to show what that setting is worth
# (their losses against the control's): name -> (keys changed, keep adamw_mask).
ABLATIONS = {
    "maxtext, norms decayed": ({}, False),  # its default mask: every parameter decayed
    "maxtext, RoPE unscaled": ({"rope_use_scale": False}, True),  # plain Llama RoPE frequencies
}


def _tag(name: str) -> str:
  """A run's name as a file name."""
  return "".join(c if c.isalnum() else "_" for c in name)


def maxtext_train_command(python: str, args, work: str, name: str, changed: dict | None = None,
                          mask: bool = True) -> list[str]:
  import_base = subprocess.run([python, "-c", "import maxtext, os; print(os.path.dirname("
                                "maxtext.__file__))"], capture_output=True, text=True, check=True)
  base_yml = os.path.join(import_base.stdout.strip(), "configs", "base.yml")
  tag = _tag(name)
  keys = {**MAXTEXT_MODEL, **maxtext_keys(args, os.path.join(work, f"run_{tag}")),
          "load_parameters_path": os.path.join(work, "mt_ckpt", "0", "items"),
          "dataset_type": "olmo_grain", "olmo_index_path": os.path.join(work, "index.json"),
          "olmo_apply_ngram_filter": False, "grain_worker_count": 0,
          "data_shuffle_seed": args.data_seed, "packing": False,
          "metrics_file": os.path.join(work, f"metrics_{tag}.jsonl"),
          "opt_type": "adamw", "learning_rate": args.lr, "adam_b1": OPTIMIZER["b1"],
          "adam_b2": OPTIMIZER["b2"], "adam_eps": OPTIMIZER["eps"],
          "adam_weight_decay": OPTIMIZER["weight_decay"],
          "gradient_clipping_threshold": args.clip_norm,
          "lr_schedule_type": "wsd", "warmup_steps_fraction": 0.0,
          "wsd_decay_steps_fraction": 0.0, "z_loss_multiplier": 0.0, **(changed or {})}
  return ([python, "-m", "maxtext.trainers.pre_train.train", base_yml]
          + [f"{k}={_value(v)}" for k, v in keys.items()]
          + (["adamw_mask=[norm]"] if mask else []))  # no decay on the norm scales, as ours


# --- our side ---------------------------------------------------------------------------------
def query_in_maxtext_coordinates(inner, scale: float):
  """`inner` (our optimizer over the flat {name: array} params) run as MaxText runs it on the
  query projections, whose stored weights are `scale` (1/sqrt(head_dim)) times HF's: the
  gradient it sees is ours / scale, the decay acts on weights x scale, and its update, in HF
  terms, is divided by scale. Everything else passes through unchanged."""
  import optax

  def apply(tree, factor):
    return {n: (v * factor if "q_proj" in n else v) for n, v in tree.items()}

  def update(grads, state, params=None):
    theirs = None if params is None else apply(params, scale)
    updates, state = inner.update(apply(grads, 1 / scale), state, theirs)
    return apply(updates, 1 / scale), state

  return optax.GradientTransformation(inner.init, update)


def ours_worker(args) -> None:
  import jax
  import numpy as np
  from mind_jax.ckpts import load_pretrained
  from mind_jax.data import whole_document_rows
  from mind_jax.sharding import make_mesh
  from mind_jax.training import OptimizerSection, Trainer
  from mind_jax.training._step import flat_params, host_metrics

  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  model, _ = load_pretrained(os.path.join(args.workdir, "hf"), dtype="float32", mesh=mesh,
                             rules="train", scan_layers=True, remat="full", progress=False)
  opt = OptimizerSection(warmup_steps=0, schedule="constant", learning_rate=args.lr,
                         clip_norm=args.clip_norm, **OPTIMIZER)
  tx = opt.build(args.steps)
  if args.variant == "mtq":
    tx = query_in_maxtext_coordinates(tx, 1.0 / float(np.sqrt(model.config.resolved_head_dim)))
  trainer = Trainer.create(model.config, mesh, tx)
  state = trainer.init_state(flat_params(model))
  del model
  rows = np.load(os.path.join(args.workdir, "rows.npy"))
  losses, grad_norms, lrs = [], [], []
  for step in range(args.steps):
    tokens = rows[step * args.batch:(step + 1) * args.batch]
    batch = {k: jax.device_put(v, trainer.batch_sharding)
             for k, v in whole_document_rows(tokens).items()}
    state, metrics = trainer.train_step(state, batch)
    metrics = host_metrics(metrics)
    losses.append(metrics["loss"])
    grad_norms.append(metrics["grad_norm"])
    lrs.append(metrics["lr"])
  print("RESULT " + json.dumps({"losses": losses, "grad_norms": grad_norms, "lrs": lrs,
                                "jax": jax.__version__}), flush=True)


# --- driver -----------------------------------------------------------------------------------
def run(cmd: list[str], log_path: str, cwd: str, env: dict) -> str:
  start = time.perf_counter()
  with open(log_path, "w") as log:
    rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env).returncode
  with open(log_path) as f:
    text = f.read()
  if rc:
    tail = "\n".join(text.strip().splitlines()[-25:])
    raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {rc}); log {log_path}:\n{tail}")
  print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
  return text


def maxtext_metrics(path: str) -> dict:
  rows = []
  with open(path) as f:
    for line in f:
      if line.strip():
        rows.append(json.loads(line))
  rows.sort(key=lambda r: r["step"])
  return {"losses": [r["learning/loss"] for r in rows],
          "raw_grad_norms": [r.get("learning/raw_grad_norm") for r in rows],
          "lrs": [r.get("learning/current_learning_rate") for r in rows],
          "total_weights": [r.get("learning/total_weights") for r in rows]}


def rel_diffs(a: list[float], b: list[float]) -> list[float]:
  return [abs(x - y) / abs(y) for x, y in zip(a, b)]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--lr", type=float, default=1e-3, help="constant learning rate")
  parser.add_argument("--clip-norm", type=float, default=0.5,
                      help="global-norm clipping; the default is below this model's gradient "
                           "norms (about 0.7-0.85), so every step is clipped and the clipping "
                           "is compared too")
  parser.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True,
                      help="also the MaxText runs that undo one setting each (ABLATIONS)")
  parser.add_argument("--seed", type=int, default=0, help="weights and tokens")
  parser.add_argument("--data-seed", type=int, default=0, help="MaxText's data_shuffle_seed")
  parser.add_argument("--tolerance", type=float, default=1e-4, help="max relative difference")
  parser.add_argument("--maxtext-venv", default=os.environ.get("MAXTEXT_VENV",
                                                                "/work/venvs/maxtext"))
  parser.add_argument("--out", default=DEFAULT_OUT)
  parser.add_argument("--logs", default=os.path.join(REPO, "bench_out", "maxtext_numerics"))
  parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
  parser.add_argument("--role", choices=["driver", "maxtext-prepare", "ours"], default="driver",
                      help=argparse.SUPPRESS)
  parser.add_argument("--variant", choices=["plain", "mtq"], default="plain",
                      help=argparse.SUPPRESS)
  parser.add_argument("--workdir", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.role == "maxtext-prepare":
    return maxtext_prepare(args)
  if args.role == "ours":
    return ours_worker(args)

  check_same_model()
  sys.path.insert(0, HERE)
  from maxtext_train_cpu import child_env, versions
  mt_python = os.path.join(args.maxtext_venv, "bin", "python")
  if not os.access(mt_python, os.X_OK):
    raise SystemExit(f"no MaxText venv at {args.maxtext_venv}; run benchmarks/maxtext_venv.sh")
  import numpy as np
  os.makedirs(args.logs, exist_ok=True)
  work = tempfile.mkdtemp(prefix="maxtext_numerics_")
  env = child_env()
  # The MaxText helper role imports nothing of ours; our workers take mind_jax from this tree.
  env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  common = ["--steps", str(args.steps), "--batch", str(args.batch), "--seq-len",
            str(args.seq_len), "--lr", repr(args.lr), "--clip-norm", repr(args.clip_norm),
            "--data-seed", str(args.data_seed),
            "--workdir", work]
  me = os.path.abspath(__file__)
  try:
    print("making the HF checkpoint and the token rows", flush=True)
    make_checkpoint(os.path.join(work, "hf"), args.seed)
    # Two spare batches: the sampler's permutation then covers more than the steps read.
    rows = make_rows((args.steps + 2) * args.batch, args.seq_len, HF_CONFIG["vocab_size"],
                     args.seed)
    np.save(os.path.join(work, "rows.npy"), rows)
    print("maxtext: converting the checkpoint, laying out the tokens", flush=True)
    run([mt_python, me, "--role", "maxtext-prepare", *common],
        os.path.join(args.logs, "maxtext-prepare.log"), work, env)
    results = {}
    runs = {"maxtext": ({}, True), **(ABLATIONS if args.ablations else {})}
    for name, (changed, mask) in runs.items():
      print(f"{name}: training", flush=True)
      cmd = maxtext_train_command(mt_python, args, work, name, changed, mask)
      run(cmd, os.path.join(args.logs, f"{_tag(name)}.log"), work, env)
      results[name] = maxtext_metrics(os.path.join(work, f"metrics_{_tag(name)}.jsonl"))
    for variant, name in (("plain", "mind_jax"), ("mtq", "mind_jax+mtq")):
      print(f"{name}: training", flush=True)
      text = run([sys.executable, me, "--role", "ours", "--variant", variant, *common],
                 os.path.join(args.logs, f"{name}.log"), work, env)
      line = [l for l in text.splitlines() if l.startswith("RESULT ")][-1]
      results[name] = json.loads(line[len("RESULT "):])
  finally:
    if args.keep:
      print(f"kept {work}")
    else:
      shutil.rmtree(work, ignore_errors=True)

  mt = results["maxtext"]["losses"]
  ours = results["mind_jax"]["losses"]
  control = results["mind_jax+mtq"]["losses"]
  if len(mt) != args.steps:
    raise SystemExit(f"MaxText logged {len(mt)} losses, expected {args.steps}")
  diff, diff_control = rel_diffs(ours, mt), rel_diffs(control, mt)
  print(f"\n{'step':>4s} {'maxtext':>12s} {'mind_jax':>12s} {'rel diff':>10s} "
        f"{'mind_jax+mtq':>13s} {'rel diff':>10s}")
  for i in range(args.steps):
    print(f"{i:4d} {mt[i]:12.7f} {ours[i]:12.7f} {diff[i]:10.2e} {control[i]:13.7f} "
          f"{diff_control[i]:10.2e}")
  print(f"max relative difference: mind_jax {max(diff):.2e}, mind_jax+mtq {max(diff_control):.2e}"
        f" (tolerance {args.tolerance:g})")
  # Each ablation against the run that matches MaxText's default one (the control).
  ablations = {name: max(rel_diffs(results[name]["losses"], control))
               for name in ABLATIONS if name in results}
  for name, worst in ablations.items():
    print(f"{name}: max relative difference from mind_jax+mtq {worst:.2e}")
  record = {
      "date": datetime.datetime.now().isoformat(timespec="seconds"),
      "machine": f"{platform.machine()}, {os.cpu_count()} cores",
      "settings": {"steps": args.steps, "batch": args.batch, "seq_len": args.seq_len,
                   "learning_rate": args.lr, "schedule": "constant", "clip_norm": args.clip_norm,
                   "seed": args.seed, "data_shuffle_seed": args.data_seed,
                   "optimizer": OPTIMIZER, "dtype": "float32", "scan_layers": True,
                   "remat": "full", "hf_config": HF_CONFIG, "maxtext_model_keys": MAXTEXT_MODEL,
                   "maxtext_other_keys": {k: v for k, v in maxtext_keys(args, "WORK").items()
                                          if k != "base_output_directory"},
                   "maxtext_adamw_mask": ["norm"],
                   "ablations": {k: {"changed": c, "adamw_mask": ["norm"] if m else []}
                                 for k, (c, m) in ABLATIONS.items()},
                   "data": "first-order Markov chain rows (4 successors per token, "
                           "p .55/.25/.15/.05)",
                   "targets_per_row": args.seq_len - 1},
      "versions": {"mind_jax venv": versions(sys.executable), "maxtext venv": versions(mt_python)},
      "losses": {"maxtext": mt, "mind_jax": ours, "mind_jax+mtq": control},
      "relative_difference": {"mind_jax": diff, "mind_jax+mtq": diff_control},
      "max_relative_difference": {"mind_jax": max(diff), "mind_jax+mtq": max(diff_control)},
      "tolerance": args.tolerance,
      "within_tolerance": {"mind_jax": max(diff) <= args.tolerance,
                           "mind_jax+mtq": max(diff_control) <= args.tolerance},
      "ablations_max_relative_difference_from_control": ablations,
      "details": results,
      "differences": [line.strip() for line in
                      __doc__.split("what was done (also written to the JSON):")[1]
                      .split("\n\n")[0].split("\n  - ")[1:]],
  }
  record["differences"] = [" ".join(d.split()) for d in record["differences"]]
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(record, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
