"""Curation: filter generated conversations into a training set, and report on them."""

from mind_jax.curation._decontam import EvalIndex, Match
from mind_jax.curation._filter import CONTAMINATION, SUMMARY, input_files, read_input
from mind_jax.curation._filter import run as run_filter
from mind_jax.curation._report import ReportConfig, similarity_scores
from mind_jax.curation._report import run as run_report
from mind_jax.curation._rules import FilterConfig
from mind_jax.curation._text import Cleaned, Turns, clean, split_turns, words

__all__ = ["CONTAMINATION", "Cleaned", "EvalIndex", "FilterConfig", "Match", "ReportConfig",
           "SUMMARY", "Turns", "clean", "input_files", "read_input", "run_filter", "run_report",
           "similarity_scores", "split_turns", "words"]
