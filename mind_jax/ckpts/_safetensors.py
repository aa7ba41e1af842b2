"""Streaming safetensors I/O: read any slice of one tensor, write shards tensor by tensor.

Reads use positioned file reads rather than mmap so that only the bytes a
device shard needs are ever resident: a 70B import on a TPU VM host holds one
slice at a time, not a second copy of the model.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Callable, Sequence

import ml_dtypes
import numpy as np

from mind_jax._atomic import atomic_open, write_json
from mind_jax._errors import MindJaxError
from mind_jax._paths import checkpoint_file

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


_HUGE_PAGE_MIN = 2 << 20


def host_empty(shape, dtype) -> np.ndarray:
  """An uninitialised host array; large ones are backed by transparent huge pages.

  Filling fresh memory costs one page fault per 4 KiB page, which dominates a
  checkpoint read from the page cache; 2 MiB pages cut that cost several-fold.
  """
  dtype = np.dtype(dtype)
  nbytes = math.prod(shape) * dtype.itemsize
  if nbytes < _HUGE_PAGE_MIN or not hasattr(mmap, "MADV_HUGEPAGE"):
    return np.empty(shape, dtype)
  region = mmap.mmap(-1, nbytes)
  region.madvise(mmap.MADV_HUGEPAGE)
  return np.frombuffer(region, dtype).reshape(shape)


class TensorInfo:
  __slots__ = ("path", "name", "dtype", "shape", "offset")

  def __init__(self, path, name, dtype, shape, offset):
    self.path, self.name, self.dtype, self.shape, self.offset = path, name, dtype, shape, offset

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * self.dtype.itemsize


def _read_header(path: str) -> dict[str, TensorInfo]:
  try:
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) < 8:
        raise MindJaxError(f"{path}: not a safetensors file (truncated header)")
      (length,) = struct.unpack("<Q", raw)
      if length > 100_000_000:
        raise MindJaxError(f"{path}: not a safetensors file (header length {length})")
      header = json.loads(f.read(length))
  except OSError as e:
    raise MindJaxError(f"{path}: cannot read ({e.strerror})") from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise MindJaxError(f"{path}: not a safetensors file (bad header)") from e
  base = 8 + length
  infos, end = {}, 0
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    if entry["dtype"] not in _DTYPES:
      raise MindJaxError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
    begin, stop = entry["data_offsets"]
    end = max(end, stop)
    infos[name] = TensorInfo(path, name, _DTYPES[entry["dtype"]], tuple(entry["shape"]), base + begin)
  # A copy cut short is named now, before a job spends minutes on what comes before the weights.
  size = os.path.getsize(path)
  if size < base + end:
    raise MindJaxError(f"{path}: truncated ({size} bytes where its header describes "
                       f"{base + end})")
  return infos


# Weights saved by torch.save: reading them means unpickling, which runs whatever code the
# file names, so they are pointed at a one-time conversion instead of being read.
_PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def _no_safetensors_error(model_dir: str) -> MindJaxError:
  try:
    listing = sorted(os.listdir(model_dir))
  except OSError:
    listing = []
  pickles = [f for f in listing if f in _PICKLE_NAMES or f.endswith(".pth")]
  if not pickles:
    return MindJaxError(f"{model_dir}: no {SINGLE_NAME} or {INDEX_NAME} found")
  found = f"no {SINGLE_NAME} or {INDEX_NAME}, only PyTorch pickle weights ({', '.join(pickles[:3])})"
  if any(f in _PICKLE_NAMES for f in pickles):
    how = ("convert once with transformers: python -c \"from transformers import "
           f"AutoModelForCausalLM as M; M.from_pretrained('{model_dir}')"
           f".save_pretrained('{model_dir.rstrip(os.sep)}-safetensors')\"")
  else:  # Meta's original consolidated.NN.pth layout, which from_pretrained does not read
    how = ("convert once with transformers' models/llama/convert_llama_weights_to_hf.py, "
           "which writes safetensors")
  return MindJaxError(f"{model_dir}: {found}, which mind_jax does not read because unpickling "
                      f"can run code; {how}")


class SafetensorsReader:
  """All tensors of an HF model directory (one file, or shards with an index)."""

  def __init__(self, model_dir: str):
    self.model_dir = model_dir
    index = os.path.join(model_dir, INDEX_NAME)
    single = os.path.join(model_dir, SINGLE_NAME)
    if os.path.exists(index):
      try:
        with open(index) as f:
          weight_map = json.load(f)["weight_map"]
        names = set(weight_map.values())
      except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise MindJaxError(f"{index}: invalid index ({e})") from e
      paths = [checkpoint_file(model_dir, name, index) for name in sorted(names, key=str)]
    elif os.path.lexists(single):
      paths = [checkpoint_file(model_dir, SINGLE_NAME)]
    else:
      raise _no_safetensors_error(model_dir)
    self.tensors: dict[str, TensorInfo] = {}
    for path in paths:
      if not os.path.exists(path):
        raise MindJaxError(f"{path}: listed in {INDEX_NAME} but missing" if os.path.exists(index)
                           else f"{path}: a broken link")
      self.tensors.update(_read_header(path))
    self._files: dict[str, object] = {}

  def __contains__(self, name: str) -> bool:
    return name in self.tensors

  def info(self, name: str) -> TensorInfo:
    if name not in self.tensors:
      raise MindJaxError(f"{self.model_dir}: missing tensor {name}")
    return self.tensors[name]

  def read(self, name: str, index: Sequence[slice] | None = None) -> np.ndarray:
    """Reads `tensor[index]` into fresh memory, touching only the rows it covers."""
    info = self.info(name)
    shape = info.shape
    index = tuple(index or ()) + (slice(None),) * (len(shape) - len(index or ()))
    if not shape:
      rows, rest = range(1), ()
    else:
      rows, rest = range(*index[0].indices(shape[0])), index[1:]
    row_bytes = math.prod(shape[1:]) * info.dtype.itemsize
    if rows.step != 1:
      raise MindJaxError(f"{name}: strided reads are not supported")
    out = host_empty((len(rows) * row_bytes,), np.uint8)
    fd = self._fd(info.path)
    got = os.preadv(fd, [memoryview(out)], info.offset + rows.start * row_bytes) if len(out) else 0
    if got != len(out):
      raise MindJaxError(f"{info.path}: truncated while reading tensor {name}")
    array = out.view(info.dtype).reshape((len(rows),) + shape[1:] if shape else ())
    return array[(slice(None),) + tuple(rest)] if shape else array

  def _fd(self, path):
    if path not in self._files:
      self._files[path] = os.open(path, os.O_RDONLY)
    return self._files[path]

  def close(self):
    for fd in self._files.values():
      os.close(fd)
    self._files.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def plan_shards(entries: Sequence[tuple[str, np.dtype, tuple[int, ...]]],
                max_shard_bytes: int) -> list[list[tuple[str, np.dtype, tuple[int, ...]]]]:
  """Groups tensors, in order, into shards of at most `max_shard_bytes` (one tensor may exceed it)."""
  shards, current, size = [], [], 0
  for entry in entries:
    nbytes = math.prod(entry[2]) * np.dtype(entry[1]).itemsize
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(entry)
    size += nbytes
  if current:
    shards.append(current)
  return shards


def write_shards(out_dir: str, entries: Sequence[tuple[str, np.dtype, tuple[int, ...]]],
                 fetch: Callable[[str], np.ndarray], max_shard_bytes: int,
                 on_tensor: Callable[[int], None] | None = None) -> list[str]:
  """Writes tensors as safetensors shards plus an index, holding one tensor in memory at a time.

  `entries` fixes names, dtypes and shapes up front so each shard's header is
  written before its data; `fetch(name)` produces the tensor when its turn comes.
  Each file appears atomically (mind_jax._atomic).
  """
  shards = plan_shards(entries, max_shard_bytes)
  if len(shards) == 1:
    names = [SINGLE_NAME]
  else:
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  weight_map, total = {}, 0
  for file, shard in zip(names, shards):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in shard:
      nbytes = math.prod(shape) * np.dtype(dtype).itemsize
      header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape),
                      "data_offsets": [offset, offset + nbytes]}
      offset += nbytes
      weight_map[name] = file
    total += offset
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    with atomic_open(os.path.join(out_dir, file), "wb") as f:
      f.write(struct.pack("<Q", len(blob)))
      f.write(blob)
      for name, dtype, shape in shard:
        array = np.ascontiguousarray(fetch(name), dtype=dtype)
        if array.shape != tuple(shape):
          raise MindJaxError(f"{name}: produced shape {array.shape}, expected {tuple(shape)}")
        f.write(memoryview(array.reshape(-1).view(np.uint8)))
        if on_tensor:
          on_tensor(array.nbytes)
  if len(shards) > 1:
    write_json(os.path.join(out_dir, INDEX_NAME),
               {"metadata": {"total_size": total}, "weight_map": weight_map})
  return names


def parse_size(size: str | int) -> int:
  """'5GB', '500MB', '2GiB' or a byte count -> bytes."""
  if isinstance(size, int):
    return size
  text = size.strip().upper()
  units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
  for unit, factor in units.items():
    if text.endswith(unit):
      try:
        return int(float(text[: -len(unit)]) * factor)
      except ValueError:
        break
  try:
    return int(text)
  except ValueError as e:
    raise MindJaxError(f"invalid size {size!r}; use e.g. 5GB, 500MB or a byte count") from e


