"""Calibrated int8 weights (GPTQ): which int8 values are chosen, what the calibrated model
computes, and `mind_jax.convert quantize=int8 calibration=...`.

The reference for the values is GPTQ's definition rather than its algorithm: after each
column is rounded, the columns not rounded yet take the values that minimise the output error
`(w - w0) H (w - w0)^T` given every column fixed so far (solved here directly, one linear
system per column, with no Cholesky factor or lazy block updates).
"""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from mind_jax import MindJaxError
from mind_jax.ckpts import load_pretrained
from mind_jax.nn import calibrate_int8, gptq_int8

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def reference_gptq(w0, h, order):
  """int8 values of w0 `[out, in]` for the damped Hessian `h`, columns rounded in `order`."""
  scale = np.abs(w0).max(axis=1) / 127
  w, fixed = w0.copy(), []
  values = np.zeros(w0.shape, np.int64)
  for column in order:
    values[:, column] = np.clip(np.round(w[:, column] / scale), -127, 127)
    w[:, column] = values[:, column] * scale
    fixed.append(column)
    free = [c for c in order if c not in fixed]
    if free:
      # argmin over w_F of (w - w0) H (w - w0)^T with w_S fixed: H_FF dF = -H_FS dS.
      delta = w[:, fixed] - w0[:, fixed]
      w[:, free] = w0[:, free] - np.linalg.solve(h[np.ix_(free, free)],
                                                 h[np.ix_(free, fixed)] @ delta.T).T
  return values


def correlated_inputs(rs, tokens, width):
  """Inputs whose features co-vary (as a layer's do), with a few large ones."""
  mix = rs.normal(size=(width, width)) * np.linspace(3, 0.2, width)[:, None]
  return rs.normal(size=(tokens, width)) @ mix


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("block", [128, 3])
def test_gptq_values_are_the_least_squares_choice_column_by_column(act_order, block):
  rs = np.random.RandomState(0)
  w0 = rs.normal(size=(6, 12))
  x = correlated_inputs(rs, 40, 12)
  hessian = 2 * x.T @ x
  values, scale = gptq_int8(w0, hessian, block=block, damp=0.01, act_order=act_order)
  damped = hessian + 0.01 * np.mean(np.diag(hessian)) * np.eye(12)
  order = np.argsort(-np.diag(hessian), kind="stable") if act_order else np.arange(12)
  np.testing.assert_array_equal(values, reference_gptq(w0, damped, order))
  assert values.dtype == np.int8
  np.testing.assert_allclose(scale, np.abs(w0).max(axis=1) / 127, rtol=1e-6)


def test_gptq_is_round_to_nearest_when_the_inputs_do_not_co_vary():
  rs = np.random.RandomState(1)
  w0 = rs.normal(size=(5, 16))
  values, _ = gptq_int8(w0, np.diag(rs.uniform(1, 3, 16)))
  scale = np.abs(w0).max(axis=1, keepdims=True) / 127
  np.testing.assert_array_equal(values, np.round(w0 / scale))


def test_gptq_output_error_is_well_below_round_to_nearest():
  rs = np.random.RandomState(2)
  w0 = rs.normal(size=(32, 64))
  x = correlated_inputs(rs, 512, 64)
  values, scale = gptq_int8(w0, 2 * x.T @ x)
  nearest = np.round(w0 / scale[:, None])
  error = lambda q: np.square(x @ (w0 - q * scale[:, None]).T).mean()  # noqa: E731
  assert error(values) < 0.5 * error(nearest)


def test_an_input_that_is_always_zero_gets_zero_weights():
  rs = np.random.RandomState(3)
  x = correlated_inputs(rs, 64, 8)
  x[:, 5] = 0
  values, _ = gptq_int8(rs.normal(size=(4, 8)), 2 * x.T @ x)
  assert not values[:, 5].any()


@pytest.fixture(scope="module")
def calibrated(hf_checkpoints):
  path = hf_checkpoints["llama3.1-gqa"][0]
  rs = np.random.RandomState(4)
  calibration = rs.randint(0, 256, (6, 32))
  model, tokenizer = load_pretrained(path, scan_layers=False, progress=False)
  float_model = nnx.clone(model)
  calibrate_int8(model, calibration, batch=4)
  return path, model, float_model, tokenizer, calibration


