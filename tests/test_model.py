"""The Llama model equals transformers' LlamaForCausalLM, in every call mode."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import mind_jax
from mind_jax.nn import NO_PAGE, KVCache
from conftest import LLAMA_VARIANTS, make_hf_checkpoint


def torch_logits(hf_model, ids):
  with torch.no_grad():
    return hf_model(torch.tensor(np.asarray(ids))).logits.float().numpy()


def random_ids(shape, seed=0, vocab=300):
  return np.random.RandomState(seed).randint(0, vocab, shape).astype(np.int32)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("variant", list(LLAMA_VARIANTS))
def test_logits_match_transformers(hf_checkpoints, variant, scan_layers):
  path, hf_model = hf_checkpoints[variant]
  model, _ = mind_jax.load_pretrained(path, scan_layers=scan_layers, progress=False)
  ids = random_ids((2, 200))  # long enough to cross the attention's blocks of 128 query rows
  diff = np.abs(np.asarray(model(ids)) - torch_logits(hf_model, ids)).max()
  assert diff <= 1e-4, f"{variant}: max |logits diff| = {diff}"


def hf_bfloat16(path):
  """transformers in bfloat16 as users load it. (`model.to(torch.bfloat16)` would also round the
  rotary inverse frequencies, a buffer, to bfloat16; from_pretrained keeps them float32.)"""
  import transformers
  return transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()


def test_bfloat16_logits_close_to_transformers_bfloat16(hf_checkpoints):
  path, _ = hf_checkpoints["llama3.1-gqa"]
  model, _ = mind_jax.load_pretrained(path, dtype="bfloat16", progress=False)
  ids = random_ids((2, 20))
  ours = np.asarray(model(ids), np.float32)
  ref = torch_logits(hf_bfloat16(path), ids)
  # bf16 has 8 mantissa bits. Measured: max |diff| = 0.0039, one bf16 ulp of these logits
  # (|logits| < 0.71); the tolerance is 2.5x that. (This near-uniform attention hides
  # one-ulp differences inside the model: the peaked-attention test below catches those.)
  assert np.abs(ours - ref).max() <= 0.01


@pytest.fixture(scope="module")
def peaked_checkpoint(tmp_path_factory):
  """One GQA layer whose attention is far from uniform: q/k weights of std 0.5, not 0.02."""
  path = tmp_path_factory.mktemp("peaked-attention")
  hf_model = make_hf_checkpoint(path, num_hidden_layers=1, num_attention_heads=4,
                                num_key_value_heads=2)
  with torch.no_grad():
    for layer in hf_model.model.layers:
      layer.self_attn.q_proj.weight.mul_(25)
      layer.self_attn.k_proj.weight.mul_(25)
  hf_model.save_pretrained(path)
  return str(path), hf_model


def test_bfloat16_logits_match_transformers_with_peaked_attention(peaked_checkpoint):
  # With near-uniform attention (the 0.02-std checkpoints above) a one-ulp difference in
  # what a norm feeds q and k barely moves the logits. Peaked attention amplifies it. With
  # one layer the correct code still matches transformers to one ulp of the logits: the
  # embedding and the first norm, all that comes before q and k, are bit-identical.
  path, hf_model = peaked_checkpoint
  ids = random_ids((8, 32))
  eager = copy.deepcopy(hf_model)
  eager.set_attn_implementation("eager")
  with torch.no_grad():
    attention = eager(torch.tensor(ids), output_attentions=True).attentions[0]
  # The top key's share of each query's attention (uniform attention: at most 1/9 here).
  assert attention[:, :, 8:].max(-1).values.mean() > 0.8
  model, _ = mind_jax.load_pretrained(path, dtype="bfloat16", progress=False)
  ours = np.asarray(model(ids), np.float32)
  ref = torch_logits(hf_bfloat16(path), ids)
  # Measured on CPU (jax 0.10.2, torch 2.13, transformers 5.24): max |diff| = 0.0039, one bf16
  # ulp of logits in [0.5, 1). RMSNorm scaling in float32 before the cast to bf16 (transformers
  # casts, then scales) gives 0.032 here, 0.018 to 0.049 on other inputs. The tolerance is
  # 2.5x the measured baseline.
  assert np.abs(ours - ref).max() <= 0.01


@pytest.fixture(scope="module")
def gqa_model(hf_checkpoints):
  return mind_jax.load_pretrained(hf_checkpoints["llama3.1-gqa"][0], progress=False)[0]


def test_cached_decoding_equals_full_forward_for_ragged_batch(gqa_model):
  # Three prompts of different lengths, right-padded into one prefill, then decoded one token
  # per step with per-row positions; each step's logits must equal the full forward's.
  lengths = np.array([3, 11, 7])
  rows = [random_ids((n + 6,), seed=int(n)) for n in lengths]  # prompt + 6 continuation tokens
  prefill = np.zeros((3, lengths.max()), np.int32)
  for i, (row, n) in enumerate(zip(rows, lengths)):
    prefill[i, :n] = row[:n]
  cache = KVCache.create(gqa_model.config, slots=3, max_len=24)
  logits, cache = gqa_model(prefill, positions=np.broadcast_to(np.arange(prefill.shape[1]),
                                                               prefill.shape), cache=cache)
  got = [[np.asarray(logits)[i, n - 1]] for i, n in enumerate(lengths)]
  for step in range(6):
    tokens = np.array([[row[n + step]] for row, n in zip(rows, lengths)], np.int32)
    logits, cache = gqa_model(tokens, positions=(lengths + step)[:, None], cache=cache)
    for i in range(3):
      got[i].append(np.asarray(logits)[i, 0])
  for row, n, steps in zip(rows, lengths, got):
    full = np.asarray(gqa_model(row[None]))[0]
    assert np.abs(full[n - 1:] - np.stack(steps)).max() <= 1e-5


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_prefill_then_multi_token_extends_equal_full_forward(hf_checkpoints, scan_layers):
  model, _ = mind_jax.load_pretrained(hf_checkpoints["explicit-head-dim"][0],
                                      scan_layers=scan_layers, progress=False)
  ids = random_ids((2, 16))
  full = np.asarray(model(ids))
  cache = KVCache.create(model.config, slots=2, max_len=32)
  pieces = []
  # Prefill 7 tokens, then extend 1, 3 and 5 tokens at a time.
  for start, stop in [(0, 7), (7, 8), (8, 11), (11, 16)]:
    positions = np.broadcast_to(np.arange(start, stop), (2, stop - start))
    logits, cache = model(ids[:, start:stop], positions=positions, cache=cache)
    pieces.append(np.asarray(logits))
  assert np.abs(np.concatenate(pieces, axis=1) - full).max() <= 1e-5


def test_rows_read_their_pages_through_the_table_and_share_a_prefix_copy_on_write(gqa_model):
  """A pool of 4-token pages: row A holds pages out of order, row B shares A's first 6 tokens
  (page 6 as it is, page 1 copied to page 4 before B writes its own tokens after them) and
  prefills only its suffix; both then decode in one call and equal full forwards."""
  cfg = gqa_model.config
  a = random_ids((12,), seed=5)
  b = np.concatenate([a[:6], random_ids((5,), seed=6)])
  pool = KVCache.pool(cfg, pages=8, page_size=4)
  assert KVCache.nbytes_for(cfg, 8, 4) == sum(x.nbytes for x in pool.k + pool.v)
  table = np.array([[6, 1, 3, NO_PAGE], [6, 4, 0, NO_PAGE]], np.int32)
  _, pool = gqa_model(a[None, :10], cache=pool.with_table(table[:1], fresh=True))
  pool = pool.copy_page(1, 4)
  suffix = b[None, 6:10]
  _, pool = gqa_model(suffix, positions=np.arange(6, 10)[None], cache=pool.with_table(table[1:]))
  logits, _ = gqa_model(np.array([[a[10]], [b[10]]]), positions=np.array([[10], [10]]),
                        cache=pool.with_table(table))
  for row, ids in enumerate((a, b)):
    full = np.asarray(gqa_model(ids[None, :11]))[0, -1]
    assert np.abs(np.asarray(logits)[row, 0] - full).max() <= 1e-5, row


def test_packed_sequences_equal_separate_sequences(gqa_model):
  lengths = [100, 60, 50]  # the second document spans the attention's first block boundary
  seqs = [random_ids((n,), seed=10 + n) for n in lengths]
  pad = 4
  tokens = np.concatenate(seqs + [np.zeros(pad, np.int32)])[None]
  segments = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(pad)])
  positions = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(pad)])
  packed = np.asarray(gqa_model(tokens, positions=positions[None].astype(np.int32),
                                segment_ids=segments[None].astype(np.int32)))[0]
  offset = 0
  for seq in seqs:
    alone = np.asarray(gqa_model(seq[None]))[0]
    assert np.abs(packed[offset: offset + len(seq)] - alone).max() <= 1e-5
    offset += len(seq)


def test_remat_and_scan_give_the_same_gradients():
  cfg = mind_jax.preset("tiny", scan_layers=True)
  ids = random_ids((2, 12), vocab=cfg.vocab_size)

  def grads(remat):
    model = mind_jax.Llama(cfg.replace(remat=remat), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def loss(state):
      logits = nnx.merge(graphdef, state)(ids)
      return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    return jax.grad(loss)(state)

  base = jax.tree.leaves(grads("none"))
  for policy in ("full", "dots"):
    for a, b in zip(base, jax.tree.leaves(grads(policy))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def loss_fn(graphdef, ids):
  """A next-token-style loss of the model's parameters, for gradients."""

  def loss(state):
    logits = nnx.merge(graphdef, state)(ids)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  return loss


