"""Evaluation with lm-evaluation-harness: a JAX model backend, the bundled CHAMP task, results."""

from mind_jax.evaluation._run import EvaluateConfig, evaluate, resolve_model, results_table

__all__ = ["EvaluateConfig", "evaluate", "resolve_model", "results_table"]
