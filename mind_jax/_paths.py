"""Where a checkpoint's files may be: inside its directory, never outside.

A downloaded checkpoint is input from a stranger. An index naming `../../.ssh/id_rsa`, an
absolute path, or a symlink out of the directory must not make us open that file, whichever
file it is: weights, config.json or the tokenizer's files.
"""

from __future__ import annotations

import os

from mind_jax._errors import MindJaxError


def is_within(path: str, directory: str) -> bool:
  """Whether `path` is `directory` or lies below it (both already normalised)."""
  return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _hub_blobs(real_dir: str) -> str | None:
  """The `blobs/` folder a Hugging Face hub cache snapshot may link into, or None.

  The hub cache stores each file once under `models--ORG--NAME/blobs/<hash>` and
  presents every revision as `models--ORG--NAME/snapshots/<rev>/` of symlinks
  into it, so a snapshot's weights always resolve outside the snapshot itself.
  Only that repository's own `blobs/` is accepted, never a sibling repository's.
  """
  snapshots, _ = os.path.split(real_dir)
  repo, name = os.path.split(snapshots)
  if name != "snapshots" or not os.path.basename(repo).startswith("models--"):
    return None
  return os.path.join(repo, "blobs")


def checkpoint_file(model_dir: str, name: str, listed_in: str | None = None) -> str:
  """The path of file `name` of a checkpoint, refused unless it lies inside `model_dir`.

  Every file name a checkpoint supplies goes through here: a downloaded index
  naming `../../.ssh/id_rsa`, `/dev/zero` or a symlink out of the directory must
  not make us open it. `listed_in` is the file that supplied the name (the
  index), None for a name we chose ourselves (`model.safetensors`).
  """
  what = f"{listed_in}: weight_map names {name!r}" if listed_in else os.path.join(model_dir, name)
  refuse = f"lies outside the model directory {model_dir}; refusing to read it"
  if not isinstance(name, str) or not name:
    raise MindJaxError(f"{listed_in}: invalid index (weight_map value {name!r} is not a file name)")
  root = os.path.abspath(model_dir)
  path = os.path.normpath(os.path.join(root, name))
  if os.path.isabs(name) or not is_within(path, root):
    raise MindJaxError(f"{what}, which {refuse}")
  if ".." in name.split(os.sep):
    # Harmless where it ends up inside, but no writer of indexes produces one: a sign of tampering.
    raise MindJaxError(f"{what}, a path through '..'; a file of the model directory {model_dir} "
                       "needs none, so refusing to read it")
  real_root, real = os.path.realpath(root), os.path.realpath(path)
  if not is_within(real, real_root):
    blobs = _hub_blobs(real_root)
    if blobs is None or not is_within(real, blobs):
      link = f"{what}, a link to {real}," if listed_in else f"{what} is a link to {real},"
      raise MindJaxError(f"{link} which {refuse}")
  return os.path.join(model_dir, name)


def check_confined(model_dir: str) -> None:
  """Refuses a model directory with a top-level link out of it (config.json, the tokenizer's
  files, weights: every file a load opens sits at the top level)."""
  try:
    entries = sorted(e.name for e in os.scandir(model_dir) if e.is_symlink())
  except OSError:
    return  # a missing directory is reported by the loader, in its own words
  for name in entries:
    checkpoint_file(model_dir, name)
