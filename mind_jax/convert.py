"""Convert checkpoints: Hugging Face safetensors <-> mind_jax Orbax parameters.

The direction follows the source: an HF directory (config.json + safetensors)
becomes an Orbax checkpoint, a mind_jax Orbax checkpoint becomes an HF
directory that transformers loads. Tensors stream one at a time, and with a
mesh each host reads only the slices its devices hold.

  python -m mind_jax.convert /ckpt/Llama-3.1-8B-Instruct /ckpt/llama3.1-8b-orbax
  python -m mind_jax.convert /ckpt/llama3.1-8b-orbax ./exported --dtype bfloat16

dst must be a new or empty directory apart from src; --overwrite replaces a
checkpoint written there before, leaving files that are not the checkpoint's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from mind_jax import sharding
from mind_jax._errors import MindJaxError, run_cli
from mind_jax._outdir import check_output_dir
from mind_jax._progress import setup_logging
from mind_jax.ckpts import (is_orbax_dir, load_pretrained, save_orbax_model, save_pretrained,
                             stored_dtype)
from mind_jax.ckpts._pretrained import _require_dir

log = logging.getLogger("mind_jax.convert")


def convert(src: str, dst: str, *, to: str | None = None, dtype: str | None = None,
            max_shard_size: str = "5GB", scan_layers: bool | None = None,
            mesh_axes: dict[str, int] | None = None, rules: str = "train",
            progress: bool = True, overwrite: bool = False, allow_unused: bool = False) -> str:
  """Converts `src` to `dst`; returns the format written ("orbax" or "hf").

  `dst` must be new or empty unless `overwrite`; it may never be `src`, lie
  inside it or contain it.
  """
  _require_dir(src)
  target = to or ("hf" if is_orbax_dir(src) else "orbax")
  if target not in ("orbax", "hf"):
    raise MindJaxError(f"--to must be 'orbax' or 'hf', got {target!r}")
  check_dst(src, dst, overwrite)
  mesh = sharding.make_mesh(mesh_axes) if mesh_axes else None
  start = time.perf_counter()
  # By default the checkpoint's own storage dtype is kept: bf16 stays bf16.
  dtype = dtype or stored_dtype(src)
  model, tokenizer = load_pretrained(src, dtype=dtype, mesh=mesh, rules=rules,
                                     scan_layers=scan_layers, progress=progress,
                                     allow_unused=allow_unused)
  log.info("loaded %s in %.1fs", src, time.perf_counter() - start)
  if target == "orbax":
    save_orbax_model(model, dst, tokenizer, overwrite=overwrite)
  else:
    save_pretrained(model, dst, tokenizer, max_shard_size=max_shard_size, progress=progress,
                    overwrite=overwrite)
  log.info("wrote %s checkpoint to %s (%.1fs in all)", target, dst, time.perf_counter() - start)
  return target


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
  parser = argparse.ArgumentParser(prog="python -m mind_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", help="HF model directory or mind_jax Orbax checkpoint")
  parser.add_argument("dst", help="output directory")
  parser.add_argument("--to", choices=["orbax", "hf"],
                      help="output format (default: the other one than src's)")
  parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                      help="cast parameters to this dtype (default: keep the source's)")
  parser.add_argument("--max-shard-size", default="5GB",
                      help="largest safetensors shard when writing HF (default: 5GB)")
  parser.add_argument("--scan-layers", action="store_true", default=None,
                      help="store layers stacked for scan (Orbax output)")
  parser.add_argument("--mesh", help="device mesh, e.g. data=1,fsdp=-1,tensor=4 "
                      "(default: one device)")
  parser.add_argument("--rules", default="train", choices=["train", "generate"],
                      help="sharding rules used with --mesh (default: train)")
  parser.add_argument("--overwrite", action="store_true",
                      help="write into a non-empty dst, replacing a checkpoint written there "
                      "before (other files there are left alone)")
  parser.add_argument("--allow-unused-tensors", action="store_true",
                      help="load an HF checkpoint even if the model its config.json describes "
                      "leaves some tensors unused (default: refuse, as config.json may not "
                      "match the weights)")
  parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
  parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
  args = parser.parse_args(argv)
  setup_logging(args.verbose)
  return run_cli(lambda: convert(
      args.src, args.dst, to=args.to, dtype=args.dtype, max_shard_size=args.max_shard_size,
      scan_layers=args.scan_layers, mesh_axes=sharding.parse_axes(args.mesh), rules=args.rules,
      progress=not args.quiet, overwrite=args.overwrite,
      allow_unused=args.allow_unused_tensors))


if __name__ == "__main__":
  sys.exit(main())
