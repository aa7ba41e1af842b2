"""The train state and the one jitted step that advances it.

The state is a plain pytree: {"params": {HF-style name: array}, "opt_state": optax's state
over those params, "step": int32}. Flat, named parameters make the weight-decay mask a rule
on names, and Orbax checkpoints readable by name. Every leaf has a NamedSharding from the
`train` rules, so the state is built, updated and restored shard by shard, never whole on
one device.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mind_jax import sharding
from mind_jax.data import MODEL_INPUTS
from mind_jax.nn import Llama, LlamaConfig
from mind_jax.training._loss import head_cross_entropy
from mind_jax.training._optim import applied_learning_rate


def _name(path) -> str:
  return ".".join(str(p) for p in path)


def _path(name: str) -> tuple:
  return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def flat_params(model: Llama) -> dict[str, jax.Array]:
  """{"model.layers.0.self_attn.q_proj.weight": array, ...} of a model's parameters."""
  return {_name(path): v[...] for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def merge(graphdef, params: dict) -> Llama:
  """The model `graphdef` describes, holding `params` (inside jit: traced arrays)."""
  return nnx.merge(graphdef, nnx.State.from_flat_path({_path(n): v for n, v in params.items()}))


@dataclasses.dataclass
class Trainer:
  """What a run compiles once: the model's structure, the optimizer, the shardings, the step."""

  config: LlamaConfig
  graphdef: object
  abstract_params: dict  # name -> ShapeDtypeStruct
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation
  state_shardings: dict
  batch_sharding: NamedSharding
  microbatches: int = 1
  z_loss: float = 0.0
  loss_chunk: int = 512

  @classmethod
  def create(cls, config: LlamaConfig, mesh, tx, *, microbatches=1, z_loss=0.0,
             loss_chunk: int = 512, seed: int = 0) -> Trainer:
    graphdef, flat, by_path = sharding.abstract_state(
        lambda: Llama(config, rngs=nnx.Rngs(seed)), mesh, "train")
    params = {_name(path): by_path[path] for path, _ in flat}
    abstract = {_name(path): jax.ShapeDtypeStruct(v.shape, v.dtype) for path, v in flat}
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, jax.eval_shape(tx.init, abstract), params,
        transform_non_params=lambda _: replicated)
    return cls(config, graphdef, abstract, mesh, tx,
               {"params": params, "opt_state": opt_shardings, "step": replicated},
               sharding.data_sharding(mesh, "train", ("batch", None)), microbatches, z_loss,
               loss_chunk)

  # --- building and restoring the state ------------------------------------------------------
  def init_params(self, seed: int) -> dict:
    """A preset's random weights, made on the mesh (each device makes its shards)."""
    config = self.config
    build = jax.jit(lambda: flat_params(Llama(config, rngs=nnx.Rngs(seed))),
                    out_shardings=self.state_shardings["params"])
    return build()

  def init_state(self, params: dict) -> dict:
    params = {n: jax.device_put(a, self.state_shardings["params"][n]) for n, a in params.items()}
    opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), self.state_shardings["step"])
    return {"params": params, "opt_state": opt_state, "step": step}

  def abstract_state(self) -> dict:
    """The state's shapes, dtypes and shardings, for Orbax to restore onto (any mesh)."""
    shapes = {"params": self.abstract_params,
              "opt_state": jax.eval_shape(self.tx.init, self.abstract_params),
              "step": jax.ShapeDtypeStruct((), jnp.int32)}
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.state_shardings)

  # --- the step ------------------------------------------------------------------------------
  def _loss(self, params, batch):
    model = merge(self.graphdef, params)
    with sharding.activation_layout(self.mesh, "train"):
      hidden, _ = model.model(batch["tokens"], batch["positions"], batch["segment_ids"], None)
      head = model.output_head()
      weights = batch["loss_weights"]
      # The head's logits a chunk of positions at a time, never whole (training/_loss.py).
      total, nll = head_cross_entropy(
          hidden, head, batch["targets"], weights, z_loss=self.z_loss, chunk=self.loss_chunk,
          head_sharding=self.state_shardings["params"][self.head_name])
    return total, (nll, jnp.sum(weights))

  @functools.cached_property
  def head_name(self) -> str:
    """The parameter that is the output head (the embedding where the two are tied)."""
    return "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"

  def _step(self, state, batch):
    grad = jax.value_and_grad(self._loss, has_aux=True)
    if self.microbatches == 1:
      (_, (nll, weight)), grads = grad(state["params"], batch)
    else:
      m = self.microbatches
      # Row i goes to microbatch i % m, so each one draws evenly from every device's rows.
      split = {k: v.reshape(v.shape[0] // m, m, *v.shape[1:]).swapaxes(0, 1)
               for k, v in batch.items()}
      split = jax.lax.with_sharding_constraint(
          split, NamedSharding(self.mesh, PartitionSpec(None, *self.batch_sharding.spec)))

      def accumulate(carry, microbatch):
        (_, (nll, weight)), grads = grad(state["params"], microbatch)
        total_grads, total_nll, total_weight = carry
        return (jax.tree.map(jnp.add, total_grads, grads), total_nll + nll,
                total_weight + weight), None

      zeros = jax.tree.map(jnp.zeros_like, state["params"])
      (grads, nll, weight), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0), split)
    # The loss is the mean over every weighted token of the batch, whatever the microbatches.
    scale = 1.0 / jnp.maximum(weight, 1.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": nll * scale, "grad_norm": optax.global_norm(grads),
               "lr": applied_learning_rate(opt_state), "tokens": weight}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  @functools.cached_property
  def train_step(self):
    """state, batch -> (state, metrics), compiled once; the state is donated."""
    batch = {k: self.batch_sharding for k in MODEL_INPUTS}
    replicated = NamedSharding(self.mesh, PartitionSpec())
    return jax.jit(self._step, in_shardings=(self.state_shardings, batch),
                   out_shardings=(self.state_shardings, replicated), donate_argnums=0)

  @functools.cached_property
  def eval_step(self):
    """params, batch -> (summed token losses, summed weights), compiled once."""
    batch = {k: self.batch_sharding for k in MODEL_INPUTS}
    replicated = NamedSharding(self.mesh, PartitionSpec())
    return jax.jit(lambda params, b: self._loss(params, b)[1],
                   in_shardings=(self.state_shardings["params"], batch), out_shardings=replicated)

  def model(self, state) -> Llama:
    """The trained model (its parameters are the state's arrays, not copies)."""
    return merge(self.graphdef, state["params"])


def step_flops(config: LlamaConfig, tokens: int, seq_len: int) -> float:
  """Training FLOPs of a step over `tokens` tokens: 6 per parameter per token for the
  matmuls (forward + backward) plus causal attention's scores and values (6 x layers x
  sequence x attention width per token, halved by the causal mask)."""
  matmul = 6 * (config.num_params() - config.vocab_size * config.hidden_size) * tokens
  if config.tie_word_embeddings:
    matmul += 6 * config.vocab_size * config.hidden_size * tokens
  width = config.num_attention_heads * config.resolved_head_dim
  attention = 6 * config.num_hidden_layers * seq_len * width * tokens
  return float(matmul + attention)


def host_metrics(metrics: dict) -> dict:
  """The step's metrics as Python floats (fetched from the devices)."""
  return {k: float(np.asarray(v)) for k, v in metrics.items()}
