"""Weight-only int8 for generation: each projection's `[out, in]` weight held as int8 values
and one float32 scale per output channel.

Symmetric, per output channel: `scale = max |w[o, :]| / 127`, `q = round(w / scale)` in
[-127, 127]. A matmul reads the int8 weight (half the bytes of bf16, a quarter of fp32), runs
in the model's compute dtype, and scales its output columns: `x @ (q * s).T == (x @ q.T) * s`,
since the scale is constant along the contraction.

Hand-written rather than through Qwix: Qwix's NNX path quantizes a weight when it meets it
inside a traced call and stores it on that call's module, and our decoder runs each layer as a
freshly merged copy (`nnx.split`/`nnx.merge`, for scan and remat), so the int8 weights would
land on temporary copies and the model would keep (and requantize) its float weights. Here
the int8 weight is an ordinary parameter: it shards, scans, saves and loads as any other.
"""

from __future__ import annotations

import numpy as np

QUANTIZE_MODES = ("int8",)
INT8_MAX = 127


def int8_scales(w, xp=np):
  """Per-output-channel scales (float32 `[..., out]`) of weights `[..., out, in]`; a row of
  zeros gets scale 1 (its values quantize to 0 whatever the scale)."""
  absmax = xp.max(xp.abs(w.astype(xp.float32)), axis=-1)
  return xp.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(xp.float32)


def quantize_int8(w, xp=np):
  """(int8 values `[..., out, in]`, float32 scales `[..., out]`) of weights `w`; `xp` is numpy
  (loading on the host) or jax.numpy (a random model's initial weights)."""
  scale = int8_scales(w, xp)
  q = xp.clip(xp.round(w.astype(xp.float32) / scale[..., None]), -INT8_MAX, INT8_MAX)
  return q.astype(xp.int8), scale
