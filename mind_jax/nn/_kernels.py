"""Attention kernels behind the `attend` seam: Pallas on TPU ("tpu"), cuDNN flash attention on
GPU ("cudnn"). Each computes what the XLA `attend` computes, or hands the call to it.

"tpu" (jax.experimental.pallas.ops.tpu):
- no cache (training, full forward): splash attention, causal, GQA, with the segment ids of
  packed sequences. Splash masks by token index, which is the position rule of `attend` when
  positions count up by one along each segment (whole sequences and packed ones, as the data
  pipeline and the engine make them).
- a prefill from position 0 (the keys are the queries' own): splash, as without a cache.
- decode through a page table (`mind_jax.nn._paged`): the paged attention kernel reads each
  row's pages in place, with per-row lengths position + 1 (`paged_decode`). The shipped
  kernel reads pages as bfloat16, so only a bfloat16 cache uses it (nothing is lost); a
  float32 cache goes to XLA rather than silently dropping precision. Its blocks span the head
  dim, which the TPU lowering needs to be a multiple of 128: a model with 64-dim heads
  (Llama-3.2-1B) decodes through XLA.
- sequence lengths the TPU tiles do not divide (T not a multiple of 128 for splash, pages not
  a multiple of 8 tokens) go to XLA.
Pallas calls are not partitioned by XLA, so under a mesh they run in `shard_map`: batch over
the mesh's batch axes (data, fsdp: those that divide it), heads over `tensor` (splash here;
the paged read by `_paged`, which splits pages as the rows that own them). The mesh is the
one being traced under (`jax.sharding.get_abstract_mesh()`; `mind_jax.sharding.activation_layout` sets it inside a jitted
function); with none, or one device, the kernel is called directly.

"cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` without a cache (causal; packed
sequences as a boolean mask built from positions and segment ids); fp32 inputs, head dims
cuDNN does not take, and every call with a cache go to `attend`.

"tpu_interpret" is "tpu" run by the Pallas TPU interpreter: for tests on CPU only.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mind_jax._errors import MindJaxError
from mind_jax.nn._attention import attend, register_attention
from mind_jax.nn._paged import attend_pages, register_paged_attention

CHOICES = ("auto", "xla", "tpu", "cudnn")
_PLATFORM_DEFAULT = {"tpu": "tpu", "gpu": "cudnn", "cuda": "cudnn", "rocm": "xla", "cpu": "xla"}
_NEEDS = {"tpu": "tpu", "cudnn": "gpu"}
BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"


def resolve_attention(name: str, devices) -> str:
  """The attention implementation `model.attention=name` means on `devices` (a mesh's, or an
  AOT topology's): "auto" picks by platform; a kernel the platform cannot run is refused."""
  devices = list(devices)
  platform = devices[0].platform if devices else jax.default_backend()
  platform = "gpu" if platform in ("cuda", "gpu") else platform
  if name == "auto":
    return _PLATFORM_DEFAULT.get(platform, "xla")
  if name not in CHOICES:
    raise MindJaxError(f"model.attention={name}: unknown; choose one of {', '.join(CHOICES)}")
  need = _NEEDS.get(name)
  if need is not None and platform != need:
    raise MindJaxError(f"model.attention={name}: needs {need.upper()} devices but the mesh has "
                       f"{platform} devices; use auto or xla")
  return name


# --- running a kernel on the mesh ------------------------------------------------------------


def _context_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or math.prod(mesh.shape.values()) == 1:
    return None
  return mesh


def _batch_axes(mesh, batch: int) -> tuple[str, ...]:
  """The batch axes of `mesh` that together divide `batch` (a prefill's one row uses none)."""
  axes, ways = [], 1
  for axis in BATCH_AXES:
    size = mesh.shape.get(axis, 1)
    if size > 1 and batch % (ways * size) == 0:
      axes.append(axis)
      ways *= size
  return tuple(axes)


def _head_axis(mesh, kv_heads: int) -> str | None:
  size = mesh.shape.get(HEAD_AXIS, 1)
  return HEAD_AXIS if size > 1 and kv_heads % size == 0 else None


def _sharded(fn, args, specs, out_spec):
  """`fn(*args)`, under `shard_map` when a multi-device mesh is being traced under."""
  mesh = _context_mesh()
  if mesh is None:
    return fn(*args)
  in_specs = tuple(spec(mesh) for spec in specs)
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_spec(mesh),
                       check_vma=False)(*args)


