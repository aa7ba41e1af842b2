"""The Llama decoder in Flax NNX, with module and parameter names as in transformers."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mind_jax._errors import MindJaxError
from mind_jax.sharding import constrain
from mind_jax.nn._attention import get_attention
from mind_jax.nn._cache import KVCache
from mind_jax.nn._config import LlamaConfig
from mind_jax.nn._paged import cached_attention
from mind_jax.nn._layers import Embed, Linear, RMSNorm, apply_rope, rope_tables

# Hidden states between layers: split by sequence over the batch axes, whole per token.
ACTIVATION_AXES = ("batch", None, None)

_REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class LlamaAttention(nnx.Module):

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    d, hd = config.hidden_size, config.resolved_head_dim
    self.num_heads = config.num_attention_heads
    self.num_kv_heads = config.num_key_value_heads
    self.head_dim = hd
    self.attention = config.attention
    kw = dict(dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs,
              quantize=config.quantize)
    self.q_proj = Linear(d, self.num_heads * hd, ("q_heads", "embed"), **kw)
    self.k_proj = Linear(d, self.num_kv_heads * hd, ("kv_heads", "embed"), **kw)
    self.v_proj = Linear(d, self.num_kv_heads * hd, ("kv_heads", "embed"), **kw)
    self.o_proj = Linear(self.num_heads * hd, d, ("embed", "q_heads"), **kw)

  def __call__(self, x, rope, positions, segment_ids, kv=None):
    b, t, _ = x.shape
    cos, sin = rope
    q = apply_rope(self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim), cos, sin)
    k = apply_rope(self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim), cos, sin)
    v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
    attend = get_attention(self.attention)
    if kv is None:
      out = attend(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), q_positions=positions,
                   k_positions=positions, q_segments=segment_ids, k_segments=segment_ids)
    else:
      cache_k, cache_v, table, fresh, rows_are_pages = kv
      out, kv = cached_attention(
          q, k, v, cache_k, cache_v, table, positions, fresh=fresh,
          implementation=self.attention, rows_are_pages=rows_are_pages,
          per_head=self.attention.startswith("tpu"))  # see write_pages
    return self.o_proj(out.reshape(b, t, -1)), kv


class LlamaMLP(nnx.Module):

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    d, f = config.hidden_size, config.intermediate_size
    kw = dict(dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs,
              quantize=config.quantize)
    self.gate_proj = Linear(d, f, ("mlp", "embed"), **kw)
    self.up_proj = Linear(d, f, ("mlp", "embed"), **kw)
    self.down_proj = Linear(f, d, ("embed", "mlp"), **kw)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nnx.Module):

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    norm = dict(eps=config.rms_norm_eps, dtype=config.dtype, param_dtype=config.param_dtype)
    self.input_layernorm = RMSNorm(config.hidden_size, **norm)
    self.self_attn = LlamaAttention(config, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, **norm)
    self.mlp = LlamaMLP(config, rngs=rngs)

  def __call__(self, x, rope, positions, segment_ids, kv=None):
    attn, kv = self.self_attn(self.input_layernorm(x), rope, positions, segment_ids, kv)
    x = x + attn
    return x + self.mlp(self.post_attention_layernorm(x)), kv


class LlamaModel(nnx.Module):
  """Embeddings, decoder layers and the final norm (HF's `model.` prefix)."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed_tokens = Embed(config.vocab_size, config.hidden_size, dtype=config.dtype,
                              param_dtype=config.param_dtype, rngs=rngs)
    if config.scan_layers:
      # One stacked layer whose parameters have a leading "layers" axis.
      @nnx.split_rngs(splits=config.num_hidden_layers)
      @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def stacked(layer_rngs):
        return LlamaDecoderLayer(config, rngs=layer_rngs)

      self.layers = stacked(rngs)
    else:
      self.layers = nnx.List([LlamaDecoderLayer(config, rngs=rngs)
                              for _ in range(config.num_hidden_layers)])
    self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=config.dtype,
                        param_dtype=config.param_dtype)

  def __call__(self, input_ids, positions, segment_ids, cache: KVCache | None):
    x = constrain(self.embed_tokens(input_ids), ACTIVATION_AXES)
    inv_freq = self.config.rope.inv_freq(self.config.resolved_head_dim)
    rope = rope_tables(jnp.asarray(inv_freq), positions)
    # Remat is a training concern; decoding (a cache) has no backward pass to save memory for.
    layer_fn = _layer_fn(self.config.remat if cache is None else "none")
    if self.config.scan_layers and cache is None:
      graphdef, state = nnx.split(self.layers)

      def body(x, state):
        x = layer_fn(graphdef, state, x, rope, positions, segment_ids, None)[0]
        return constrain(x, ACTIVATION_AXES), None

      x, _ = jax.lax.scan(body, x, state)
    elif self.config.scan_layers:
      # Decoding unrolls the stacked layers: each layer's cache is its own array, updated in
      # place, which a scan over layers could only do by copying slices of a stacked cache.
      graphdef, state = nnx.split(self.layers)
      new_k, new_v = [], []
      for i in range(self.config.num_hidden_layers):
        layer_state = jax.tree.map(lambda p, i=i: p[i], state)
        x, (k, v) = layer_fn(graphdef, layer_state, x, rope, positions, segment_ids,
                             (cache.k[i], cache.v[i], cache.table, cache.fresh,
                              cache.rows_are_pages))
        new_k.append(k)
        new_v.append(v)
      cache = dataclasses.replace(cache, k=tuple(new_k), v=tuple(new_v))
    else:
      new_k, new_v = [], []
      for i, layer in enumerate(self.layers):
        graphdef, state = nnx.split(layer)
        kv = None if cache is None else (cache.k[i], cache.v[i], cache.table, cache.fresh,
                                          cache.rows_are_pages)
        x, kv = layer_fn(graphdef, state, x, rope, positions, segment_ids, kv)
        x = constrain(x, ACTIVATION_AXES)
        if cache is not None:
          new_k.append(kv[0])
          new_v.append(kv[1])
      cache = None if cache is None else dataclasses.replace(cache, k=tuple(new_k),
                                                             v=tuple(new_v))
    return self.norm(x), cache


