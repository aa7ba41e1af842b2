"""Attention kernels against the XLA `attend`: Pallas TPU kernels in interpret mode on CPU,
the cuDNN call built exactly as on GPU (run by XLA here), and the TPU kernels compiled for a
v5e:2x2 topology inside a sharded model."""

import dataclasses
import math
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from mind_jax import MindJaxError, sharding
from mind_jax.nn import NO_PAGE, Llama, LlamaConfig, attend, resolve_attention
from mind_jax.nn import _kernels
from mind_jax.nn._paged import attend_pages

TOL = 1e-5


def _qkv(b, t, h, kv, d, s=None, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  s = s or t
  q = jnp.asarray(rng.normal(size=(b, t, h, d)), dtype)
  k = jnp.asarray(rng.normal(size=(b, kv, s, d)), dtype)
  v = jnp.asarray(rng.normal(size=(b, kv, s, d)), dtype)
  return q, k, v


def _packed(b, t):
  """Segments of uneven lengths, positions restarting in each; row 0 ends in padding
  (segment 0, position 0, as the packers write it)."""
  segments = np.zeros((b, t), np.int32)
  positions = np.zeros((b, t), np.int32)
  cut = lambda n: n * t // 256  # noqa: E731
  for row, cuts in enumerate([(0, cut(37), cut(150), cut(230)), (0, cut(129), cut(200), t)][:b]):
    for seg, (start, end) in enumerate(zip(cuts, cuts[1:]), 1):
      segments[row, start:end] = seg
      positions[row, start:end] = np.arange(end - start)
  return jnp.asarray(positions), jnp.asarray(segments)


def _real(out, segments):
  """Outputs at real tokens: a padding token's output is unused (zero loss weight, and no real
  token sees it), and the kernels mask it by index rather than by its constant position."""
  return jnp.where((segments > 0)[:, :, None, None], out, 0)


def _max_diff(a, b):
  return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


# --- TPU kernels, interpret mode --------------------------------------------------------------


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_splash_causal_gqa_matches_xla(heads, kv_heads):
  q, k, v = _qkv(2, 256, heads, kv_heads, 16)
  pos = jnp.broadcast_to(jnp.arange(256), (2, 256))
  out = _kernels.tpu_attend(q, k, v, q_positions=pos, k_positions=pos, interpret=True)
  assert _max_diff(out, attend(q, k, v, q_positions=pos, k_positions=pos)) <= TOL


def test_splash_packed_segments_match_xla():
  q, k, v = _qkv(2, 256, 4, 2, 16, seed=1)
  pos, seg = _packed(2, 256)
  kw = dict(q_positions=pos, k_positions=pos, q_segments=seg, k_segments=seg)
  out = _kernels.tpu_attend(q, k, v, interpret=True, **kw)
  assert _max_diff(_real(out, seg), _real(attend(q, k, v, **kw), seg)) <= TOL


# Every mesh shape the shipped configs run attention under (train: fsdp or data over 8 chips;
# generate: tensor over 8 or 4, data over 8), and data x tensor ones that split both at once.
KERNEL_MESHES = [{"data": 2, "tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2}, {"data": 8},
                 {"fsdp": 8}, {"tensor": 8}, {"tensor": 4}, {"data": 2, "tensor": 4}]


def _under_mesh(fn, axes):
  """`fn` jitted and traced under `axes` (devices in order), as the model calls its kernels,
  on arguments placed on the mesh (as the model's are; XLA on CPU cannot run a `shard_map` of
  arrays that live on one device)."""
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1, **axes},
                            jax.devices()[:math.prod(axes.values())])

  def run(*args):
    with sharding.activation_layout(mesh, "train"):
      return fn(*args)
  on_mesh = NamedSharding(mesh, P())
  return lambda *args: jax.jit(run)(*(jax.device_put(a, on_mesh) for a in args))


