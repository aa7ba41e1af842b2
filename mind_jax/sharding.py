"""Device meshes and logical-axis sharding rules, as configuration data.

Every parameter names its axes logically ("vocab", "embed", "q_heads", ...).
A rule set maps each logical name to zero or more mesh axes; changing the
parallelism of a run is a change of rules or mesh shape, not of model code.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mind_jax._errors import MindJaxError

MeshAxes = Mapping[str, int]
Rules = Mapping[str, str | Sequence[str] | None]

DEFAULT_MESH: dict[str, int] = {"data": -1, "fsdp": 1, "tensor": 1}

# Training: weights sharded over fsdp (and tensor within a layer), batch over data x fsdp.
TRAIN_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    "cache_batch": ("data", "fsdp"),
    "cache_seq": None,
    "cache_heads": "tensor",
    "head_dim": None,
}

# Generation: weights split by heads / MLP columns over tensor and replicated over
# data; decode slots (batch) over data. Nothing is gathered per step.
GENERATE_RULES: dict[str, str | tuple[str, ...] | None] = {
    **TRAIN_RULES,
    "batch": "data",
    "embed": None,
    "cache_batch": "data",
}

RULE_SETS = {"train": TRAIN_RULES, "generate": GENERATE_RULES}

# Which config field a logical axis's size comes from, for error messages.
_AXIS_SOURCE = {
    "q_heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "cache_heads": "num_key_value_heads",
    "mlp": "intermediate_size",
    "vocab": "vocab_size",
    "embed": "hidden_size",
}


def resolve_rules(rules: str | Rules) -> Rules:
  if isinstance(rules, str):
    if rules not in RULE_SETS:
      raise MindJaxError(f"unknown sharding rule set {rules!r}; choose one of {', '.join(RULE_SETS)}")
    return RULE_SETS[rules]
  return rules


def make_mesh(axes: MeshAxes | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with the named axes; one size may be -1 to take the remaining devices.

  On a multi-slice run (devices from several TPU slices, linked only by the data-center
  network) `axes` describe one slice and the data axis also spans the slices: only the
  data-parallel gradient reduction then crosses the slow links.
  """
  axes = dict(DEFAULT_MESH if axes is None else axes)
  devices = list(jax.devices() if devices is None else devices)
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  if slices > 1:
    return _multi_slice_mesh(axes, devices, slices)
  n = len(devices)
  fill = [name for name, size in axes.items() if size == -1]
  if len(fill) > 1:
    raise MindJaxError(f"mesh {axes}: only one axis may be -1, got {', '.join(fill)}")
  bad = [f"{name}={size}" for name, size in axes.items() if size != -1 and size < 1]
  if bad:
    raise MindJaxError(f"mesh {axes}: axis sizes must be positive or -1, got {', '.join(bad)}")
  fixed = math.prod(size for size in axes.values() if size != -1)
  if fill:
    if n % fixed:
      raise MindJaxError(
          f"mesh {axes} does not fit {n} devices: the fixed axes need a multiple of {fixed}")
    axes[fill[0]] = n // fixed
  elif fixed != n:
    raise MindJaxError(f"mesh {axes} needs {fixed} devices but {n} are available")
  shape = tuple(axes.values())
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (AssertionError, NotImplementedError, ValueError):
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, tuple(axes))


def _multi_slice_mesh(axes: dict, devices: list, slices: int) -> Mesh:
  from jax.experimental import mesh_utils
  if "data" not in axes:
    raise MindJaxError(f"mesh {axes}: a run over {slices} slices needs a data axis to span them")
  per_slice = make_mesh(axes, [d for d in devices if getattr(d, "slice_index", 0) == 0])
  shape = tuple(per_slice.shape.values())
  dcn = tuple(slices if name == "data" else 1 for name in per_slice.axis_names)
  grid = mesh_utils.create_hybrid_device_mesh(shape, dcn, devices=devices)
  return Mesh(grid, per_slice.axis_names)


