"""Output directories: checked before any work starts, owned by the job that wrote them.

Every job validates its output directory up front (a model load takes minutes at 8B and hours
of a TPU slice at 70B, so a typo in `output.dir` must not surface after it), and records the
settings that determine its output in `run.json`. A rerun into the same directory compares its
settings with that record and refuses, naming the keys that differ, rather than mixing two
datasets; `overwrite=true` starts afresh, deleting only the files the record says the job wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping

from mind_jax._atomic import write_json
from mind_jax._errors import REFUSED_WRITE_ERRNOS, DiskFull, MindJaxError, remedy
from mind_jax._paths import is_within

RUN_RECORD = "run.json"


def _is_remote(path: str) -> bool:
  return "://" in path


def _local_root(path: str) -> str | None:
  """The real local path a source names (a glob's fixed prefix), or None if it names no local
  file or directory (gs://, `champ`, `tfds:...`)."""
  from mind_jax.data import glob_root
  if not path or _is_remote(path):
    return None
  path = glob_root(path) or "."
  return os.path.realpath(path) if os.path.exists(path) else None


def check_output_dir(path: str, key: str, inputs: Iterable[str] = ()) -> None:
  """Fails with one line unless `path` can be this job's output directory.

  It must not be a file, must be creatable and writable (its nearest existing ancestor decides
  when it does not exist yet), and must neither lie inside one of `inputs` nor contain one:
  a job that reads what it writes would feed its own output back in on the next run. Object
  store paths (gs://) are checked for not being a file only: writability there is the bucket's
  policy, known at the first write.
  """
  if not path:
    raise MindJaxError(f"{key}: no output directory given")
  if _is_remote(path):
    from etils import epath
    if epath.Path(path).is_file():
      raise MindJaxError(f"{key}={path}: is a file, not a directory")
    return
  real = os.path.realpath(path)
  if os.path.exists(real) and not os.path.isdir(real):
    raise MindJaxError(f"{key}={path}: is a file, not a directory")
  existing = real
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise MindJaxError(f"{key}={path}: cannot be created ({existing} is a file)")
  try:  # a real attempt: permission bits say nothing to root, or of read-only mounts
    os.rmdir(tempfile.mkdtemp(prefix=".mind_jax-write-check-", dir=existing))
  except OSError as e:
    what = "is not writable" if existing == real else f"cannot be created in {existing}"
    if e.errno in REFUSED_WRITE_ERRNOS:  # the storage refused, not the user: exit 1
      raise DiskFull(f"{key}={path}: {what} ({e.strerror}); nothing was written; "
                     f"{remedy(e.errno)}") from e
    raise MindJaxError(f"{key}={path}: {what} ({e.strerror})") from e
  for source in inputs:
    root = _local_root(source)
    if root is None:
      continue
    if is_within(root, real):
      raise MindJaxError(f"{key}={path}: contains the input {source}; write elsewhere")
    if is_within(real, root) and os.path.isdir(root):  # a file input has nothing inside it
      raise MindJaxError(f"{key}={path}: lies inside the input {source}; write elsewhere")


def flatten(settings: Mapping, prefix: str = "") -> dict[str, object]:
  """{"a": {"b": 1}} -> {"a.b": 1}: settings compared key by key."""
  flat = {}
  for name, value in settings.items():
    if isinstance(value, Mapping) and value:
      flat.update(flatten(value, f"{prefix}{name}."))
    else:
      flat[f"{prefix}{name}"] = value
  return flat


def differences(recorded: Mapping, current: Mapping) -> list[str]:
  """`key (old -> new)` for each key both records hold with different values.

  A key only one side holds (a style added to a run, say) is no conflict: records of the
  styles both hold are still made the same way.
  """
  old, new = flatten(recorded), flatten(current)
  out = []
  for key in sorted(old.keys() & new.keys()):
    if old[key] != new[key]:
      out.extend(_changed(key, old[key], new[key]))
  return out


def _changed(key: str, old, new) -> list[str]:
  """A difference as a user reads it: lists of sections (data sources) item by item and key
  by key, not as two whole reprs."""
  sections = lambda v: isinstance(v, list) and all(isinstance(i, Mapping) for i in v)  # noqa: E731
  if not (sections(old) and sections(new)):
    return [f"{key} ({old!r} -> {new!r})"]
  if len(old) != len(new):
    return [f"{key} ({len(old)} items -> {len(new)})"]
  out = []
  for i, (a, b) in enumerate(zip(old, new)):
    a, b = flatten(a), flatten(b)
    for name in sorted(a.keys() | b.keys()):
      if a.get(name) != b.get(name):
        out.extend(_changed(f"{key}[{i}].{name}", a.get(name), b.get(name)))
  return out


def file_fingerprint(path: str, sample_bytes: int = 1 << 20) -> str:
  """A cheap content fingerprint of a large file: its size and its first and last MiB.

  Two checkpoints of one architecture have the same sizes but different weights everywhere,
  so a MiB from each end tells them apart without reading gigabytes.
  """
  digest = hashlib.sha256()
  size = os.path.getsize(path)
  digest.update(str(size).encode())
  with open(path, "rb") as f:
    digest.update(f.read(sample_bytes))
    if size > 2 * sample_bytes:
      f.seek(size - sample_bytes)
      digest.update(f.read(sample_bytes))
  return digest.hexdigest()[:16]


def dir_fingerprint(path: str) -> str:
  """A fingerprint of a model directory's files (weights, config, tokenizer), by content:
  the same checkpoint copied elsewhere has the same one. Hidden files (download caches) and
  documentation are left out."""
  digest = hashlib.sha256()
  for dirpath, dirs, names in os.walk(path, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
      if name.startswith(".") or name.lower().endswith(".md") or name.upper().startswith("LICENSE"):
        continue
      full = os.path.join(dirpath, name)
      digest.update(os.path.relpath(full, path).encode() + b"\0")
      digest.update(file_fingerprint(full).encode())
  return digest.hexdigest()[:16]


def read_run_record(out_dir: str) -> dict | None:
  """The run record of `out_dir`, or None if it has none."""
  from etils import epath
  path = epath.Path(out_dir) / RUN_RECORD
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise MindJaxError(f"{path}: unreadable run record ({e}); move it aside only if you know "
                       "which files of the directory its run wrote") from e
  if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
    raise MindJaxError(f"{path}: not a mind_jax run record")
  return record


def claim(out_dir: str, job: str, settings: Mapping, *, overwrite: bool, key: str,
          remove_owned, foreign: Iterable[str] = (), dry_run: bool = False,
          notes: Mapping | None = None, files: Iterable[str] | None = None,
          grows: Iterable[str] = ()) -> dict:
  """Makes `out_dir` this run's, or refuses with one line; returns the record written.

  - A directory holding another job's record, or files of the kinds this job writes but no
    record vouching for them (`foreign`: written by an older version or another tool), is
    refused: nothing in it is ours to replace or delete.
  - A record of this job with other settings is refused, naming the keys that differ, unless
    `overwrite`: then `remove_owned(record)` deletes the files the earlier run wrote (and only
    those) before the new record is written.
  - A record with the same settings is a resume: the record is kept, widened by any new keys.
  `dry_run` checks without writing or deleting anything. `notes` are recorded for the jobs
  that read this output (the generator's tokenizer, say) but not compared; `files`, when the
  job lists what it writes, are the files the record owns. `grows`: keys whose value may rise
  on a resume (a training's `steps`: the run is extended); the record takes the new value.
  """
  from etils import epath
  flat = flatten(settings)
  record = read_run_record(out_dir)
  where = f"{key}={out_dir}"
  if record is None:
    foreign = sorted(foreign)
    if foreign:
      raise MindJaxError(
          f"{where}: holds {len(foreign)} file(s) like this job's output ({foreign[0]}, ...) but "
          f"no {RUN_RECORD} that says mind_jax.{job} wrote them; move them away or write elsewhere")
    previous = {}
  elif record.get("job") != job:
    raise MindJaxError(f"{where}: holds the output of mind_jax.{record.get('job')}; "
                       f"write elsewhere")
  else:
    previous = record["settings"]
    grown = {k for k in grows if k in previous and k in flat and flat[k] > previous[k]}
    changed = [c for c in differences(previous, flat) if c.split(" (")[0] not in grown]
    if changed and not overwrite:
      raise MindJaxError(
          f"{where}: written with other settings: {', '.join(changed)}; write to another "
          "directory, or add --overwrite to replace what that run wrote there")
    if changed:
      if not dry_run:
        remove_owned(record)
      previous = {}
  new_record = {"job": job, "settings": {**previous, **flat}, "notes": dict(notes or {})}
  if files is not None:
    new_record["files"] = sorted(files)
  if not dry_run:
    root = epath.Path(out_dir)
    try:
      root.mkdir(parents=True, exist_ok=True)
      write_json(root / RUN_RECORD, new_record, shared=True)
    except OSError as e:
      raise MindJaxError(f"{where}: cannot write {RUN_RECORD} ({e.strerror or e})") from e
  return new_record


def write_run_notes(out_dir: str, notes: Mapping, enabled: bool = True) -> None:
  """Merges `notes` into the run record's notes (what a run learns after claiming its
  directory: where a training was extended). `enabled`: the host that writes."""
  record = read_run_record(out_dir)
  if enabled and record is not None:
    from etils import epath
    record["notes"] = {**record.get("notes", {}), **notes}
    write_json(epath.Path(out_dir) / RUN_RECORD, record, shared=True)


def replaces(out_dir: str, job: str, settings: Mapping) -> bool:
  """Whether `claim(..., overwrite=True)` would delete an earlier run's files."""
  record = read_run_record(out_dir)
  return bool(record and record.get("job") == job
              and differences(record["settings"], flatten(settings)))


def owned_files(out_dir: str, job: str, outputs: Iterable[str], key: str) -> set[str]:
  """The files an earlier run of `job` recorded writing in `out_dir`; refuses, with one line,
  a directory another job owns or an output name taken by a file nobody recorded (a user's, or
  an older version's): such files are never replaced."""
  from etils import epath
  record = read_run_record(out_dir)
  if record is not None and record.get("job") != job:
    raise MindJaxError(f"{key}={out_dir}: holds the output of mind_jax.{record.get('job')}; "
                       "write elsewhere")
  owned = set(record.get("files", [])) if record else set()
  root = epath.Path(out_dir)
  foreign = sorted(name for name in outputs if name not in owned and (root / name).exists())
  if foreign:
    more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
    raise MindJaxError(f"{key}={out_dir}: {foreign[0]}{more} exists and was not written by "
                       f"mind_jax.{job}; move it away or write elsewhere")
  return owned
