"""Small things built locally for tests and examples: never downloaded.

`byte_tokenizer()` is the byte-level tokenizer of `mind_jax.text` (ids 0-255 are the
bytes); `random_model()` is a randomly initialised Llama. Together they make a complete
checkpoint whose outputs are meaningless but whose every code path is real.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mind_jax.text import byte_tokenizer  # noqa: F401  (re-exported for tests and examples)

if TYPE_CHECKING:
  from mind_jax.nn import Llama, LlamaConfig


def random_model(config: LlamaConfig, seed: int = 0) -> Llama:
  """A randomly initialised model (normal(0, 0.02) weights, unit norms)."""
  from flax import nnx  # on use: the byte tokenizer alone needs no JAX

  from mind_jax.nn import Llama
  return Llama(config, rngs=nnx.Rngs(seed))
