"""int8 weights (model.quantize=int8) and an int8 KV cache (engine.kv_dtype=int8): what is
stored, what is computed, where it is refused.

The references are independent of the code under test: the checkpoint's tensors quantized here
in numpy (per output channel, absmax / 127), multiplied back out, and run as float weights;
llama2.c's forward in numpy with each cached key and value vector rounded to int8 steps of its
own absmax / 127.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

import mind_jax
from mind_jax import MindJaxError
from mind_jax.ckpts import load_pretrained, save_orbax_model, save_pretrained
from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def numpy_int8(w):
  """(int8 values, scales) of `w` `[out, in]`: symmetric, one scale per output channel."""
  scale = np.abs(w).max(axis=1) / 127
  return np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8), scale


def checkpoint_tensors(path):
  import glob
  out = {}
  for f in glob.glob(f"{path}/*.safetensors"):
    out.update(load_file(f))
  return out


def projections(model):
  """(HF name, Linear) of every projection and the untied head."""
  for i, layer in enumerate(model.model.layers):
    for name in PROJECTIONS:
      block = "self_attn" if name in PROJECTIONS[:4] else "mlp"
      yield f"model.layers.{i}.{block}.{name}.weight", getattr(getattr(layer, block), name)
  if not model.config.tie_word_embeddings:
    yield "lm_head.weight", model.lm_head


@pytest.fixture(scope="module")
def gqa(hf_checkpoints):
  path = hf_checkpoints["llama3.1-gqa"][0]
  quantized, _ = load_pretrained(path, quantize="int8", progress=False)
  float_model, tokenizer = load_pretrained(path, progress=False)
  return path, quantized, float_model, tokenizer


def dequantized_reference(path, float_model):
  """The float model with every projection replaced by numpy's int8 values times scales."""
  tensors = checkpoint_tensors(path)
  reference = nnx.clone(float_model)
  for name, linear in projections(reference):
    values, scale = numpy_int8(tensors[name].astype(np.float32))
    linear.weight[...] = values.astype(np.float32) * scale[:, None]
  return reference


def test_projections_hold_int8_values_and_per_output_channel_scales(gqa):
  path, quantized, _, _ = gqa
  tensors = checkpoint_tensors(path)
  for name, linear in projections(quantized):
    values, scale = numpy_int8(tensors[name].astype(np.float32))
    assert linear.weight[...].dtype == np.int8, name
    np.testing.assert_array_equal(np.asarray(linear.weight[...]), values, err_msg=name)
    np.testing.assert_allclose(np.asarray(linear.scale[...]), scale, rtol=1e-6, err_msg=name)
  # Embeddings and norms keep their float weights.
  assert quantized.model.embed_tokens.weight[...].dtype == np.float32
  assert quantized.model.norm.weight[...].dtype == np.float32


def test_logits_equal_a_numpy_dequantization_of_the_checkpoint(gqa):
  path, quantized, float_model, _ = gqa
  ids = np.random.RandomState(0).randint(0, 300, (2, 24))
  reference = dequantized_reference(path, float_model)
  got, want = np.asarray(quantized(ids)), np.asarray(reference(ids))
  assert np.abs(got - want).max() <= 1e-4
  # int8 is not the float model: the test would notice a quantization that did nothing.
  assert np.abs(np.asarray(float_model(ids)) - want).max() > 1e-3


def test_resident_weights_shrink_to_int8_plus_scales(gqa):
  _, quantized, float_model, _ = gqa
  nbytes = lambda m: sum(x.nbytes for x in jax.tree.leaves(nnx.state(m, nnx.Param)))  # noqa: E731
  projection_elements = sum(linear.weight[...].size for _, linear in projections(float_model))
  scales = sum(linear.scale[...].size for _, linear in projections(quantized))
  # fp32 -> int8 saves 3 bytes per projection weight; each scale costs 4.
  assert nbytes(float_model) - nbytes(quantized) == 3 * projection_elements - 4 * scales


