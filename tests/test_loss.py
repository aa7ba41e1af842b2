"""The training loss goes through the output head a chunk of positions at a time, with its
gradient computed alongside (mind_jax/training/_loss.py): it must equal, value and gradient,
the cross-entropy of the whole logits as written out here by hand (numpy for the value,
jax.grad of the plain formula for the gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mind_jax.training._loss import head_cross_entropy

B, T, E, V = 2, 40, 16, 97


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(B, T, E)).astype(np.float32)
  head = (rng.normal(size=(V, E)) * 0.5).astype(np.float32)
  targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
  weights = (rng.random((B, T)) > 0.2).astype(np.float32)
  return hidden, head, targets, weights


def _numpy_loss(hidden, head, targets, weights, z_loss):
  logits = hidden.astype(np.float64) @ head.astype(np.float64).T
  top = logits.max(-1, keepdims=True)
  log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
  target = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  nll = np.sum((log_z - target) * weights)
  return nll + z_loss * np.sum(log_z ** 2 * weights), nll


def _whole_logits_loss(hidden, head, targets, weights, z_loss):
  logits = hidden @ head.T
  log_z = jax.nn.logsumexp(logits, -1)
  target = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  return jnp.sum((log_z - target) * weights) + z_loss * jnp.sum(log_z ** 2 * weights)


@pytest.mark.parametrize("chunk", [8, 12, 40, 0, 1000])  # divides T, does not, whole, more
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_chunked_loss_equals_the_whole_logits_loss_and_its_gradient(chunk, z_loss):
  hidden, head, targets, weights = _inputs()
  loss, nll = head_cross_entropy(jnp.asarray(hidden), jnp.asarray(head), targets, weights,
                                 z_loss=z_loss, chunk=chunk)
  want_loss, want_nll = _numpy_loss(hidden, head, targets, weights, z_loss)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  np.testing.assert_allclose(nll, want_nll, rtol=1e-6)

  def ours(h, w):
    return head_cross_entropy(h, w, targets, weights, z_loss=z_loss, chunk=chunk)[0]

  got = jax.grad(ours, argnums=(0, 1))(jnp.asarray(hidden), jnp.asarray(head))
  want = jax.grad(_whole_logits_loss, argnums=(0, 1))(hidden, head, targets, weights, z_loss)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def test_the_loss_scales_its_gradient_by_the_outer_cotangent():
  """Under a mean (the train step divides by the token count) the gradient scales too."""
  hidden, head, targets, weights = _inputs(1)

  def mean(h, w):
    loss, nll = head_cross_entropy(h, w, targets, weights, z_loss=0.0, chunk=16)
    return 0.25 * loss + nll  # nll's gradient is stopped: it is for reporting

  got = jax.grad(mean, argnums=(0, 1))(jnp.asarray(hidden), jnp.asarray(head))
  want = jax.grad(lambda h, w: 0.25 * _whole_logits_loss(h, w, targets, weights, 0.0),
                  argnums=(0, 1))(hidden, head)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5)


def test_bfloat16_hidden_states_give_the_whole_logits_loss_within_rounding():
  hidden, head, targets, weights = _inputs(2)
  h16 = jnp.asarray(hidden, jnp.bfloat16)
  loss, _ = head_cross_entropy(h16, jnp.asarray(head), targets, weights, z_loss=0.0, chunk=8)
  logits = (h16 @ jnp.asarray(head, jnp.bfloat16).T).astype(jnp.float32)
  want = jnp.sum((jax.nn.logsumexp(logits, -1)
                  - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]) * weights)
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_the_train_step_holds_one_chunk_of_logits_and_takes_the_same_step():
  """loss_chunk reaches the compiled step: less temporary memory, the same update."""
  from mind_jax.data import MODEL_INPUTS
  from mind_jax.nn import LlamaConfig
  from mind_jax.sharding import make_mesh
  from mind_jax.training import OptimizerSection, Trainer

  config = LlamaConfig(vocab_size=4096, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 4096, size=(4, 128)).astype(np.int32)
  batch = {"tokens": tokens, "targets": np.roll(tokens, -1, 1),
           "positions": np.broadcast_to(np.arange(128), (4, 128)).astype(np.int32),
           "segment_ids": np.ones((4, 128), np.int32), "loss_weights": np.ones((4, 128), np.float32)}
  assert set(batch) == set(MODEL_INPUTS)
  temp, losses, params = {}, {}, {}
  for chunk in (0, 16):
    trainer = Trainer.create(config, mesh, OptimizerSection().build(10), loss_chunk=chunk)
    state = trainer.init_state(trainer.init_params(0))
    compiled = trainer.train_step.lower(state, batch).compile()
    temp[chunk] = compiled.memory_analysis().temp_size_in_bytes
    state, metrics = trainer.train_step(state, batch)
    losses[chunk] = float(metrics["loss"])
    params[chunk] = jax.device_get(state["params"]["lm_head.weight"])
  logits_bytes = 4 * 128 * 4096 * 4  # the whole batch's float32 logits
  assert temp[0] - temp[16] > logits_bytes, temp
  assert losses[16] == pytest.approx(losses[0], rel=1e-6)
  np.testing.assert_allclose(params[16], params[0], atol=1e-6)