def _interpret(interpret: bool):
  """The TPU interpreter, for kernels without an `interpret` argument (splash has one: the
  TPU interpreter cannot run its vmapped grid)."""
  if not interpret:
    return contextlib.nullcontext()
  from jax.experimental.pallas import tpu as pltpu
  return pltpu.force_tpu_interpret_mode()


# --- TPU: splash attention (no cache, prefill) ----------------------------------------------


def _splash_block(length: int) -> int | None:
  for block in (512, 256, 128):
    if length % block == 0:
      return block
  return None


@functools.lru_cache(maxsize=32)
def _splash_kernel(heads: int, length: int, interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  block = _splash_block(length)
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                        block_kv_dq=block)
  mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
  # Concrete mask tables, even when first built inside a trace: the kernel is cached.
  with jax.ensure_compile_time_eval():
    return sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def _splash(q, k, v, segments, interpret: bool):
  """q `[B, T, H, D]`, k/v `[B, K, T, D]`, segments `[B, T]` or None -> `[B, T, H, D]`."""
  from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds
  b, t, h, d = q.shape
  kv_heads = k.shape[1]

  def local(q, k, v, segments):
    # Built per shard: the mask covers this shard's heads.
    kernel = _splash_kernel(q.shape[2], t, interpret)
    qh = (q.astype(jnp.float32) * d ** -0.5).astype(q.dtype).transpose(0, 2, 1, 3)
    if segments is None:
      out = jax.vmap(kernel)(qh, k, v)
    else:
      ids = segments.astype(jnp.int32)
      out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=SegmentIds(s, s)))(
          qh, k, v, ids)
    return out.transpose(0, 2, 1, 3)

  def spec(layout):
    def make(mesh):
      batch, heads = _batch_axes(mesh, b) or None, _head_axis(mesh, kv_heads)
      return {"bthd": P(batch, None, heads, None), "bkts": P(batch, heads, None, None),
              "bt": P(batch, None)}[layout]
    return make

  if segments is None:
    return _sharded(lambda q, k, v: local(q, k, v, None), (q, k, v),
                    (spec("bthd"), spec("bkts"), spec("bkts")), spec("bthd"))
  return _sharded(local, (q, k, v, segments),
                  (spec("bthd"), spec("bkts"), spec("bkts"), spec("bt")), spec("bthd"))


# --- TPU: paged attention (decode) ----------------------------------------------------------


PAGED_HEAD_DIM = 128  # the paged kernel's head dim must be a multiple of this (its TPU lowering)


def _page_size(length: int) -> int | None:
  for size in (128, 64, 32, 16, 8):
    if length % size == 0:
      return size
  return None


def paged_kernel_reads(pool_dtype, head_dim: int, page: int) -> bool:
  """Whether a decode over pages of `pool_dtype` goes to the Pallas kernel (`paged_decode`)
  rather than XLA: what the compiler's byte count leaves out (it does not see a kernel's)."""
  return (_page_size(page) is not None and jnp.dtype(pool_dtype) == jnp.bfloat16
          and head_dim % PAGED_HEAD_DIM == 0)


