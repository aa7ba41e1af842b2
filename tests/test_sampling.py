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


def expected_distribution(temperature, top_k, top_p):
  """What sampling must draw from, computed here in float64 and not by the code under test:
  softmax at the temperature, the top_k most likely tokens, then of those (renormalised) the
  most likely ones until their mass reaches top_p, renormalised again."""
  scaled = LOGITS.astype(np.float64) / temperature
  probs = np.exp(scaled - scaled.max())
  probs /= probs.sum()
  keep = np.argsort(-probs, kind="stable")[: top_k or len(probs)]
  if top_p < 1:
    mass = probs[keep] / probs[keep].sum()
    keep = keep[np.cumsum(mass) - mass < top_p]  # the mass before a token is still short of p
  out = np.zeros_like(probs)
  out[keep] = probs[keep]
  return out / out.sum()


@pytest.mark.parametrize("temperature,top_k,top_p,support_size", [
    (1.0, 0, 1.0, 8), (0.7, 0, 0.9, 4), (1.3, 4, 1.0, 4), (1.0, 5, 0.8, 3), (0.7, 3, 0.8, 2),
    (1.5, 6, 0.7, 4)])
def test_empirical_distribution_matches(temperature, top_k, top_p, support_size):
  n = 40000
  expected = expected_distribution(temperature, top_k, top_p)
  assert np.count_nonzero(expected) == support_size
  assert support(temperature, top_k, top_p) == np.flatnonzero(expected).tolist()
  counts = np.bincount(draw(n, temperature, top_k, top_p), minlength=8)
  assert not counts[expected == 0].any()
  # Each frequency within 5 standard errors of its probability.
  sigma = np.sqrt(expected * (1 - expected) / n) + 1e-9
  assert np.all(np.abs(counts / n - expected) <= 5 * sigma + 1e-4)


def test_temperature_zero_is_argmax_and_keys_are_reproducible():
  assert set(draw(64, 0.0, 0, 1.0)) == {0}
  np.testing.assert_array_equal(draw(500, 1.0, 0, 1.0, seed=3), draw(500, 1.0, 0, 1.0, seed=3))
  assert (draw(500, 1.0, 0, 1.0, seed=3) != draw(500, 1.0, 0, 1.0, seed=4)).any()
