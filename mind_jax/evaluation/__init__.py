"""Evaluation with lm-evaluation-harness: a JAX model backend, the bundled CHAMP task, results."""

from mind_jax.evaluation._compare import (COMPARE_PLOT, compare, comparison, markdown_table,
                                          read_results, scores, write_comparison)
from mind_jax.evaluation._local import SINGLE_DATASET_TASKS, SUBJECT_TASKS, prepare
from mind_jax.evaluation._run import EvaluateConfig, evaluate, resolve_model, results_table

__all__ = ["COMPARE_PLOT", "EvaluateConfig", "SINGLE_DATASET_TASKS", "SUBJECT_TASKS", "compare",
           "comparison", "evaluate", "markdown_table", "prepare", "read_results",
           "resolve_model", "results_table", "scores", "write_comparison"]
