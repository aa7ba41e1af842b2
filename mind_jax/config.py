"""Run configuration: a YAML file plus `key=value` overrides, validated into typed objects.

Every command-line tool takes `--config FILE.yaml` and any number of dotted
overrides (`model.dtype=bfloat16 mesh.axes.tensor=4`). Values are parsed as
YAML scalars. Unknown keys and wrong types fail before any work starts, with
one line naming the key and where it came from.
"""

from __future__ import annotations

import argparse
import os
import textwrap
from typing import Annotated, Any, Literal

import pydantic
import yaml

from mind_jax._errors import MindJaxError


# auto | on | off, where YAML reads a bare on/off as true/false: both spellings are accepted.
OnOffAuto = Annotated[Literal["auto", "on", "off"], pydantic.BeforeValidator(
    lambda v: ("on" if v else "off") if isinstance(v, bool) else v)]


# What each config field is to a job's result, marked once where the field is declared: the
# jobs' rerun checks and the recipe's stage fingerprints are derived from these marks.
#   result  decides what the job writes: a rerun with another value is another result
#   speed   only how the job runs or where it writes (mesh, workers, slots, cadence, overwrite)
#   source  what the job reads: decides the result, yet the job's own rerun accepts another
#           value (a corpus arriving in pieces, a grown generation output: ids keep them apart);
#           the recipe's fingerprint covers it
# A field holding a section (or a list of them) may go unmarked: its own fields decide.
RESULT, SPEED, SOURCE = "result", "speed", "source"
_MARK = "decides"


def _marked(kind: str, args, kwargs):
  extra = dict(kwargs.pop("json_schema_extra", None) or {})
  return pydantic.Field(*args, json_schema_extra={**extra, _MARK: kind}, **kwargs)


def result(*args, **kwargs):
  """pydantic.Field of a key that decides the job's result."""
  return _marked(RESULT, args, kwargs)


def speed(*args, **kwargs):
  """pydantic.Field of a key that changes only how the job runs, or where it writes."""
  return _marked(SPEED, args, kwargs)


def source(*args, **kwargs):
  """pydantic.Field of the input a job reads (see SOURCE above)."""
  return _marked(SOURCE, args, kwargs)


def mark(field) -> str | None:
  """RESULT, SPEED or SOURCE for a pydantic FieldInfo; None when unmarked."""
  extra = field.json_schema_extra
  return extra.get(_MARK) if isinstance(extra, dict) else None


def nested_sections(annotation) -> list[type]:
  """The Section classes a field's type holds (a section, a list of them, or either or None)."""
  import typing
  if isinstance(annotation, type) and issubclass(annotation, Section):
    return [annotation]
  return [s for arg in typing.get_args(annotation) for s in nested_sections(arg)]


def deciding(section: "Section", leave_out: tuple[str, ...] = (SPEED,)) -> dict:
  """`section` dumped without the keys whose mark is in `leave_out`: what decides its result.

  An unmarked section field is walked into (lists of sections item by item); any other
  unmarked field is refused, so a new key cannot slip past the rerun checks unjudged."""
  out = {}
  for name, field in type(section).model_fields.items():
    kind, value = mark(field), getattr(section, name)
    if kind is None and isinstance(value, Section):
      kept = deciding(value, leave_out)
      if kept:  # a section none of whose keys decide anything is left out whole
        out[name] = kept
    elif kind is None and isinstance(value, list) and nested_sections(field.annotation):
      out[name] = [deciding(item, leave_out) for item in value]
    elif kind is None:
      raise MindJaxError(f"{type(section).__name__}.{name}: not marked result, speed or source "
                         "(see mind_jax.config)")
    elif kind not in leave_out:
      out[name] = section.model_dump(include={name})[name]
  return out


class Section(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="forbid", validate_default=True)


class ModelSection(Section):
  """Which model to use and how to hold it."""

  path: str | None = result(
      None, description="HF model directory or mind_jax Orbax checkpoint")
  preset: str | None = result(
      None, description="named architecture for a random model: tiny, llama2-7b, llama3.1-8b, "
      "llama3.1-70b, llama3.2-1b, llama3.2-3b")
  dtype: Literal["float32", "bfloat16", "float16"] = result(
      "float32", description="compute dtype")
  param_dtype: Literal["float32", "bfloat16", "float16"] | None = result(
      None, description="storage dtype of the weights (default: dtype)")
  scan_layers: bool | None = speed(
      None, description="stack layers and scan over them (default: as an Orbax checkpoint "
      "stores them; off for HF checkpoints and presets)")
  remat: Literal["none", "full", "dots", "dots_no_batch"] = speed(
      "none", description="rematerialisation policy (training)")
  attention: Literal["auto", "xla", "tpu", "cudnn"] = speed(
      "auto", description="attention implementation: xla (any device), tpu (Pallas splash and "
      "paged attention kernels), cudnn (GPU flash attention); auto picks by the mesh's devices "
      "(tpu on TPU, cudnn on GPU, xla on CPU); a kernel the devices cannot run is refused")
  allow_unused_tensors: bool = result(
      False, description="load even if the checkpoint holds tensors the model does not use "
      "(e.g. config.json lists fewer layers than the weights); off: such a load is refused")
  quantize: Literal["int8"] | None = result(
      None, description="generation only: int8 stores every projection's weight (and an "
      "untied output head) as int8 with one scale per output channel, quantized as an HF "
      "checkpoint loads (or once, by mind_jax.convert quantize=int8 into an Orbax checkpoint); "
      "embeddings and norms keep param_dtype")

  def settings_beside_identity(self) -> dict:
    """The model's deciding keys other than which model it is (path, preset): each job names
    the model itself, a checkpoint by its content."""
    return {k: v for k, v in deciding(self).items() if k not in ("path", "preset")}

  def check_training(self) -> None:
    """Refuses the keys a job with a backward pass cannot use."""
    if self.quantize:
      raise MindJaxError(f"model.quantize={self.quantize}: int8 weights are for generation "
                         "(they have no gradients); train the float checkpoint")

  def check_inference(self) -> None:
    """Refuses the keys a job without a backward pass cannot use (accepted keys take effect)."""
    if self.remat != "none":
      raise MindJaxError(f"model.remat={self.remat}: rematerialisation trades compute for "
                         "activation memory in a backward pass, and this job has none; leave it "
                         "at none")


