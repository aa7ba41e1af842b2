"""Convert checkpoints: Hugging Face safetensors <-> mind_jax Orbax parameters.

The direction follows the source: an HF directory (config.json + safetensors)
becomes an Orbax checkpoint, a mind_jax Orbax checkpoint becomes an HF
directory that transformers loads. Tensors stream one at a time, and with a
mesh each host reads only the slices its devices hold.

  python -m mind_jax.convert /ckpt/Llama-3.1-8B-Instruct /ckpt/llama3.1-8b-orbax
  python -m mind_jax.convert /ckpt/llama3.1-8b-orbax ./exported --dtype bfloat16
  python -m mind_jax.convert /ckpt/Llama-3.1-70B-Instruct /ckpt/70b-orbax mesh.axes.fsdp=-1

dst must be a new or empty directory apart from src; --overwrite replaces a
checkpoint written there before, leaving files that are not the checkpoint's.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from typing import Literal

import pydantic

from mind_jax import config as config_lib
from mind_jax._errors import MindJaxError, check_space, run_cli
from mind_jax._outdir import check_output_dir
from mind_jax._progress import setup_logging

log = logging.getLogger("mind_jax.convert")


class ConvertConfig(config_lib.Section):
  src: str | None = pydantic.Field(None, description="HF model directory or mind_jax Orbax "
                                   "checkpoint (SRC)")
  dst: str | None = pydantic.Field(None, description="output directory, new or empty (DST)")
  to: Literal["orbax", "hf"] | None = pydantic.Field(
      None, description="output format (default: the other one than src's)")
  dtype: Literal["float32", "bfloat16", "float16"] | None = pydantic.Field(
      None, description="cast parameters to this dtype (default: keep the source's)")
  scan_layers: bool | None = pydantic.Field(
      None, description="store layers stacked for scan (default: as the source)")
  quantize: Literal["int8"] | None = pydantic.Field(
      None, description="int8: store the projections' weights as int8 with per-output-channel "
      "scales (Orbax output only), for generation jobs to load without quantizing again")
  calibration: str | None = pydantic.Field(
      None, description="with quantize=int8: documents (a JSONL/Parquet file, folder or glob "
      "with a `text` field, as generate reads them) on which the int8 values are chosen by "
      "GPTQ, so that each projection's outputs, not each weight, stay close to the float "
      "model's; the model is read with layers apart and written so (default: round every "
      "weight to its nearest step, no data needed)")
  calibration_sequences: int = pydantic.Field(
      128, ge=1, description="calibration windows of calibration_length tokens (fewer if the "
      "documents run out)")
  calibration_length: int = pydantic.Field(
      512, ge=8, description="tokens per calibration window (a BOS, then the documents' "
      "tokens in order, each document followed by EOS)")
  allow_unused_tensors: bool = pydantic.Field(
      False, description="load an HF checkpoint even if the model its config.json describes "
      "leaves some tensors unused (default: refuse, as config.json may not match the weights)")
  max_shard_size: str = pydantic.Field("5GB", description="largest safetensors shard (HF output)")
  overwrite: bool = pydantic.Field(
      False, description="write into a non-empty dst, replacing a checkpoint written there "
      "before (other files there are left alone)")
  progress: bool = pydantic.Field(True, description="progress bar")
  mesh: config_lib.MeshSection = pydantic.Field(
      default_factory=lambda: config_lib.MeshSection(axes={"data": 1}, rules="train"),
      description="devices the tensors are read onto (default: one; mesh.axes.fsdp=-1 shards "
      "them over all, each host reading only its slices)")


def run(cfg: ConvertConfig) -> str:
  """Converts `cfg.src` to `cfg.dst`; returns the format written ("orbax" or "hf").

  `dst` must be new or empty unless `overwrite`; it may never be `src`, lie
  inside it or contain it.
  """
  from mind_jax.ckpts import (is_orbax_dir, load_model, save_orbax_model, save_pretrained,
                              stored_dtype)
  from mind_jax.ckpts import require_model_dir
  if not cfg.src or not cfg.dst:
    raise MindJaxError("give SRC and DST (or src=... dst=...)")
  require_model_dir(cfg.src)
  target = cfg.to or ("hf" if is_orbax_dir(cfg.src) else "orbax")
  if cfg.quantize and target != "orbax":
    raise MindJaxError(f"quantize={cfg.quantize}: int8 weights are written as an Orbax "
                       "checkpoint (to=orbax); an HF export holds float weights")
  if cfg.calibration and cfg.quantize != "int8":
    raise MindJaxError(f"calibration={cfg.calibration}: chooses int8 values; give quantize=int8 "
                       "too")
  if cfg.calibration and cfg.scan_layers:
    raise MindJaxError("scan_layers=true: calibration runs the layers one at a time, so its "
                       "checkpoint keeps them apart (generation unrolls them anyway); drop one")
  check_dst(cfg.src, cfg.dst, cfg.overwrite)
  texts = _calibration_texts(cfg) if cfg.calibration else None  # bad input before the load
  mesh = cfg.mesh.build(use_first=True)
  start = time.perf_counter()
  # By default the checkpoint's own storage dtype is kept: bf16 stays bf16.
  model_section = config_lib.ModelSection(
      path=cfg.src, dtype=cfg.dtype or stored_dtype(cfg.src),
      scan_layers=False if texts else cfg.scan_layers,
      allow_unused_tensors=cfg.allow_unused_tensors, quantize=None if texts else cfg.quantize)
  model, tokenizer, _ = load_model(model_section, mesh, cfg.mesh.rules, progress=cfg.progress)
  log.info("loaded %s in %.1fs", cfg.src, time.perf_counter() - start)
  if texts:
    _calibrate(model, tokenizer, texts, cfg)
  import jax
  from flax import nnx
  weights = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
  check_space(cfg.dst, int(weights * 1.05), "dst", f"the {target} checkpoint",
              "nothing was written")
  fresh = not os.path.isdir(cfg.dst) or not os.listdir(cfg.dst)
  try:
    if target == "orbax":
      save_orbax_model(model, cfg.dst, tokenizer, overwrite=cfg.overwrite)
    else:
      save_pretrained(model, cfg.dst, tokenizer, max_shard_size=cfg.max_shard_size,
                      progress=cfg.progress, overwrite=cfg.overwrite)
  except Exception:
    if fresh:  # ours alone: a rerun must find it new or empty again
      shutil.rmtree(cfg.dst, ignore_errors=True)
    raise
  log.info("wrote %s checkpoint to %s (%.1fs in all)", target, cfg.dst, time.perf_counter() - start)
  return target


def _calibration_texts(cfg: ConvertConfig) -> list[str]:
  """The calibration documents' texts, as many as can fill the windows (about 2 characters a
  token, a generous bound for the tokenizers of Llama models)."""
  from mind_jax.data import read_documents
  wanted = 2 * cfg.calibration_sequences * cfg.calibration_length
  texts, size = [], 0
  for document in read_documents(cfg.calibration):
    texts.append(document.text)
    size += len(document.text)
    if size >= wanted:
      break
  if not texts:
    raise MindJaxError(f"calibration={cfg.calibration}: no documents with text")
  return texts


def _calibrate(model, tokenizer, texts: list[str], cfg: ConvertConfig) -> None:
  import numpy as np

  from mind_jax._progress import progress_bar
  from mind_jax.nn import calibrate_int8
  if tokenizer is None:
    raise MindJaxError(f"{cfg.src}: no tokenizer files, which calibration needs to read "
                       f"{cfg.calibration}")
  stream = []
  for text in texts:
    stream += tokenizer.encode(text) + list(tokenizer.eos_ids[:1])
  width = cfg.calibration_length - 1
  count = min(cfg.calibration_sequences, len(stream) // width)
  if count == 0:
    raise MindJaxError(f"calibration={cfg.calibration}: {len(stream)} tokens, fewer than one "
                       f"window of calibration_length={cfg.calibration_length}")
  bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else [stream[0]]
  tokens = np.asarray([bos + stream[i * width:(i + 1) * width] for i in range(count)], np.int32)
  layers = model.config.num_hidden_layers
  log.info("calibrating int8 values (GPTQ) on %d windows of %d tokens from %s", count,
           cfg.calibration_length, cfg.calibration)
  with progress_bar(layers, "calibrate", unit="layer", enabled=cfg.progress) as bar:
    calibrate_int8(model, tokens, progress=lambda done: bar.update(1))


def check_dst(src: str, dst: str, overwrite: bool) -> None:
  """Fails with one line before the (minutes-long) load if `dst` cannot take the output.

  Writing into the source would mix the two formats in one directory (and an
  HF export over its own source would replace the weights being read).
  """
  if os.path.realpath(dst) == os.path.realpath(src):
    raise MindJaxError(f"dst={dst}: is the source checkpoint {src}; write the conversion elsewhere")
  check_output_dir(dst, "dst", inputs=[src])
  if os.path.isdir(dst) and os.listdir(dst) and not overwrite:
    raise MindJaxError(f"dst={dst}: exists and is not empty; give a new or empty directory, or "
                       "--overwrite to replace a checkpoint written there before")


def main(argv=None) -> int:
  parser = config_lib.argument_parser("python -m mind_jax.convert", __doc__, ConvertConfig)
  parser.usage = "python -m mind_jax.convert SRC DST [options] [key=value ...]"
  parser.add_argument("--to", choices=["orbax", "hf"], help="same as to=...")
  parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                      help="same as dtype=... (default: keep the source's)")
  parser.add_argument("--max-shard-size", help="same as max_shard_size=... (default: 5GB)")
  parser.add_argument("--scan-layers", action="store_true", help="same as scan_layers=true")
  parser.add_argument("--overwrite", action="store_true", help="same as overwrite=true")
  parser.add_argument("--allow-unused-tensors", action="store_true",
                      help="same as allow_unused_tensors=true")
  parser.add_argument("-q", "--quiet", action="store_true", help="same as progress=false")
  args = parser.parse_args(argv)
  setup_logging(args.verbose)
  paths = [w for w in args.overrides if "=" not in w]
  explicit = [w for w in args.overrides if "=" in w]
  explicit += [f"{key}={path}" for key, path in zip(("src", "dst"), paths)]
  flagged = config_lib.flag_overrides(args, {"to": "to", "dtype": "dtype",
                                             "max_shard_size": "max_shard_size"})
  flagged += config_lib.switch_overrides(args, {
      "scan_layers": "scan_layers=true", "overwrite": "overwrite=true",
      "allow_unused_tensors": "allow_unused_tensors=true", "quiet": "progress=false"})

  def job():
    if len(paths) > 2:
      raise MindJaxError(f"command line: give SRC and DST only, got {len(paths)} paths: "
                         f"{' '.join(paths)}")
    return run(config_lib.load_config(ConvertConfig, args.config,
                                      config_lib.combine_overrides(explicit, flagged)))

  return run_cli(job)


if __name__ == "__main__":
  sys.exit(main())