def test_the_calibrated_model_is_an_int8_model_whose_logits_are_its_values_times_scales(
    calibrated):
  path, model, float_model, _, _ = calibrated
  nearest, _ = load_pretrained(path, quantize="int8", scan_layers=False, progress=False)
  assert model.config == nearest.config
  shapes = lambda m: jax.tree.map(lambda a: (a.shape, a.dtype), nnx.state(m))  # noqa: E731
  assert shapes(model) == shapes(nearest)
  reference = nnx.clone(float_model)
  changed = 0
  for ours, theirs, ref in zip(model.model.layers, nearest.model.layers, reference.model.layers):
    for name in PROJECTIONS:
      block = "self_attn" if name in PROJECTIONS[:4] else "mlp"
      linear, rtn = getattr(getattr(ours, block), name), getattr(getattr(theirs, block), name)
      values, scale = np.asarray(linear.weight[...]), np.asarray(linear.scale[...])
      np.testing.assert_allclose(scale, np.asarray(rtn.scale[...]), rtol=1e-6)  # same scales
      changed += int((values != np.asarray(rtn.weight[...])).sum())
      getattr(getattr(ref, block), name).weight[...] = values.astype(np.float32) * scale[:, None]
  assert changed > 0  # GPTQ chose other steps than the nearest for some weights
  # The untied head is rounded to nearest (its inputs are the final hidden states).
  np.testing.assert_array_equal(np.asarray(model.lm_head.weight[...]),
                                np.asarray(nearest.lm_head.weight[...]))
  reference.lm_head.weight[...] = (np.asarray(model.lm_head.weight[...]).astype(np.float32)
                                   * np.asarray(model.lm_head.scale[...])[:, None])
  ids = np.random.RandomState(5).randint(0, 256, (2, 24))
  assert np.abs(np.asarray(model(ids)) - np.asarray(reference(ids))).max() <= 1e-4


def test_calibration_brings_the_hidden_states_closer_to_the_float_model_than_nearest_rounding(
    calibrated):
  path, model, float_model, _, calibration = calibrated
  nearest, _ = load_pretrained(path, quantize="int8", scan_layers=False, progress=False)
  positions = np.broadcast_to(np.arange(calibration.shape[1]), calibration.shape)
  hidden = lambda m: np.asarray(m.model(calibration, positions, None, None)[0])  # noqa: E731
  want = hidden(float_model)
  error = lambda m: np.square(hidden(m) - want).mean()  # noqa: E731
  assert error(model) < 0.6 * error(nearest)


def test_calibrate_refuses_what_it_cannot_do(hf_checkpoints):
  path = hf_checkpoints["llama3.1-gqa"][0]
  scanned, _ = load_pretrained(path, scan_layers=True, progress=False)
  with pytest.raises(MindJaxError, match="scan_layers=False"):
    calibrate_int8(scanned, np.zeros((1, 8), np.int32))
  int8, _ = load_pretrained(path, quantize="int8", scan_layers=False, progress=False)
  with pytest.raises(MindJaxError, match="already int8"):
    calibrate_int8(int8, np.zeros((1, 8), np.int32))


def _documents(path, count=20):
  rs = np.random.RandomState(6)
  with open(path, "w") as f:
    for i in range(count):
      words = " ".join("".join(chr(97 + c) for c in rs.randint(0, 26, 5)) for _ in range(30))
      f.write(json.dumps({"id": i, "text": words}) + "\n")
  return str(path)


def test_convert_writes_a_calibrated_int8_checkpoint_that_generation_loads(calibrated, tmp_path):
  from mind_jax import convert
  path, _, float_model, tokenizer, _ = calibrated
  documents = _documents(tmp_path / "calibration.jsonl")
  out = tmp_path / "int8"
  assert convert.main([path, str(out), "quantize=int8", f"calibration={documents}",
                       "calibration_sequences=3", "calibration_length=64", "-q"]) == 0
  restored, _ = load_pretrained(str(out), progress=False)
  assert restored.config.quantize == "int8" and not restored.config.scan_layers
  # The same windows as convert makes: a BOS, then the documents' tokens, each ending in EOS.
  stream = []
  for line in open(documents):
    stream += tokenizer.encode(json.loads(line)["text"]) + [tokenizer.eos_ids[0]]
  windows = np.asarray([[tokenizer.bos_id] + stream[i * 63:(i + 1) * 63] for i in range(3)])
  expected = calibrate_int8(nnx.clone(float_model), windows)
  for a, b in zip(jax.tree.leaves(nnx.state(expected)), jax.tree.leaves(nnx.state(restored))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("arguments, message", [
    (["calibration={docs}"], "give quantize=int8 too"),
    (["quantize=int8", "calibration={docs}", "scan_layers=true"], "keeps them apart"),
    (["quantize=int8", "calibration={tmp}/missing.jsonl"], "missing.jsonl"),
    (["quantize=int8", "calibration={docs}", "calibration_length=100000"],
     "fewer than one window"),
])
def test_convert_refuses_a_calibration_it_cannot_use_in_one_line(hf_checkpoints, tmp_path, capsys,
                                                                 arguments, message):
  from mind_jax import convert
  path = hf_checkpoints["llama3.1-gqa"][0]
  docs = _documents(tmp_path / "docs.jsonl", count=2)
  arguments = [a.format(docs=docs, tmp=tmp_path) for a in arguments]
  assert convert.main([path, str(tmp_path / "out"), *arguments, "-q"]) != 0
  error = capsys.readouterr().err.strip().splitlines()
  assert message in error[-1]
  assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