def equations(jaxpr):
  """Every equation of a jaxpr, those inside scans, jits and remats included."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else [param]:
        if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
          yield from equations(sub)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["loop", "scan"])
def test_remat_puts_its_policy_in_the_gradient(scan_layers):
  # Rematerialisation shows in the traced gradient as jax.checkpoint's primitive, carrying
  # the policy asked for ("full": save nothing, policy None); remat="none" has none.
  cfg = mind_jax.preset("tiny", scan_layers=scan_layers)
  ids = random_ids((2, 12), vocab=cfg.vocab_size)

  def checkpoints(remat):
    graphdef, state = nnx.split(mind_jax.Llama(cfg.replace(remat=remat), rngs=nnx.Rngs(0)))
    jaxpr = jax.make_jaxpr(jax.grad(loss_fn(graphdef, ids)))(state)
    return [eqn.params["policy"] for eqn in equations(jaxpr)
            if eqn.primitive.name in ("checkpoint", "remat", "remat2")]

  assert checkpoints("none") == []
  full = checkpoints("full")
  assert full and all(policy is None for policy in full)
  dots = checkpoints("dots")
  assert dots and all(policy == jax.checkpoint_policies.checkpoint_dots for policy in dots)


def test_scanned_layers_equal_the_layer_loop_in_logits_and_gradients():
  cfg = mind_jax.preset("tiny")
  ids = random_ids((2, 12), vocab=cfg.vocab_size)
  loop = mind_jax.Llama(cfg, rngs=nnx.Rngs(0))
  scan = nnx.eval_shape(lambda: mind_jax.Llama(cfg.replace(scan_layers=True), rngs=nnx.Rngs(0)))
  scan_paths = [path for path, _ in nnx.to_flat_state(nnx.state(scan))]

  def stacked(loop_tree):
    """A loop model's parameters (or gradients) in the scan layout: layers.X[i] = layers[i].X."""
    flat = {path: v[...] for path, v in nnx.to_flat_state(loop_tree)}
    layer = lambda path, i: flat[path[:2] + (i,) + path[2:]]  # noqa: E731
    return {path: jnp.stack([layer(path, i) for i in range(cfg.num_hidden_layers)])
            if path[:2] == ("model", "layers") else flat[path] for path in scan_paths}

  # The scanned model gets the loop model's weights.
  weights = stacked(nnx.state(loop))
  nnx.update(scan, nnx.from_flat_state({path: var.replace(weights[path])
                                        for path, var in nnx.to_flat_state(nnx.state(scan))}))

  def logits_and_grads(model):
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state: (nnx.merge(graphdef, state)(ids),
                                 jax.grad(loss_fn(graphdef, ids))(state)))
    return run(state)

  loop_logits, loop_grads = logits_and_grads(loop)
  scan_logits, scan_grads = logits_and_grads(scan)
  assert np.abs(np.asarray(scan_logits) - np.asarray(loop_logits)).max() <= 1e-5
  expected = stacked(loop_grads)
  for path, grad in nnx.to_flat_state(scan_grads):
    np.testing.assert_allclose(np.asarray(grad[...]), np.asarray(expected[path]),
                               rtol=1e-4, atol=1e-6, err_msg=str(path))


