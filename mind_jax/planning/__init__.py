"""Planning jobs for TPU slices on a machine without one: `python -m mind_jax.plan`."""

from mind_jax.planning._cache import compile_cache, default_directory as default_cache_directory
from mind_jax.planning._plan import Assumptions, plan_generation, plan_training
from mind_jax.planning._report import format_plan, format_topologies
from mind_jax.planning._topology import Slice, devices, known_topologies, parse_topology

__all__ = [
    "Assumptions", "Slice", "compile_cache", "default_cache_directory", "devices", "format_plan", "format_topologies", "known_topologies",
    "parse_topology", "plan_generation", "plan_training",
]
