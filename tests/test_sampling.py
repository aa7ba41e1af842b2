"""Sampling keeps exactly the right support and draws from the right distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mind_jax.engine import filter_logits, sample
from mind_jax.engine._sampling import request_key, token_keys

LOGITS = np.log(np.array([0.35, 0.25, 0.15, 0.10, 0.08, 0.04, 0.02, 0.01], np.float32))


def support(temperature=1.0, top_k=0, top_p=1.0):
  out = filter_logits(jnp.asarray(LOGITS)[None], jnp.array([temperature], jnp.float32),
                      jnp.array([top_k]), jnp.array([top_p], jnp.float32))
  return np.flatnonzero(np.isfinite(np.asarray(out)[0])).tolist()


def test_top_k_keeps_exactly_k():
  assert support(top_k=1) == [0]
  assert support(top_k=3) == [0, 1, 2]
  assert support(top_k=0) == list(range(8))
  assert support(top_k=100) == list(range(8))


def test_top_p_keeps_the_smallest_prefix_reaching_p():
  # Cumulative mass: .35 .60 .75 .85 .93 .97 .99 1.0
  assert support(top_p=0.35) == [0]
  assert support(top_p=0.6) == [0, 1]      # .35 < .6, then .6 reached
  assert support(top_p=0.61) == [0, 1, 2]
  assert support(top_p=0.9) == [0, 1, 2, 3, 4]
  assert support(top_p=1.0) == list(range(8))


def test_top_k_then_top_p_and_temperature():
  # After top-3 the renormalised mass is .467 .333 .2: p=0.7 needs two tokens.
  assert support(top_k=3, top_p=0.7) == [0, 1]
  # Temperature flattens the distribution, so top-p needs more tokens.
  assert len(support(temperature=2.0, top_p=0.9)) > len(support(top_p=0.9))


def draw(n, temperature, top_k, top_p, seed=0):
  keys = token_keys(np.repeat(request_key(seed, "dist")[None], n, 0), jnp.arange(n))
  logits = jnp.broadcast_to(jnp.asarray(LOGITS), (n, len(LOGITS)))
  full = lambda v, dt: jnp.full((n,), v, dt)  # noqa: E731
  return np.asarray(jax.jit(sample)(logits, keys, full(temperature, jnp.float32),
                                    full(top_k, jnp.int32), full(top_p, jnp.float32)))


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 0.9), (1.3, 4, 1.0),
                                                     (1.0, 5, 0.8)])
def test_empirical_distribution_matches(temperature, top_k, top_p):
  n = 40000
  tokens = draw(n, temperature, top_k, top_p)
  probs = np.exp(LOGITS / temperature)
  allowed = np.zeros(8, bool)
  allowed[support(temperature, top_k, top_p)] = True
  expected = np.where(allowed, probs, 0) / np.where(allowed, probs, 0).sum()
  counts = np.bincount(tokens, minlength=8)
  assert not counts[~allowed].any()
  # Each frequency within 5 standard errors of its probability.
  sigma = np.sqrt(expected * (1 - expected) / n) + 1e-9
  assert np.all(np.abs(counts / n - expected) <= 5 * sigma + 1e-4)


def test_temperature_zero_is_argmax_and_keys_are_reproducible():
  assert set(draw(64, 0.0, 0, 1.0)) == {0}
  np.testing.assert_array_equal(draw(500, 1.0, 0, 1.0, seed=3), draw(500, 1.0, 0, 1.0, seed=3))
  assert (draw(500, 1.0, 0, 1.0, seed=3) != draw(500, 1.0, 0, 1.0, seed=4)).any()
