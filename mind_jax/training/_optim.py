"""The optimizer a training config describes: AdamW, its schedule, clipping, the decay mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mind_jax.training._config import OptimizerSection


def learning_rate(opt: OptimizerSection, steps: int) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then constant, cosine or linear decay that
  reaches `end_learning_rate` at the run's last step."""
  peak, warmup = opt.learning_rate, min(opt.warmup_steps, steps)
  remaining = max(steps - warmup, 1)
  if opt.schedule == "constant":
    decay = optax.constant_schedule(peak)
  elif opt.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, remaining, alpha=opt.end_learning_rate / peak)
  else:
    decay = optax.linear_schedule(peak, opt.end_learning_rate, remaining)
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decays(name: str, opt: OptimizerSection) -> bool:
  """Whether weight decay applies to the parameter called `name` (HF-style dotted names):
  never to norm scales; to embeddings and the head only with `decay_embeddings`."""
  if "norm" in name:
    return False
  return opt.decay_embeddings or not ("embed_tokens" in name or "lm_head" in name)


def optimizer(opt: OptimizerSection, steps: int) -> optax.GradientTransformation:
  """Over a flat {name: array} dict of parameters. The learning rate is injected (evaluated
  from the schedule at each update and kept in the state, in float32 whatever the parameters'
  dtype), so what the metrics log is the rate the update used."""
  mask = lambda params: {name: decays(name, opt) for name in params}  # noqa: E731
  adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",),
                                   hyperparam_dtype=jnp.float32)(
      learning_rate(opt, steps), b1=opt.b1, b2=opt.b2, eps=opt.eps,
      weight_decay=opt.weight_decay, mask=mask)
  return optax.chain(optax.clip_by_global_norm(opt.clip_norm), adamw) if opt.clip_norm else adamw


def applied_learning_rate(opt_state) -> jax.Array:
  """The learning rate of the update that produced `opt_state` (see `optimizer`)."""
  injected = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "hyperparams"))
              if hasattr(s, "hyperparams")]
  return injected[0].hyperparams["learning_rate"]