def spec_axes(entry) -> tuple[str, ...]:
  """The mesh axes a PartitionSpec entry (or a rule's target) names: None, one, or several."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def spec_ways(mesh: Mesh, entry) -> int:
  """Into how many shards a PartitionSpec entry cuts its dimension on `mesh`."""
  return math.prod(mesh.shape[a] for a in spec_axes(entry))


def logical_to_spec(names: Sequence[str | None], rules: Rules, mesh: Mesh) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; a mesh axis is used at most once."""
  used: set[str] = set()
  spec = []
  for name in names:
    target = rules.get(name) if name is not None else None
    targets = tuple(a for a in spec_axes(target) if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
    used.update(targets)
    spec.append(targets[0] if len(targets) == 1 else (targets or None))
  return PartitionSpec(*spec)


def axis_names(variable) -> tuple[str | None, ...]:
  return tuple(variable.get_metadata().get("out_sharding") or ())


def state_shardings(state: nnx.State, mesh: Mesh, rules: str | Rules,
                    config=None) -> dict[tuple, NamedSharding]:
  """A NamedSharding for every variable of `state`, by path, checking divisibility."""
  rules = resolve_rules(rules)
  out = {}
  for path, variable in nnx.to_flat_state(state):
    names = axis_names(variable)
    spec = logical_to_spec(names, rules, mesh) if names else PartitionSpec()
    _check_divisible(path, variable.shape, names, spec, mesh, config)
    out[path] = NamedSharding(mesh, spec)
  return out


def _check_divisible(path, shape, names, spec, mesh, config):
  for dim, (size, entry) in enumerate(zip(shape, spec)):
    if entry is None:
      continue
    axes, ways = spec_axes(entry), spec_ways(mesh, entry)
    if size % ways:
      name = ".".join(map(str, path))
      field = _AXIS_SOURCE.get(names[dim])
      what = f"{field}={getattr(config, field)}" if config is not None and field else f"size {size}"
      raise MindJaxError(
          f"cannot shard {name} dim {dim} ({names[dim]}, {what}) over mesh axis "
          f"{'x'.join(axes)}={ways}: not divisible; use a {'x'.join(axes)} size that divides it")


def check_model_fits_mesh(config, mesh: Mesh, rules: str | Rules = "generate") -> None:
  """Fails early, naming the config field, when heads or widths do not divide the tensor axis."""
  rules = resolve_rules(rules)
  for logical in ("q_heads", "kv_heads", "mlp", "vocab"):
    spec = logical_to_spec((logical,), rules, mesh)[0]
    if spec is None:
      continue
    axes, ways = spec_axes(spec), spec_ways(mesh, spec)
    field = _AXIS_SOURCE[logical]
    count = getattr(config, field)
    if count % ways:
      raise MindJaxError(
          f"{field}={count} is not divisible by mesh axis {'x'.join(axes)}={ways}; "
          f"choose a {'x'.join(axes)} size that divides {count}")


def one_device_mesh() -> Mesh:
  """The mesh of the first device: where a model lives when no mesh is given."""
  return make_mesh({"data": 1}, jax.devices()[:1])


def abstract_state(build, mesh: Mesh | None = None, rules: str | Rules = "generate"):
  """(graphdef, flat abstract state, {path: NamedSharding}) of what `build()` would make.

  `build` returns any NNX module (a model, a model with its optimizer): it is traced with
  `nnx.eval_shape`, so nothing is allocated; every variable's sharding follows its logical
  axes under `rules` on `mesh` (default: one device). A module with a Llama `config` is
  checked against the mesh first, naming the config field that does not divide.
  """
  abstract = nnx.eval_shape(build)
  graphdef, state = nnx.split(abstract)
  mesh = mesh or one_device_mesh()
  config = getattr(abstract, "config", None)
  if config is not None:
    check_model_fits_mesh(config, mesh, rules)
  shardings = state_shardings(state, mesh, rules, config)
  return graphdef, list(nnx.to_flat_state(state)), shardings


def lookup(tree, path, key=lambda k: k):
  """`tree[path[0]][path[1]]...`, each key passed through `key` (str for Orbax's trees)."""
  for part in path:
    tree = tree[key(part)]
  return tree


def shard_model(model: nnx.Module, mesh: Mesh, rules: str | Rules = "generate") -> nnx.Module:
  """Places an existing model's parameters on `mesh` according to `rules`."""
  config = getattr(model, "config", None)
  if config is not None:
    check_model_fits_mesh(config, mesh, rules)
  state = nnx.state(model)
  for path, sharding in state_shardings(state, mesh, rules, config).items():
    variable = lookup(state, path)
    variable[...] = jax.device_put(variable[...], sharding)
  return model


def data_sharding(mesh: Mesh, rules: str | Rules, names: Sequence[str | None]) -> NamedSharding:
  """Sharding for an activation or input with logical axes `names`, e.g. ("batch", None)."""
  return NamedSharding(mesh, logical_to_spec(names, resolve_rules(rules), mesh))



# The mesh and rules activations are laid out by while a program is traced (set by the
# program's builder: the train step); unset, the model adds no constraints.
_ACTIVATIONS: contextvars.ContextVar = contextvars.ContextVar("mind_jax_activations", default=None)


@contextlib.contextmanager
def activation_layout(mesh: Mesh | None, rules: str | Rules):
  """For code traced within: `constrain` lays activations out by `rules` on `mesh`, and the
  attention kernels (`mind_jax.nn._kernels`) run per shard of `mesh` (JAX's abstract mesh).
  Enter it inside the jitted function, around the model call."""
  if mesh is None:
    yield
    return
  token = _ACTIVATIONS.set((mesh, resolve_rules(rules)))
  try:
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      yield
  finally:
    _ACTIVATIONS.reset(token)


def active_layout() -> tuple[Mesh, Rules] | None:
  """(mesh, rules) of the `activation_layout` being traced under, or None."""
  return _ACTIVATIONS.get()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """`x` laid out by its logical axes under the active `activation_layout` (else unchanged);
  a dimension its mesh axes do not divide (a prefill's single row) stays whole.

  Without it XLA chooses activation layouts by propagation from the weights, and under fsdp
  (weights split on the embedding dimension) it computed the output head with the whole
  global batch on every chip and the embedding dimension split: a 64-chip 8B train step then
  needed 60 GiB of temporaries per chip for one sequence each instead of a few.
  """
  active = _ACTIVATIONS.get()
  if active is None:
    return x
  mesh, rules = active
  spec = []
  for size, entry in zip(x.shape, logical_to_spec(names, rules, mesh)):
    spec.append(entry if size % spec_ways(mesh, entry) == 0 else None)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))