def kv_dtype_field():
  """`engine.kv_dtype` of the jobs that decode (generate, sample): one wording for both."""
  return result(
      None, description="KV cache entries: the model's dtype (default), or int8 with one "
      "float32 scale per token and kv head (about half the bytes: more sequences fit; the "
      "records differ slightly from the float cache's)")


class MeshSection(Section):
  """Device mesh and sharding rules."""

  axes: dict[str, int] = speed(
      default_factory=lambda: dict(_sharding().DEFAULT_MESH),
      description="mesh axis sizes; one may be -1 to take the remaining devices")
  rules: Literal["generate", "train"] = speed(
      "generate", description="logical-axis rule set")

  def build(self, devices=None, use_first: bool = False):
    """The mesh over `devices` (default: all). With `use_first`, a mesh with no -1 axis takes
    the first devices it names (the one-device default of convert and sample) instead of
    having to name them all."""
    import jax
    import math
    devices = list(jax.devices() if devices is None else devices)
    if use_first and -1 not in self.axes.values():
      devices = devices[:math.prod(self.axes.values())]
    try:
      return _sharding().make_mesh(self.axes, devices)
    except MindJaxError as e:
      raise MindJaxError(f"mesh.axes: {e}") from e


class RuntimeSection(Section):
  """How the job's device programs are compiled."""

  compile_cache: str | None = speed(
      "~/.cache/mind_jax/jax", description="directory of JAX's persistent compilation cache: a "
      "rerun of the same job loads its programs instead of compiling them (minutes for a 70B "
      "model on a slice); null or '' turns it off; JAX_COMPILATION_CACHE_DIR, if set, wins")

  def apply(self) -> None:
    """Turns the cache on for this process, before anything compiles."""
    if not self.compile_cache or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
      return  # off, or the user's own setting, which JAX reads itself
    import logging

    import jax
    path = os.path.expanduser(self.compile_cache)
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      logging.getLogger("mind_jax").warning("runtime.compile_cache=%s: cannot be created (%s); "
                                            "compiling without a cache", path, e.strerror)
      return
    jax.config.update("jax_compilation_cache_dir", path)
    # Every program, however quick to compile: a run is many small ones on a CPU, a few large
    # ones on a slice, and the point is that a rerun compiles none.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _parse_override(text: str) -> tuple[list[str], Any]:
  key, sep, raw = text.partition("=")
  if not sep or not key.strip():
    raise MindJaxError(f"command line: override {text!r} is not key=value")
  try:
    value = yaml.safe_load(raw) if raw.strip() else raw
  except yaml.YAMLError:
    value = raw
  return key.strip().split("."), value