def paged_decode(q, pool_k, pool_v, table, positions, interpret: bool = False):
  """`attend_pages` by the Pallas paged attention kernel where it can: one query per row
  (decode), a bfloat16 pool (the kernel reads pages as bfloat16; a float32 pool goes to XLA
  rather than silently dropping precision; so does an int8 one: the kernel takes int8 pages
  only with scales as large as the pages, one per value, where ours keep one per vector),
  head dims of multiples of 128 (its TPU lowering:
  Llama-3.2-1B's 64-dim heads decode through XLA). Runs on the pages it is given (per shard).

  The pool `[P, K, page, D]` is viewed, by a reshape that copies nothing, as one-head pages
  of `sub` tokens, (page, kv head, sub-page) in order; each (row, kv head) is one kernel
  sequence over those pages with the row's G = H / K query heads.
  """
  b, t, h, d = q.shape
  pages, kv, page, _ = pool_k.shape
  if t != 1 or not paged_kernel_reads(pool_k.dtype, d, page):
    return attend_pages(q, pool_k, pool_v, table, positions)
  sub = _page_size(page)
  from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention
  per_page = page // sub
  columns = table.shape[1] * per_page
  # Sub-pages per compute block: as many as fit 512 tokens, dividing the row's sub-pages.
  block = max(n for n in range(1, columns + 1) if columns % n == 0 and n * sub <= max(512, sub))
  groups = h // kv
  qs = (q.astype(jnp.float32) * d ** -0.5).astype(q.dtype).reshape(b * kv, groups, d)
  kp = pool_k.reshape(1, pages * kv * per_page, sub, d)
  vp = pool_v.reshape(1, pages * kv * per_page, sub, d)
  first = jnp.clip(table, 0, pages - 1)[:, None, :, None] * kv + jnp.arange(kv)[None, :, None, None]
  ids = (first * per_page + jnp.arange(per_page)).reshape(b * kv, columns).astype(jnp.int32)
  lengths = jnp.repeat(jnp.clip(positions[:, 0].astype(jnp.int32) + 1, 1, columns * sub), kv)
  with _interpret(interpret):
    out = paged_attention(qs, kp, vp, lengths, ids, pages_per_compute_block=block)
  return out.astype(q.dtype).reshape(b, 1, h, d)


def tpu_attend(q, k, v, *, q_positions, k_positions, q_segments=None, k_segments=None,
               interpret: bool = False):
  """`attend` by the splash kernel where its mask equals the rule (module docstring): keys
  that are the queries' own tokens (`_llama` passes the same positions array as `q_positions`
  and `k_positions`: training, a full forward, a prefill from position 0)."""
  del k_segments  # equal to q_segments: packed sequences never come with a cache
  if k_positions is not q_positions or _splash_block(q.shape[1]) is None:
    return attend(q, k, v, q_positions=q_positions, k_positions=k_positions,
                  q_segments=q_segments, k_segments=q_segments)
  return _splash(q, k, v, q_segments, interpret)


register_attention("tpu", tpu_attend)
register_attention("tpu_interpret", functools.partial(tpu_attend, interpret=True))
register_paged_attention("tpu", paged_decode)
register_paged_attention("tpu_interpret", functools.partial(paged_decode, interpret=True))


# --- GPU: cuDNN flash attention --------------------------------------------------------------

CUDNN_IMPLEMENTATION = "cudnn"  # tests swap in None (XLA) to check the call on CPU
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def cudnn_attend(q, k, v, *, q_positions, k_positions, q_segments=None, k_segments=None):
  """`attend` by cuDNN's fused attention where it can: no cache, float16/bfloat16, head dim a
  multiple of 8 up to 256. Causal by index without segments (the no-cache rule, as splash);
  packed sequences pass the position-and-segment rule of `attend` as the mask."""
  d = q.shape[-1]
  if (k_positions is not q_positions or q.dtype not in CUDNN_DTYPES
      or d % 8 or d > 256):
    return attend(q, k, v, q_positions=q_positions, k_positions=k_positions,
                  q_segments=q_segments, k_segments=k_segments)
  kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, T, K, D], as cuDNN takes
  if q_segments is None:
    return jax.nn.dot_product_attention(q, kt, vt, is_causal=True,
                                        implementation=CUDNN_IMPLEMENTATION)
  visible = (k_positions[:, None, :] <= q_positions[:, :, None]) & (
      q_segments[:, :, None] == k_segments[:, None, :])
  return jax.nn.dot_product_attention(q, kt, vt, mask=visible[:, None],
                                      implementation=CUDNN_IMPLEMENTATION)


register_attention("cudnn", cudnn_attend)