@functools.cache
def _layer_fn(remat: str):
  """A pure function of one layer's state, rematerialised under the named policy."""

  def run(graphdef, state, x, rope, positions, segment_ids, kv):
    return nnx.merge(graphdef, state)(x, rope, positions, segment_ids, kv)

  if remat == "none":
    return run
  return jax.checkpoint(run, policy=_REMAT_POLICIES[remat], static_argnums=(0,))


class Llama(nnx.Module):
  """A Llama causal language model.

  `model(input_ids)` returns logits `[B, T, vocab]`. Optional arguments select
  the other call modes on the same weights:
  - `positions` `[B, T]` and `segment_ids` `[B, T]` (1-based, 0 = padding) for
    packed sequences: tokens never attend across segments;
  - `cache` (a `KVCache`) for decoding: the tokens at `positions` are written
    into their rows' pages and attend to everything before them in the row;
    returns `(logits, cache)`;
  - `logits_at` `[B]` (a prefill): logits only at each row's position
    `logits_at[b]`, `[B, vocab]`; the head is a large share of a prefill's
    FLOPs for small models, and decoding needs only the last prompt token's.
  """

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.model = LlamaModel(config, rngs=rngs)
    if not config.tie_word_embeddings:
      self.lm_head = Linear(config.hidden_size, config.vocab_size, ("vocab", "embed"),
                            dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs,
                            quantize=config.quantize)

  def __call__(self, input_ids, positions=None, segment_ids=None, cache: KVCache | None = None,
               logits_at=None):
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise MindJaxError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
    if cache is not None and segment_ids is not None:
      raise MindJaxError("segment_ids (packed sequences) cannot be combined with a KV cache")
    hidden, new_cache = self.model(input_ids, positions, segment_ids, cache)
    if logits_at is not None:
      hidden = jnp.take_along_axis(hidden, jnp.asarray(logits_at)[:, None, None], axis=1)[:, 0]
    logits = self.logits(hidden)
    return logits if cache is None else (logits, new_cache)

  def output_head(self) -> jax.Array:
    """The output head's weight `[vocab, hidden]` (the embedding where the two are tied)."""
    if self.config.tie_word_embeddings:
      return self.model.embed_tokens.weight[...]
    return self.lm_head.weight[...]

  def logits(self, hidden):
    if self.config.tie_word_embeddings:
      logits = self.model.embed_tokens.attend(hidden)
    else:
      logits = self.lm_head(hidden)
    return constrain(logits, ACTIVATION_AXES[:-1] + ("vocab",)) if logits.ndim == 3 else logits