def parse_yaml(text: str, source: str) -> dict:
  """A YAML mapping (empty text: {}); bad YAML fails with one line naming `source` and line."""
  try:
    data = yaml.safe_load(text)
  except yaml.YAMLError as e:
    mark = getattr(e, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark else ""
    raise MindJaxError(f"{source}:{where} invalid YAML ({getattr(e, 'problem', None) or e})") from e
  if data is None:
    return {}
  if not isinstance(data, dict):
    raise MindJaxError(f"{source}: top level must be a mapping of keys, got {type(data).__name__}")
  return data


def _read_yaml(path: str) -> dict:
  if not os.path.exists(path):
    raise MindJaxError(f"{path}: config file does not exist")
  with open(path) as f:
    return parse_yaml(f.read(), path)


def deep_merge(base: dict, update: dict) -> dict:
  merged = dict(base)
  for key, value in update.items():
    if isinstance(value, dict) and isinstance(merged.get(key), dict):
      merged[key] = deep_merge(merged[key], value)
    else:
      merged[key] = value
  return merged


def load_config(schema: type[Section], path: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Section:
  """Reads `path` (optional), applies `overrides`, validates against `schema`.

  Layers merge key by key: defaults, then the file, then the command line, so
  `mesh.axes.tensor=4` changes one axis and keeps the others.
  """
  data = deep_merge(schema().model_dump(), _read_yaml(path) if path else {})
  from_command_line = set()
  for text in overrides:
    keys, value = _parse_override(text)
    node = data
    for key in keys[:-1]:
      child = node.setdefault(key, {})
      if not isinstance(child, dict):
        raise MindJaxError(f"command line: {'.'.join(keys)}: {key} is not a section")
      node = child
    node[keys[-1]] = value
    from_command_line.add(".".join(keys))
  try:
    return schema.model_validate(data)
  except pydantic.ValidationError as e:
    error = e.errors()[0]
    key = ".".join(str(p) for p in error["loc"])
    source = "command line" if any(_related(key, k) for k in from_command_line) else (path or "config")
    message = error["msg"].removeprefix("Value error, ")  # pydantic's prefix for our validators
    if error["type"] == "extra_forbidden":
      message = "unknown key"
    if not key:  # a check over several keys (a model validator): the message names them
      raise MindJaxError(message) from e
    given = error.get("input")
    suffix = f" (got {given!r})" if error["type"] != "extra_forbidden" and not isinstance(given, dict) else ""
    raise MindJaxError(f"{source}: {key}: {message}{suffix}") from e


def keys(schema: type[Section], prefix: str = "", defaults: Section | None = None
         ) -> list[tuple[str, Any, str]]:
  """(dotted key, default, description) for every key of `schema`, as --help and the docs' CLI
  reference list them. Defaults are read from a default instance, so a job's own defaults for
  a shared section (sample's bfloat16 model, convert's one-device mesh) are the ones shown."""
  defaults = schema() if defaults is None else defaults
  found = []
  for name, field in schema.model_fields.items():
    key = f"{prefix}{name}"
    value = getattr(defaults, name)
    if isinstance(value, Section):
      found += keys(type(value), key + ".", value)
      continue
    found.append((key, value, "; ".join(filter(None, [field.description, _choices(field.annotation)]))))
  return found


def describe(schema: type[Section]) -> list[str]:
  """One line per key with its default and description, for --help."""
  return [f"  {key} = {value!r}" + (f"  ({about})" if about else "")
          for key, value, about in keys(schema)]


def _choices(annotation) -> str:
  """'one of: a, b' for a field whose type is a set of literal values (or None)."""
  import typing
  found, todo = [], [annotation]
  while todo:
    kind = todo.pop(0)
    if typing.get_origin(kind) is Literal:
      found += [repr(v) for v in typing.get_args(kind)]
    else:
      todo += [a for a in typing.get_args(kind) if a is not type(None)]
  return "one of: " + ", ".join(found) if found else ""


def _related(a: str, b: str) -> bool:
  """Whether two dotted keys name the same setting or one holds the other."""
  return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def flag_overrides(args: argparse.Namespace, keys: dict[str, str]) -> list[tuple[str, str]]:
  """(flag, key=value) for the shorthand flags that were given ({flag dest: config key})."""
  return [("--" + flag.replace("_", "-"), f"{key}={getattr(args, flag)}")
          for flag, key in keys.items() if getattr(args, flag) is not None]


def switch_overrides(args: argparse.Namespace, switches: dict[str, str]) -> list[tuple[str, str]]:
  """(flag, key=value) for the on/off flags that were given ({flag dest: the key=value it means})."""
  return [("--" + dest.replace("_", "-"), text) for dest, text in switches.items()
          if getattr(args, dest)]


def combine_overrides(explicit: list[str], flagged: list[tuple[str, str]]) -> list[str]:
  """The command line's key=value words plus the settings its flags stand for.

  A flag and a key=value that set one key to different values are refused, naming both,
  rather than one silently winning; the same value given both ways is accepted.
  """
  given = {}
  for text in explicit:
    keys, value = _parse_override(text)
    given[".".join(keys)] = (text, value)
  for flag, text in flagged:
    keys, value = _parse_override(text)
    key = ".".join(keys)
    for other, (other_text, other_value) in given.items():
      if _related(key, other) and (other != key or other_value != value):
        raise MindJaxError(f"command line: {flag} sets {key}, and so does {other_text}; give one")
  return list(explicit) + [text for _, text in flagged]


class _JobParser(argparse.ArgumentParser):
  """Flags and key=value words in any order (`a=b --dry-run c=d`)."""

  def parse_args(self, args=None, namespace=None):
    return self.parse_intermixed_args(args, namespace)


def argument_parser(prog: str, description: str, schema: type[Section],
                    default_config: str | None = None) -> argparse.ArgumentParser:
  """argparse with --config FILE and free key=value overrides; --help lists every key."""
  epilog = "configuration keys (override with key=value):\n" + "\n".join(describe(schema))
  parser = _JobParser(
      prog=prog, description=textwrap.dedent(description),
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
  parser.add_argument("--config", default=default_config,
                      help="YAML config file" + (f" (default: {default_config})" if default_config else ""))
  parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
  parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  return parser


def _sharding():
  # Imported on use: configs of jobs that never build a mesh (filter, report) load without JAX.
  from mind_jax import sharding
  return sharding
