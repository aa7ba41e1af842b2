"""What the TPU compiler said of a program, remembered by the program itself.

Compiling one program of a large model for a slice takes the compiler tens of seconds on a
CPU machine, and a plan compiles several; replanning with other assumptions (MFU, a budget, a
price) or an unchanged config would compile the same programs again. The compiler is
deterministic: the same program text, compiled by the same compiler with the same options
for the same devices, gives the same executable and so the same memory and cost analysis.
An entry is keyed by all of those (the lowered StableHLO text without source locations, and
without where jax is installed in its kernels' bodies; the jax, jaxlib and libtpu versions;
XLA_FLAGS and LIBTPU_INIT_ARGS; the devices by id, kind and coordinates, and the mesh over
them), so a change to any of them misses and compiles. A
program that did not fit is remembered too (its refusal is the result).

One small JSON file per program; a file that cannot be read is compiled over, with a warning.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re

from mind_jax._atomic import write_json

log = logging.getLogger(__name__)

_ENV_KEYS = ("XLA_FLAGS", "LIBTPU_INIT_ARGS")


def default_directory() -> str:
  if os.environ.get("MIND_JAX_PLAN_CACHE"):
    return os.environ["MIND_JAX_PLAN_CACHE"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mind_jax", "plan")


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def program_key(lowered, mesh) -> str:
  """The hash of everything the compiled result depends on."""
  devices = [(d.id, d.device_kind, list(getattr(d, "coords", ()) or ()),
              getattr(d, "core_on_chip", None)) for d in mesh.devices.flat]
  context = {"versions": {p: _version(p) for p in ("jax", "jaxlib", "libtpu")},
             "env": {k: os.environ.get(k) for k in _ENV_KEYS},
             "devices": devices, "mesh": [list(mesh.axis_names), list(mesh.devices.shape)]}
  digest = hashlib.sha256(json.dumps(context, sort_keys=True).encode())
  digest.update(_without_kernel_locations(lowered.as_text()).encode())
  return digest.hexdigest()


# A Pallas kernel is embedded in the program as serialized Mosaic (base64 MLIR bytecode) with
# the source locations of the kernel's Python file, i.e. where jax is installed: the same
# kernel from another venv would be another program. It is keyed by its text without them
# (jax <= 0.10 puts them in the body; from 0.11 they come apart, as `debug_locations`).
_KERNEL_BODY = re.compile(r'\\22body\\22: \\22([A-Za-z0-9+/=]+)')
_KERNEL_LOCATIONS = re.compile(r', \\22debug_locations\\22: \\22[A-Za-z0-9+/=]*\\22')


def _without_kernel_locations(text: str) -> str:
  def without_locations(match):
    try:
      from jax._src import tpu_custom_call
      from jax._src.interpreters import mlir
      from jax._src.lib.mlir import ir
      context = mlir.make_ir_context()
      tpu_custom_call.tpu.register_dialect(context)
      with context, ir.Location.unknown():
        context.allow_unregistered_dialects = True
        module = ir.Module.parse(base64.b64decode(match.group(1)))
        return module.operation.get_asm(enable_debug_info=False)
    except Exception:  # noqa: BLE001 - jax internals moved: key by the body as it is
      return match.group(0)
  return _KERNEL_BODY.sub(without_locations, _KERNEL_LOCATIONS.sub("", text))


class CompileCache:
  """Compile results by program key, in `directory` (created on the first write)."""

  def __init__(self, directory: str):
    self.directory = directory

  def _path(self, key: str) -> str:
    return os.path.join(self.directory, f"{key[:32]}.json")

  def get(self, key: str, fields: set[str]) -> dict | None:
    """The result stored under `key`, if it holds exactly `fields` (what is stored may change
    with the code that reads it: an entry of other fields is compiled over)."""
    path = self._path(key)
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        entry = json.load(f)
      if entry["key"] != key:
        raise ValueError("another program's entry under this name")
      if set(entry["result"]) != fields and set(entry["result"]) != {"does_not_fit"}:
        raise ValueError(f"fields {sorted(entry['result'])}, not {sorted(fields)}")
    except (OSError, ValueError, KeyError) as e:
      log.warning("plan cache: %s unreadable (%s); compiling again", path, e)
      return None
    return entry["result"]

  def put(self, key: str, result: dict) -> None:
    try:
      os.makedirs(self.directory, exist_ok=True)
      write_json(self._path(key), {"key": key, "result": result})
    except OSError as e:  # a cache that cannot be written only costs the next plan time
      log.warning("plan cache: not written to %s (%s)", self.directory, e)


_active: CompileCache | None = None


@contextlib.contextmanager
def compile_cache(directory: str | None):
  """Compiles inside read and write results in `directory` (None: every program compiles)."""
  global _active
  previous, _active = _active, CompileCache(directory) if directory else None
  try:
    yield _active
  finally:
    _active = previous


def active() -> CompileCache | None:
  return _active