@pytest.mark.parametrize("axes", KERNEL_MESHES, ids=lambda a: "x".join(f"{k}{v}" for k, v in a.items()))
@pytest.mark.parametrize("kv_heads", [8, 2])
def test_splash_per_shard_under_a_mesh_equals_xla_attention(axes, kv_heads):
  """Splash runs per shard (rows over data/fsdp, heads over tensor where they divide): its
  packed causal attention by value equals XLA's on one device, whichever axes split it."""
  q, k, v = _qkv(8, 128, 8, kv_heads, 16, seed=3)
  pos, seg = (jnp.tile(a, (4, 1)) for a in _packed(2, 128))
  kw = dict(q_positions=pos, k_positions=pos, q_segments=seg, k_segments=seg)
  ref = attend(q, k, v, **kw)
  kernel = _under_mesh(
      lambda q, k, v, pos, seg: _kernels.tpu_attend(q, k, v, q_positions=pos, k_positions=pos,
                                                   q_segments=seg, k_segments=seg,
                                                   interpret=True), axes)
  assert _max_diff(_real(kernel(q, k, v, pos, seg), seg), _real(ref, seg)) <= TOL


def test_keys_other_than_the_queries_own_go_to_xla():
  q, k, v = _qkv(1, 128, 4, 2, 16, seed=2)
  entries = jnp.arange(128)[None]
  kw = dict(q_positions=entries + 3, k_positions=jnp.broadcast_to(jnp.arange(128), (1, 128)))
  assert _max_diff(_kernels.tpu_attend(q, k, v, interpret=True, **kw), attend(q, k, v, **kw)) == 0


def _pool(pages, kv, page, d, seed, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(pages, kv, page, d)), dtype) for _ in range(2)]


def _scrambled_table(rows, columns, pages, seed):
  """Each row's pages, out of order and disjoint; row 3 is an idle slot (no pages)."""
  order = np.random.default_rng(seed).permutation(pages)[:rows * columns].reshape(rows, columns)
  order[3] = NO_PAGE
  return jnp.asarray(order, jnp.int32)


