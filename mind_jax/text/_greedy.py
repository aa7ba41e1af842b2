"""Greedy decoding of a batch through the KV cache: prefill once, then one token per step.

The simplest correct use of the cache API; the continuous-batching engine
builds on the same model calls.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mind_jax._errors import MindJaxError
from mind_jax.nn import KVCache, Llama


@functools.partial(jax.jit, static_argnums=0, donate_argnames="cache")
def _forward(graphdef, state, tokens, positions, cache):
  logits, cache = nnx.merge(graphdef, state)(tokens, positions, cache=cache)
  return logits, cache


def greedy_generate(model: Llama, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    eos_ids: Sequence[int] = (), return_logits: bool = False):
  """Greedy continuations of prompts of any lengths (at least one token each).

  Returns the generated ids per prompt, stopping after an EOS id (included),
  and with `return_logits` the logits `[new_tokens, vocab]` behind each token.
  """
  if not prompts or any(len(p) == 0 for p in prompts):
    raise MindJaxError("greedy_generate needs at least one non-empty prompt")
  lengths = np.array([len(p) for p in prompts], np.int32)
  max_len = int(lengths.max()) + max_new_tokens
  if max_len > model.config.max_position_embeddings:
    raise MindJaxError(f"prompt + max_new_tokens = {max_len} exceeds the model's context "
                       f"({model.config.max_position_embeddings})")
  batch = len(prompts)
  tokens = np.zeros((batch, int(lengths.max())), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, : len(prompt)] = prompt
  positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
  graphdef, state = nnx.split(model)
  cache = KVCache.create(model.config, batch, max_len)
  logits, cache = _forward(graphdef, state, jnp.asarray(tokens), jnp.asarray(positions), cache)
  step_logits = np.asarray(logits)[np.arange(batch), lengths - 1]
  outputs, history = [[] for _ in prompts], [[] for _ in prompts]
  done = np.zeros(batch, bool)
  eos = set(int(e) for e in eos_ids)
  for step in range(max_new_tokens):
    next_tokens = step_logits.argmax(-1).astype(np.int32)
    for row in np.flatnonzero(~done):
      outputs[row].append(int(next_tokens[row]))
      history[row].append(step_logits[row])
      done[row] = next_tokens[row] in eos
    if done.all() or step == max_new_tokens - 1:
      break
    logits, cache = _forward(graphdef, state, jnp.asarray(next_tokens[:, None]),
                             jnp.asarray((lengths + step)[:, None]), cache)
    step_logits = np.asarray(logits[:, 0])
  if return_logits:
    return outputs, [np.stack(h) for h in history]
  return outputs