def test_presets_have_published_sizes():
  # Parameter counts of the published checkpoints (embeddings included).
  expected = {"llama2-7b": 6.74e9, "llama3.1-8b": 8.03e9, "llama3.1-70b": 70.55e9,
              "llama3.2-1b": 1.24e9, "llama3.2-3b": 3.21e9}
  for name, count in expected.items():
    assert abs(mind_jax.preset(name).num_params() / count - 1) < 0.01, name


def test_both_ways_of_writing_the_cache_write_the_same():
  """Per-head vectors (TPU) and [K, D] windows (elsewhere) put the same values in the same
  places, positions past the table and entries naming no page dropped."""
  from mind_jax.nn._cache import page_slots, write_pages
  rng = np.random.default_rng(0)
  pool = jnp.asarray(rng.normal(size=(6, 2, 4, 8)), jnp.float32)
  new = jnp.asarray(rng.normal(size=(3, 5, 2, 8)), jnp.float32)
  table = jnp.asarray([[0, 1, 2], [3, 4, NO_PAGE], [5, NO_PAGE, NO_PAGE]])
  positions = jnp.asarray([[0, 1, 2, 3, 4], [3, 4, 7, 8, 12], [1, 2, 3, 4, 2]])
  page, offset = page_slots(table, positions, 4, 6)
  windows, vectors = (write_pages(pool, new, page, offset),
                      write_pages(pool, new, page, offset, True))
  assert jnp.array_equal(windows, vectors)
  assert jnp.array_equal(vectors[4, :, 3], new[1, 2]) and jnp.array_equal(vectors[5, :, 2], new[2, 4])
  # Row 1's positions 8 and 12 and row 2's 4 name no page: nothing else changed.
  written = np.zeros((6, 4), bool)
  for row, col in [(0, c) for c in range(5)] + [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]:
    p = int(positions[row, col])
    written[int(table[row, p // 4]), p % 4] = True
  assert jnp.array_equal(jnp.where(written[:, None, :, None], 0, vectors),
                         jnp.where(written[:, None, :, None], 0, pool))