def test_greedy_decoding_of_the_int8_model_equals_its_dequantized_float_twin(gqa):
  path, quantized, float_model, tokenizer = gqa
  reference = dequantized_reference(path, float_model)
  rs = np.random.RandomState(1)
  requests = [Request(i, rs.randint(0, 300, n).tolist(),
                      SamplingParams(max_new_tokens=24, temperature=0.0, ignore_eos=True))
              for i, n in enumerate([5, 17, 9])]
  config = EngineConfig(slots=2, max_len=64, steps_per_call=4)
  runs = [[r.token_ids for r in Engine(m, tokenizer, config).generate_all(requests)]
          for m in (quantized, reference)]
  assert runs[0] == runs[1]


def test_a_sharded_load_quantizes_each_slice_from_whole_rows(gqa):
  path, quantized, _, _ = gqa
  # o_proj and down_proj split their inputs over tensor: a slice's scale needs every input.
  mesh = mind_jax.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  sharded, _ = load_pretrained(path, quantize="int8", mesh=mesh, rules="train", progress=False)
  down = sharded.model.layers[1].mlp.down_proj
  assert down.weight[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  for a, b in zip(jax.tree.leaves(nnx.state(quantized)), jax.tree.leaves(nnx.state(sharded))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_int8_orbax_checkpoint_loads_without_quantizing_again(gqa, tmp_path):
  from mind_jax import convert
  path, quantized, _, _ = gqa
  assert convert.main([path, str(tmp_path / "int8"), "quantize=int8", "-q"]) == 0
  restored, _ = load_pretrained(str(tmp_path / "int8"), progress=False)
  assert restored.config.quantize == "int8"
  for a, b in zip(jax.tree.leaves(nnx.state(quantized)), jax.tree.leaves(nnx.state(restored))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A float Orbax checkpoint asked for int8: refused, with the way to get one.
  float_model, _ = load_pretrained(path, progress=False)
  save_orbax_model(float_model, str(tmp_path / "float"))
  with pytest.raises(MindJaxError, match="Orbax checkpoint of float weights.*quantize=int8"):
    load_pretrained(str(tmp_path / "float"), quantize="int8", progress=False)


def test_int8_is_refused_where_it_cannot_take_effect(gqa, tmp_path):
  from mind_jax import convert
  from mind_jax.training import TrainConfig
  from mind_jax.training._config import model_config
  path, quantized, _, _ = gqa
  with pytest.raises(MindJaxError, match="int8.*export the checkpoint it was loaded from"):
    save_pretrained(quantized, str(tmp_path / "hf"))
  assert not (tmp_path / "hf").exists()
  with pytest.raises(MindJaxError, match="quantize=int8: int8 weights are written as an Orbax"):
    convert.run(convert.ConvertConfig(src=path, dst=str(tmp_path / "x"), to="hf",
                                      quantize="int8"))
  cfg = TrainConfig.model_validate({"model": {"path": path, "quantize": "int8"}})
  with pytest.raises(MindJaxError, match="model.quantize=int8: int8 weights are for generation"):
    model_config(cfg)
  with pytest.raises(MindJaxError, match="quantize='int4'"):
    mind_jax.nn.LlamaConfig(quantize="int4")


STORIES260K = ROOT / "shared" / "reference" / "stories260K.bin"


def numpy_int8_vectors(x, size):
  """`x` with each run of `size` values (one kv head's vector) rounded to int8 steps of its
  absmax / 127, and multiplied back out."""
  heads = x.reshape(-1, size)
  scale = np.abs(heads).max(-1, keepdims=True) / 127
  return (np.round(heads / np.where(scale > 0, scale, 1)) * scale).reshape(x.shape)


def run_c_logits(path, tokens, kv_int8=False):
  """llama2.c's `forward` (run.c) in numpy, straight from the model file: interleaved RoPE
  pairs, one position at a time over its own KV cache (`kv_int8`: each kv head's key and
  value vectors stored in int8 with one scale each)."""
  import struct
  with open(path, "rb") as f:
    dim, hidden, layers, heads, kv_heads, vocab, _ = struct.unpack("<7i", f.read(28))
    w = np.fromfile(f, dtype="<f4").astype(np.float64)
  hs, kv_dim, at = dim // heads, dim // heads * kv_heads, 0

  def take(*shape):
    nonlocal at
    out = w[at:at + int(np.prod(shape))].reshape(shape)
    at += out.size
    return out

  emb, rms_att = take(vocab, dim), take(layers, dim)
  wq, wk, wv = take(layers, dim, dim), take(layers, kv_dim, dim), take(layers, kv_dim, dim)
  wo, rms_ffn = take(layers, dim, dim), take(layers, dim)
  w1, w2, w3 = take(layers, hidden, dim), take(layers, dim, hidden), take(layers, hidden, dim)
  rms_final = take(dim)
  rmsnorm = lambda x, g: g * x / np.sqrt(np.mean(x * x) + 1e-5)  # noqa: E731
  keys, values, out = np.zeros((layers, len(tokens), kv_dim)), np.zeros((layers, len(tokens), kv_dim)), []
  for pos, token in enumerate(tokens):
    x = emb[token].copy()
    for l in range(layers):
      xb = rmsnorm(x, rms_att[l])
      q, k, v = wq[l] @ xb, wk[l] @ xb, wv[l] @ xb
      for vec in (q, k):
        i = np.arange(0, vec.size, 2)
        angle = pos / 10000.0 ** ((i % hs) / hs)
        a, b = vec[i].copy(), vec[i + 1].copy()
        vec[i], vec[i + 1] = a * np.cos(angle) - b * np.sin(angle), a * np.sin(angle) + b * np.cos(angle)
      if kv_int8:
        k, v = numpy_int8_vectors(k, hs), numpy_int8_vectors(v, hs)
      keys[l, pos], values[l, pos] = k, v
      att_out = np.zeros(dim)
      for h in range(heads):
        g = h // (heads // kv_heads)
        kh, vh = keys[l, :pos + 1, g * hs:(g + 1) * hs], values[l, :pos + 1, g * hs:(g + 1) * hs]
        scores = kh @ q[h * hs:(h + 1) * hs] / np.sqrt(hs)
        p = np.exp(scores - scores.max())
        att_out[h * hs:(h + 1) * hs] = (p / p.sum()) @ vh
      x = x + wo[l] @ att_out
      xb = rmsnorm(x, rms_ffn[l])
      gate = w1[l] @ xb
      x = x + w2[l] @ (gate / (1 + np.exp(-gate)) * (w3[l] @ xb))
    out.append(emb @ rmsnorm(x, rms_final))  # stories260K shares its head with the embedding
  return np.stack(out)


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
  if not STORIES260K.exists():
    pytest.skip(f"{STORIES260K}: not beside the repository")
  from mind_jax.testing import llama2c_checkpoint
  return llama2c_checkpoint(str(STORIES260K), str(tmp_path_factory.mktemp("stories260K")))


def test_stories260k_read_from_llama2c_equals_run_c(stories):
  model, _ = load_pretrained(stories, progress=False)
  tokens = [1, 403, 407, 261, 378, 265, 300, 11, 74, 9, 430, 282]
  np.testing.assert_allclose(np.asarray(model(np.asarray([tokens])))[0],
                             run_c_logits(STORIES260K, tokens), atol=1e-4)



# --- int8 KV cache ------------------------------------------------------------------------------

# A story's first 17 tokens: at the 18th, one key value lies within float32 rounding of a half
# int8 step, and float32 (the model) and float64 (numpy) round it to neighbouring steps.
STORY = [1, 403, 407, 261, 378, 265, 300, 11, 74, 9, 430, 282, 395, 271, 260, 314, 286]


def test_an_int8_kv_cache_equals_run_c_with_int8_keys_and_values(stories):
  """Through an int8 cache, whichever way the tokens arrive (one prefill from position 0,
  a prefill into the cache, half a prompt then one token per call), logits equal run.c's with
  each cached vector rounded to int8; and they are not the float cache's."""
  from mind_jax.nn import KVCache
  model, _ = load_pretrained(stories, progress=False)
  tokens = np.asarray([STORY])
  expected = run_c_logits(STORIES260K, STORY, kv_int8=True)
  n, half = len(STORY), len(STORY) // 2

  def cache(fresh=False):
    c = KVCache.create(model.config, 1, 32, dtype="int8")
    return c.with_table(c.table, fresh=True) if fresh else c

  whole, _ = model(tokens, cache=cache(fresh=True))
  into_cache, _ = model(tokens, cache=cache())
  first, c = model(tokens[:, :half], cache=cache())
  steps = [first[0]]
  for pos in range(half, n):
    logits, c = model(tokens[:, pos:pos + 1], jnp.asarray([[pos]]), cache=c)
    steps.append(logits[0])
  for name, got in (("fresh prefill", whole[0]), ("prefill into the cache", into_cache[0]),
                    ("token by token", jnp.concatenate(steps))):
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, err_msg=name)
  float_kv = run_c_logits(STORIES260K, STORY)
  assert np.abs(expected - float_kv).max() > 1e-3  # int8 steps are visible at this tolerance


def _int8_pool(pages, kv, page, d, seed):
  """A pool of random int8 entries and scales, and the same entries in float64 (numpy)."""
  from mind_jax.nn import Int8Pages
  rng = np.random.default_rng(seed)
  values = rng.integers(-127, 128, size=(pages, kv, page, d)).astype(np.int8)
  scales = rng.uniform(0.001, 0.02, size=(pages, kv, page)).astype(np.float32)
  entries = values.astype(np.float64) * scales.astype(np.float64)[..., None]
  return Int8Pages(jnp.asarray(values), jnp.asarray(scales)), entries


@pytest.mark.parametrize("axes", [None, {"data": 2, "tensor": 2}], ids=["one-device", "data2xtensor2"])
def test_int8_pages_read_as_values_times_their_scales(axes):
  """Rows prefilled after prefixes already in int8 pages attend over the prefix entries as
  values x scales and over their own keys rounded to int8 (numpy), on one device and per
  shard (the scales split with their pages)."""
  from mind_jax import sharding
  from mind_jax.nn._paged import cached_attention
  rows, t, page, d, kv, heads = 4, 8, 16, 16, 2, 4
  starts = [0, 16, 5, 24]
  rng = np.random.default_rng(1)
  q = rng.normal(size=(rows, t, heads, d)).astype(np.float32)
  new_k, new_v = (rng.normal(size=(rows, t, kv, d)).astype(np.float32) for _ in range(2))
  (pool_k, ek), (pool_v, ev) = _int8_pool(16, kv, page, d, 2), _int8_pool(16, kv, page, d, 3)
  table = np.asarray([[0, 1], [2, 3], [8, 9], [10, 11]], np.int32)  # rows 0-1 shard 0, 2-3 shard 1
  positions = np.asarray(starts)[:, None] + np.arange(t)
  expected = np.zeros((rows, t, heads, d))
  for r, start in enumerate(starts):
    at = lambda e, p: e[table[r][p // page], :, p % page]  # noqa: E731
    keys = [at(ek, p) if p < start else numpy_int8_vectors(new_k[r, p - start].astype(np.float64), d)
            for p in range(start + t)]
    vals = [at(ev, p) if p < start else numpy_int8_vectors(new_v[r, p - start].astype(np.float64), d)
            for p in range(start + t)]
    keys, vals = np.stack(keys), np.stack(vals)
    for i in range(t):
      for h in range(heads):
        scores = keys[:start + i + 1, h // 2] @ q[r, i, h] / np.sqrt(d)
        w = np.exp(scores - scores.max())
        expected[r, i, h] = w @ vals[:start + i + 1, h // 2] / w.sum()

  def prefill(q, k, v, pk, pv, table, positions):
    return cached_attention(q, k, v, pk, pv, table, positions, fresh=False,
                            implementation="xla")[0]
  run = jax.jit(prefill)
  args = [jnp.asarray(a) for a in (q, new_k, new_v)] + [pool_k, pool_v] + [
      jnp.asarray(table), jnp.asarray(positions)]
  if axes is not None:
    mesh = sharding.make_mesh({"fsdp": 1, **axes}, jax.devices()[:4])

    def under_mesh(*a):
      with sharding.activation_layout(mesh, "generate"):
        return prefill(*a)
    on_mesh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    args = jax.device_put(args, on_mesh)
    run = jax.jit(under_mesh)
  np.testing.assert_allclose(np.asarray(run(*args), np.float64), expected, atol=1e-5)


def _engine_outputs(model, **engine):
  config = EngineConfig(slots=4, max_len=128, steps_per_call=4, page_size=16, **engine)
  eng = Engine(model, None, config)
  prompt = list(range(3, 40))  # a prefix the requests share, then their own tokens
  requests = [Request(i, prompt + [50 + i] * (i + 1),
                      SamplingParams(max_new_tokens=40, temperature=0.0 if i % 2 else 0.8,
                                     ignore_eos=True)) for i in range(6)]
  shared = [dataclasses.replace(r, prefix_len=len(prompt)) for r in requests]
  return eng, [r.token_ids for r in eng.generate_all(shared)]


def test_an_int8_kv_engine_decodes_the_same_tokens_however_it_schedules(gqa):
  """With int8 pages, a sequence preempted and recomputed from its tokens, or prefilled as a
  suffix after a shared prefix, reads the keys an uninterrupted run reads: the tokens (greedy
  and sampled) equal a roomy pool's."""
  model = gqa[2]
  roomy, expected = _engine_outputs(model, cache_dtype="int8")
  tight, got = _engine_outputs(model, cache_dtype="int8", kv_pages=12, admission="eager")
  assert tight.stats["preemptions"] > 0 and roomy.stats["preemptions"] == 0
  assert got == expected
  assert all(k.values.dtype == jnp.int8 for k in tight.state.cache.k)  # the int8 cache in use


def test_an_int8_kv_pool_holds_one_byte_per_value_and_a_float32_scale_per_vector(gqa):
  """The pool's arrays, read back: per layer, keys and values of int8 plus one 4-byte scale
  per (page, kv head, token); so a pool of the same bytes holds 2d / (d + 4) times the pages of
  a bfloat16 one (head dim d)."""
  model = gqa[2]
  cfg = model.config
  d = cfg.resolved_head_dim
  def nbytes(engine):
    return sum(a.nbytes for a in jax.tree.leaves((engine.state.cache.k, engine.state.cache.v)))
  pools = {dt: Engine(model, None, EngineConfig(slots=2, max_len=128, page_size=16, kv_pages=20,
                                                cache_dtype=dt)) for dt in ("bfloat16", "int8")}
  per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * 20 * 16
  assert nbytes(pools["bfloat16"]) == per_token * d * 2
  assert nbytes(pools["int8"]) == per_token * (d + 4)
  budget = 2 * 2 ** 20
  pages = {dt: Engine(model, None, EngineConfig(slots=2, max_len=128, page_size=16,
                                                kv_memory=budget, cache_dtype=dt)).pages_per_shard
           for dt in ("bfloat16", "int8")}
  per_page = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * 16
  assert pages == {"bfloat16": budget // (per_page * 2 * d), "int8": budget // (per_page * (d + 4))}
