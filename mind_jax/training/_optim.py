"""The optimizer a training config describes: AdamW, its schedule, clipping, the decay mask."""

from __future__ import annotations

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
  """Over a flat {name: array} dict of parameters."""
  mask = lambda params: {name: decays(name, opt) for name in params}  # noqa: E731
  adamw = optax.adamw(learning_rate(opt, steps), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                      weight_decay=opt.weight_decay, mask=mask)
  return optax.chain(optax.clip_by_global_norm(opt.clip_norm), adamw) if opt.clip_norm else adamw