@pytest.mark.parametrize("page", [16, 64])
def test_paged_decode_reads_scrambled_pages_like_xla(page):
  """The kernel reads pages as bfloat16: exact against XLA over bf16-rounded pools."""
  q = _qkv(4, 1, 4, 2, 128, seed=3)[0]
  pool_k, pool_v = _pool(4 * 256 // page, 2, page, 128, seed=3)
  table = _scrambled_table(4, 256 // page, 4 * 256 // page, seed=3)
  positions = jnp.array([[0], [77], [255], [0]])
  out = _kernels.paged_decode(q, pool_k.astype(jnp.bfloat16), pool_v.astype(jnp.bfloat16),
                              table, positions, interpret=True)
  rounded = [a.astype(jnp.bfloat16).astype(jnp.float32) for a in (pool_k, pool_v)]
  ref = attend_pages(q, *rounded, table, positions)
  assert _max_diff(out[:3], ref[:3]) <= TOL


def test_paged_decode_dispatch_bf16_kernel_fp32_and_64_dim_xla():
  q = _qkv(2, 1, 4, 2, 128, seed=4)[0]
  pool_k, pool_v = _pool(8, 2, 32, 128, seed=4)
  table = jnp.asarray([[5, 2, 7, 0], [1, 3, 4, 6]], jnp.int32)
  positions = jnp.array([[5], [127]])
  exact = _kernels.paged_decode(q, pool_k, pool_v, table, positions, interpret=True)  # fp32
  assert _max_diff(exact, attend_pages(q, pool_k, pool_v, table, positions)) == 0
  bf = [a.astype(jnp.bfloat16) for a in (q, pool_k, pool_v)]
  out = _kernels.paged_decode(*bf, table, positions, interpret=True)
  ref = attend_pages(*bf, table, positions)
  assert 0 < _max_diff(out, ref) <= 2e-2  # the kernel: bf16 rounding of the output
  # 64-dim heads (Llama-3.2-1B): the kernel's TPU lowering refuses them, so the XLA path.
  bf64 = [a[..., :64] for a in bf]
  assert _max_diff(_kernels.paged_decode(*bf64, table, positions, interpret=True),
                   attend_pages(*bf64, table, positions)) == 0


@pytest.mark.parametrize("axes,rules", [({"data": 2, "fsdp": 1, "tensor": 2}, "generate"),
                                        ({"data": 2, "fsdp": 2, "tensor": 2}, "train")])
def test_paged_attention_per_shard_under_a_mesh_equals_one_device(axes, rules):
  """Pages split over the batch axes as the rows that own them (rows 0-1 own pages 0-7 and
  rows 2-3 pages 8-15 on two shards): writes and reads per shard, by XLA and by the kernel
  in interpret mode, equal the unsharded XLA result; so do a one-row prefill from a prefix
  (left to XLA's partitioner) and one from position 0."""
  from mind_jax.nn._paged import cached_attention
  mesh = sharding.make_mesh(axes, jax.devices()[:math.prod(axes.values())])
  ways = 4 if rules == "train" else 2
  per_shard = 16 // ways
  rows = 4
  q = _qkv(rows, 1, 4, 2, 128, seed=5)[0].astype(jnp.bfloat16)
  new_k, new_v = [a.transpose(0, 2, 1, 3).astype(jnp.bfloat16)
                  for a in _qkv(rows, 1, 4, 2, 128, seed=6)[1:]]
  pool_k, pool_v = [a.astype(jnp.bfloat16) for a in _pool(16, 2, 16, 128, seed=5)]
  rs = np.random.default_rng(5)
  table = np.stack([rs.permutation(per_shard)[:2] + (row * ways // rows) * per_shard
                    for row in range(rows)]).astype(np.int32)
  positions = jnp.asarray([[3], [17], [30], [9]])

  def step(impl, sharded, q, k, v, pk, pv, table, positions, fresh=False):
    def run(q, k, v, pk, pv, table, positions):
      return cached_attention(q, k, v, pk, pv, table, positions, fresh=fresh,
                              implementation=impl)
    if not sharded:
      return jax.jit(run)(q, k, v, pk, pv, table, positions)
    def under_mesh(*args):
      with sharding.activation_layout(mesh, rules):
        return run(*args)
    pool = sharding.data_sharding(mesh, rules, ("cache_batch", "cache_heads", None, None))
    put = lambda x: jax.device_put(x, pool)  # noqa: E731
    return jax.jit(under_mesh)(q, k, v, put(pk), put(pv), table, positions)

  ref, (ref_k, _) = step("xla", False, q, new_k, new_v, pool_k, pool_v, table, positions)
  for impl in ("xla", "tpu_interpret"):
    out, (got_k, _) = step(impl, True, q, new_k, new_v, pool_k, pool_v, table, positions)
    assert jnp.array_equal(got_k, ref_k), impl
    assert _max_diff(out, ref) <= (0 if impl == "xla" else 2e-2), impl
  # One-row prefills: 8 tokens after a 16-token prefix (pages 1, 4 of shard 0), and from 0.
  q8 = _qkv(1, 8, 4, 2, 128, seed=7)[0].astype(jnp.bfloat16)
  k8, v8 = [a.transpose(0, 2, 1, 3).astype(jnp.bfloat16) for a in _qkv(1, 8, 4, 2, 128, seed=8)[1:]]
  for start, row in ((16, [[1, 4]]), (0, [[2, 5]])):
    args = (q8, k8, v8, pool_k, pool_v, jnp.asarray(row, jnp.int32),
            start + jnp.arange(8)[None])
    ref, (ref_k, _) = step("xla", False, *args, fresh=start == 0)
    out, (got_k, _) = step("xla", True, *args, fresh=start == 0)
    assert jnp.array_equal(got_k, ref_k) and _max_diff(out, ref) <= 1e-2, start


def _numpy_prefill(q, new_k, new_v, pool_k, pool_v, table, starts):
  """Attention of rows whose tokens start at `starts`, written in numpy from the definition:
  row r's keys are its pages' entries before its start (the prefix already in the cache) and
  the call's own keys after, each query seeing positions up to its own, query head h reading
  kv head h // (H / K)."""
  q, new_k, new_v, pool_k, pool_v = (np.asarray(a, np.float64)
                                     for a in (q, new_k, new_v, pool_k, pool_v))
  b, t, h, d = q.shape
  kv_heads, page = pool_k.shape[1], pool_k.shape[2]
  out = np.zeros_like(q)
  for r, start in enumerate(starts):
    length = start + t
    at = lambda pool, p: pool[table[r][p // page], :, p % page]  # noqa: E731
    keys = np.stack([at(pool_k, p) if p < start else new_k[r, p - start] for p in range(length)])
    vals = np.stack([at(pool_v, p) if p < start else new_v[r, p - start] for p in range(length)])
    for i in range(t):
      for head in range(h):
        kvh = head // (h // kv_heads)
        scores = keys[:start + i + 1, kvh] @ q[r, i, head] / np.sqrt(d)
        weights = np.exp(scores - scores.max())
        out[r, i, head] = weights @ vals[:start + i + 1, kvh] / weights.sum()
  return out


@pytest.mark.parametrize("axes", [None, *KERNEL_MESHES],
                         ids=lambda a: "one-device" if a is None else
                         "x".join(f"{k}{v}" for k, v in a.items()))
def test_a_prefill_of_rows_at_mixed_offsets_equals_numpy(axes):
  """Eight rows prefilled in one call, some from their first token and some after a prefix
  already in their pages (at and inside page boundaries): each row attends over its own
  prefix and its own new tokens, by XLA and by the TPU dispatch (interpret mode), on one
  device and per shard under each mesh."""
  from mind_jax.nn._paged import cached_attention
  rows, t, page, pages = 8, 8, 16, 32
  starts = [0, 16, 5, 24, 0, 9, 16, 3]
  # 8 kv heads (the 70B's): `tensor` splits kv heads, up to 8 ways.
  q = _qkv(rows, t, 16, 8, 16, seed=9)[0]
  new_k, new_v = [a.transpose(0, 2, 1, 3) for a in _qkv(rows, t, 16, 8, 16, seed=10)[1:]]
  pool_k, pool_v = _pool(pages, 8, page, 16, seed=11)
  # Row r owns two pages of the pool's r-th eighth: its shard's, under any batch split.
  table = np.stack([np.random.default_rng(r).permutation(4)[:2] + 4 * r for r in range(rows)])
  positions = jnp.asarray(starts)[:, None] + jnp.arange(t)
  expected = _numpy_prefill(q, new_k, new_v, pool_k, pool_v, table, starts)
  for impl in ("xla", "tpu_interpret"):
    def prefill(q, k, v, pk, pv, table, positions):
      return cached_attention(q, k, v, pk, pv, table, positions, fresh=False,
                              implementation=impl)[0]
    run = jax.jit(prefill) if axes is None else _under_mesh(prefill, axes)
    out = run(q, new_k, new_v, pool_k, pool_v, jnp.asarray(table, jnp.int32), positions)
    assert np.max(np.abs(np.asarray(out, np.float64) - expected)) <= TOL, impl


def test_tiny_llama_packed_forward_with_interpreted_kernels():
  base = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2)
  ref = Llama(base, rngs=nnx.Rngs(0))
  kern = Llama(base.replace(attention="tpu_interpret"), rngs=nnx.Rngs(0))
  tokens = jnp.asarray(np.random.default_rng(5).integers(0, 128, (2, 128)))
  pos, seg = _packed(2, 128)
  real = (seg > 0)[:, :, None]
  assert _max_diff(kern(tokens, pos, seg) * real, ref(tokens, pos, seg) * real) <= 1e-4


# --- cuDNN: the call as made on GPU, run by XLA on CPU ------------------------------------------


def test_cudnn_call_matches_xla(monkeypatch):
  monkeypatch.setattr(_kernels, "CUDNN_IMPLEMENTATION", None)  # XLA runs the same call
  q, k, v = _qkv(2, 256, 4, 2, 16, seed=6, dtype=jnp.bfloat16)
  pos, seg = _packed(2, 256)
  for kw in (dict(q_positions=pos, k_positions=pos, q_segments=seg, k_segments=seg),
             dict(q_positions=jnp.broadcast_to(jnp.arange(256), (2, 256)))):
    kw.setdefault("k_positions", kw["q_positions"])
    # fp32 inputs in the bf16 call: the masking and layout are checked exactly.
    q32, k32, v32 = (a.astype(jnp.float32) for a in (q, k, v))
    monkeypatch.setattr(_kernels, "CUDNN_DTYPES", (jnp.float32,))
    real = kw.get("q_segments", jnp.ones((2, 256)))
    assert _max_diff(_real(_kernels.cudnn_attend(q32, k32, v32, **kw), real),
                     _real(attend(q32, k32, v32, **kw), real)) <= TOL
    monkeypatch.setattr(_kernels, "CUDNN_DTYPES", (jnp.bfloat16, jnp.float16))
    assert _max_diff(_kernels.cudnn_attend(q32, k32, v32, **kw), attend(q32, k32, v32, **kw)) == 0


# --- resolution and refusal ----------------------------------------------------------------------


def test_resolve_attention_by_platform():
  cpu = jax.devices()
  assert resolve_attention("auto", cpu) == "xla"
  assert resolve_attention("xla", cpu) == "xla"
  for name in ("tpu", "cudnn"):
    with pytest.raises(MindJaxError, match=f"model.attention={name}"):
      resolve_attention(name, cpu)
  topology = _topology()
  assert resolve_attention("auto", topology) == "tpu"
  assert resolve_attention("tpu", topology) == "tpu"


def test_model_section_attention_takes_effect():
  from mind_jax.ckpts import load_model
  from mind_jax.config import ModelSection
  assert ModelSection().attention == "auto"
  model, _, _ = load_model(ModelSection(preset="tiny", attention="xla"))
  assert model.config.attention == "xla"
  with pytest.raises(MindJaxError, match="model.attention=tpu"):
    load_model(ModelSection(preset="tiny", attention="tpu"))


# --- TPU compile (AOT, v5e:2x2) ------------------------------------------------------------------


def _topology(name: str = "v5e:2x2"):
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed: no TPU compiler to AOT-compile for")
  from jax.experimental import topologies
  return topologies.get_topology_desc(platform="tpu", topology_name=name).devices


TPU_TINY = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                       dtype="bfloat16", param_dtype="bfloat16", attention="tpu")


def _abstract_params(config, mesh, rules):
  graphdef, flat, shardings = sharding.abstract_state(
      lambda: Llama(config, rngs=nnx.Rngs(0)), mesh, rules)
  state = nnx.State.from_flat_path({
      path: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[path]) for path, v in flat})
  return graphdef, state


def _kernel_calls(compiled) -> int:
  return compiled.as_text().count("tpu_custom_call")


def test_tpu_kernels_compile_in_sharded_forward():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, _topology())
  graphdef, params = _abstract_params(TPU_TINY, mesh, "train")
  batch = NamedSharding(mesh, P("data", None))
  ids = jax.ShapeDtypeStruct((4, 256), jnp.int32, sharding=batch)

  def loss(params, tokens, positions, segments):
    with sharding.activation_layout(mesh, "train"):
      logits = nnx.merge(graphdef, params)(tokens, positions, segments)
    return jnp.mean(logits.astype(jnp.float32))

  compiled = jax.jit(jax.value_and_grad(loss)).lower(params, ids, ids, ids).compile()
  assert _kernel_calls(compiled) >= 2 * TPU_TINY.num_hidden_layers  # splash forward + backward


def _tpu_engine(config, axes, topology="v5e:2x2", **engine_keys):
  """An engine over abstract weights on a TPU topology, and those weights (to lower)."""
  from mind_jax.engine import Engine, EngineConfig
  mesh = sharding.make_mesh(axes, _topology(topology))
  graphdef, params = _abstract_params(config, mesh, "generate")
  model = nnx.merge(graphdef, jax.tree.map(lambda s: jnp.zeros((), s.dtype), params))
  keys = {"slots": 4, "max_len": 256, "prefill_buckets": (128,), **engine_keys}
  return Engine(model, None, EngineConfig(**keys), mesh, allocate=False), params


def test_tpu_kernels_compile_in_engine_prefill_and_decode():
  engine, params = _tpu_engine(TPU_TINY, {"data": 2, "fsdp": 1, "tensor": 2})
  lowered = engine.lower(params, bucket=128, window=256)
  for name in ("prefill", "decode"):
    assert _kernel_calls(lowered[name].compile()) >= TPU_TINY.num_hidden_layers, name


def test_64_dim_heads_decode_through_xla_on_tpu():
  """The paged kernel's TPU lowering takes head dims of multiples of 128 only: with 64
  (Llama-3.2-1B) the engine's decode compiled for a TPU, and failed, until it took the XLA
  path; prefill keeps splash."""
  config = dataclasses.replace(TPU_TINY, hidden_size=256, num_attention_heads=8,
                               num_key_value_heads=4, head_dim=64)
  engine, params = _tpu_engine(config, {"data": 2, "fsdp": 1, "tensor": 2})
  lowered = engine.lower(params, bucket=128, window=256)
  assert _kernel_calls(lowered["prefill"].compile()) >= config.num_hidden_layers
  assert _kernel_calls(lowered["decode"].compile()) == 0


def test_a_multi_step_decode_keeps_one_kv_cache_on_tpu():
  """Two kv heads per chip: the decode loop's cache writes, each (row, head) a vector, keep the
  cache in the kernel's layout; as [K, D] windows the TPU compiler kept a K-minor copy of the
  whole cache and converted it every step (the 70B v5p-32 plan: 40 GiB of temporaries)."""
  config = dataclasses.replace(TPU_TINY, num_attention_heads=32, num_key_value_heads=8,
                               hidden_size=4096)
  engine, params = _tpu_engine(config, {"data": 1, "fsdp": 1, "tensor": 4}, slots=64,
                               max_len=1024, steps_per_call=4)
  memory = engine.lower(params, bucket=128, window=1024)["decode"].compile().memory_analysis()
  cache_per_chip = 2 * config.num_hidden_layers * 64 * (8 // 4) * 1024 * 128 * 2
  assert memory.temp_size_in_bytes < cache_per_chip / 8, memory.temp_size_in_bytes


def test_a_prefill_writes_its_pages_without_copying_the_pool_on_tpu():
  """Two kv heads per chip on a v5p: a prefill's page writes, each (position, head) a vector,
  leave the pool in its layout; as [K, D] windows the v5p compiler copied the whole pool into a
  K-minor layout and back (7x these temporaries; the 70B v5p-32 plan: 551 GB moved per chip
  for one 1,024-token prompt). The v5e compiler kept the layout either way."""
  config = dataclasses.replace(TPU_TINY, num_attention_heads=32, num_key_value_heads=8,
                               hidden_size=4096)
  engine, params = _tpu_engine(config, {"data": 1, "fsdp": 1, "tensor": 4}, "v5p:2x2x1",
                               slots=64, max_len=1024, steps_per_call=4)
  memory = engine.lower(params, bucket=128, window=1024)["prefill"].compile().memory_analysis()
  pool_per_chip = 2 * config.num_hidden_layers * 64 * (8 // 4) * 1024 * 128 * 2
  assert memory.temp_size_in_bytes < pool_per_chip / 8, memory.temp_size_in_bytes
