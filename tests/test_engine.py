"""The engine: greedy tokens equal transformers' generate; stops, seeds, slots, bad input."""

import dataclasses

import numpy as np
import pytest
import torch

import mind_jax
from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams

from conftest import make_hf_checkpoint

GREEDY_70 = SamplingParams(max_new_tokens=70, temperature=0.0, ignore_eos=True)


def random_prompts(lengths, seed=0, vocab=300):
  rs = np.random.RandomState(seed)
  return [rs.randint(0, vocab, n).tolist() for n in lengths]


def hf_greedy(hf_model, prompt, new_tokens):
  with torch.no_grad():
    out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                            max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False, eos_token_id=None, pad_token_id=0)
  return out[0, len(prompt):].tolist()


def test_the_prefix_cache_drops_only_prefixes_no_sequence_is_using():
  from mind_jax.engine._pages import PagePool, Prefix, prefix_key
  pool = PagePool(per_shard=6, shards=1, page_size=8)
  running, finished = pool.take(0, 2), pool.take(0, 2)
  pool.remember(0, prefix_key([1]), Prefix(16, tuple(running)))  # the least recently used
  pool.remember(0, prefix_key([2]), Prefix(16, tuple(finished)))
  pool.release(finished)  # its sequence ended: only the cache holds its pages
  # Three pages wanted, two free: the unused prefix goes, the running one stays for its sharers.
  assert pool.take(0, 3) is not None
  assert pool.lookup(0, prefix_key([1])) is not None and pool.lookup(0, prefix_key([2])) is None
  assert pool.take(0, 2) is None  # nothing else can be freed: nothing taken
  assert pool.lookup(0, prefix_key([1])) is not None and pool.free(0) == 1


def test_the_prefix_a_waiting_request_will_read_is_dropped_last():
  from mind_jax.engine._pages import PagePool, Prefix, prefix_key
  pool = PagePool(per_shard=4, shards=1, page_size=8)
  waited_for, other = pool.take(0, 2), pool.take(0, 2)
  pool.remember(0, prefix_key([1]), Prefix(16, tuple(waited_for)))  # the least recently used
  pool.remember(0, prefix_key([2]), Prefix(16, tuple(other)))
  pool.release(waited_for + other)  # their sequences were preempted or ended
  assert pool.take(0, 2, keep={prefix_key([1])}) is not None
  assert pool.lookup(0, prefix_key([1])) is not None and pool.lookup(0, prefix_key([2])) is None
  assert pool.take(0, 2, keep={prefix_key([1])}) is not None  # no other way: it goes too
  assert pool.lookup(0, prefix_key([1])) is None


@pytest.fixture(scope="module")
def loaded(hf_checkpoints):
  return {name: mind_jax.load_pretrained(hf_checkpoints[name][0], progress=False)
          for name in ("llama3.1-gqa", "llama2-mha")}


@pytest.mark.parametrize("variant", ["llama3.1-gqa", "llama2-mha"])
def test_greedy_equals_transformers_with_slot_refills(hf_checkpoints, loaded, variant):
  model, tokenizer = loaded[variant]
  prompts = random_prompts([5, 17, 3, 30, 9, 12, 40, 2, 21, 7])
  # 10 requests through 4 slots: slots are refilled while others are mid-sequence.
  engine = Engine(model, tokenizer, EngineConfig(slots=4, max_len=128, steps_per_call=5))
  results = engine.generate_all(Request(i, p, GREEDY_70) for i, p in enumerate(prompts))
  hf_model = hf_checkpoints[variant][1]
  for prompt, result in zip(prompts, results):
    assert result.finish_reason == "length" and result.output_tokens == 70
    assert result.token_ids == hf_greedy(hf_model, prompt, 70), f"request {result.id}"
  assert engine.stats["generate_calls"] < 70 * len(prompts) / 4  # several tokens per call


@pytest.mark.parametrize("page_size,buckets", [(8, (16,)), (16, None)],
                         ids=["page8-pieces16", "page16"])
def test_greedy_equals_transformers_with_shared_prefixes_and_preemption(hf_checkpoints, loaded,
                                                                         page_size, buckets):
  """Three groups of requests share a prompt prefix (as a chunk's seven styles do), at a
  length that ends mid-page; the pool holds two sequences at the context limit and requests
  are admitted eagerly, so sequences are preempted and recomputed. Every output is
  transformers' greedy one. With one prefill bucket of 16 tokens, every longer prompt and
  recompute is prefilled in 16-token pieces."""
  model, tokenizer = loaded["llama3.1-gqa"]
  heads = random_prompts([21, 13, 30], seed=11)
  tails = random_prompts([3, 9, 5, 12, 2, 7, 4, 10, 6], seed=12)
  prompts = [heads[i // 3] + tail for i, tail in enumerate(tails)]
  requests = [Request(i, p, GREEDY_70, prefix_len=len(heads[i // 3]))
              for i, p in enumerate(prompts)]
  config = EngineConfig(slots=6, max_len=128, steps_per_call=5, page_size=page_size,
                        kv_pages=2 * 128 // page_size, prefill_buckets=buckets, admission="eager")
  engine = Engine(model, tokenizer, config)
  results = engine.generate_all(requests)
  hf_model = hf_checkpoints["llama3.1-gqa"][1]
  for prompt, result in zip(prompts, results):
    assert result.finish_reason == "length" and result.output_tokens == 70
    assert result.token_ids == hf_greedy(hf_model, prompt, 70), f"request {result.id}"
  assert engine.stats["preemptions"] > 0 and engine.stats["most_sequences_at_once"] > 2
  assert engine.stats["prefix_tokens_reused"] > 0
  if buckets:  # every prefill ran a program of at most 16 tokens: none for a longer prompt
    prefills = [p for p in engine._seen if p.startswith("prefill")]
    sizes = [int(p.split(" for ")[1].split()[0]) if " after " in p else int(p.split()[-1])
             for p in prefills]
    assert prefills and max(sizes) == 16 and all(size % 4 == 0 for size in sizes), prefills
  # With room for every sequence: each group's prefix is computed once, by its first request.
  roomy = Engine(model, tokenizer, dataclasses.replace(config, kv_pages=None))
  assert [r.token_ids for r in roomy.generate_all(requests)] == [r.token_ids for r in results]
  assert roomy.stats["preemptions"] == 0 and roomy.stats["most_sequences_at_once"] == 6
  assert roomy.stats["prefix_tokens_reused"] == 2 * sum(map(len, heads))
  assert roomy.stats["prefill_tokens"] == sum(map(len, prompts)) - 2 * sum(map(len, heads))
  # Admitted only when the growth projected for the running sequences fits (every output's
  # length is known here: 70 tokens), none is preempted, and the tokens are the same.
  projected = Engine(model, tokenizer, dataclasses.replace(config, admission="projected"))
  assert [r.token_ids for r in projected.generate_all(requests)] == [r.token_ids for r in results]
  assert projected.stats["preemptions"] == 0
  assert projected.stats["most_sequences_at_once"] >= 2
  assert projected.stats["prefill_tokens"] < engine.stats["prefill_tokens"]  # no recomputes


@pytest.fixture(scope="module")
def long_context(tmp_path_factory):
  """A GQA checkpoint with 512 positions: (our model, its tokenizer, the transformers model)."""
  path = tmp_path_factory.mktemp("long-context")
  hf_model = make_hf_checkpoint(path, num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=512)
  model, tokenizer = mind_jax.load_pretrained(str(path), progress=False)
  return model, tokenizer, hf_model


def test_greedy_equals_transformers_past_the_first_attention_windows(long_context):
  # A generate call attends over a window of the cache (128, 256, then max_len): sequences
  # that run across positions 128 and 256 must still decode exactly like transformers, with
  # 7 tokens per call, which divides none of the output lengths (requests end mid-call).
  model, tokenizer, hf_model = long_context
  shapes = [(100, 180), (250, 40), (120, 30)]  # (prompt, new tokens): ends at 280, 290, 150
  prompts = random_prompts([n for n, _ in shapes], seed=7)
  # One prefill bucket keeps the compiled programs (and the test's time) down to the windows.
  engine = Engine(model, tokenizer, EngineConfig(slots=2, max_len=512, steps_per_call=7,
                                                 prefill_buckets=(256,)))
  results = engine.generate_all(
      Request(i, p, SamplingParams(max_new_tokens=new, temperature=0.0, ignore_eos=True))
      for i, (p, (_, new)) in enumerate(zip(prompts, shapes)))
  for prompt, (_, new), result in zip(prompts, shapes, results):
    assert result.finish_reason == "length" and result.output_tokens == new
    assert result.token_ids == hf_greedy(hf_model, prompt, new), f"request {result.id}"


def test_top_k_1_and_a_tiny_top_p_are_greedy_beside_a_sampled_request(hf_checkpoints, loaded):
  # Each request's top_k / top_p apply to its own row: at temperature 1.0, top_k=1 and
  # top_p=1e-6 leave only the most likely token, so both decode the greedy tokens, while a
  # request sampled in the same batch does not.
  model, tokenizer = loaded["llama3.1-gqa"]
  prompt = random_prompts([9], seed=8)[0]
  sampled = dict(max_new_tokens=20, temperature=1.0, ignore_eos=True)
  requests = [Request("top_k=1", prompt, SamplingParams(top_k=1, **sampled)),
              Request("sampled", prompt, SamplingParams(top_p=0.9, **sampled)),
              Request("top_p=1e-6", prompt, SamplingParams(top_p=1e-6, **sampled))]
  engine = Engine(model, tokenizer, EngineConfig(slots=4, max_len=64, steps_per_call=3))
  by_id = {r.id: r.token_ids for r in engine.generate_all(requests)}
  greedy = hf_greedy(hf_checkpoints["llama3.1-gqa"][1], prompt, 20)
  assert by_id["top_k=1"] == greedy
  assert by_id["top_p=1e-6"] == greedy
  assert by_id["sampled"] != greedy


def test_stop_conditions_and_finish_reasons(loaded):
  model, tokenizer = loaded["llama3.1-gqa"]
  prompt = random_prompts([6], seed=1)[0]
  engine = Engine(model, tokenizer, EngineConfig(slots=2, max_len=32, steps_per_call=4))
  [free] = engine.generate_all([Request("free", prompt, SamplingParams(
      max_new_tokens=20, temperature=0.0, ignore_eos=True))])
  stop_at = free.token_ids[7]
  first_seen = free.token_ids.index(stop_at)
  requests = [
      Request("stop", prompt, SamplingParams(max_new_tokens=20, temperature=0.0,
                                             stop_token_ids=(stop_at,), ignore_eos=True)),
      Request("length", prompt, SamplingParams(max_new_tokens=5, temperature=0.0,
                                               ignore_eos=True)),
      Request("context", prompt, SamplingParams(max_new_tokens=100, temperature=0.0,
                                                ignore_eos=True)),
      Request("one", prompt, SamplingParams(max_new_tokens=1, temperature=0.0)),
  ]
  by_id = {r.id: r for r in engine.generate_all(requests)}
  assert by_id["stop"].finish_reason == "stop"
  assert by_id["stop"].token_ids == free.token_ids[: first_seen + 1]
  assert by_id["length"].finish_reason == "length" and by_id["length"].token_ids == free.token_ids[:5]
  assert by_id["context"].finish_reason == "context_limit"
  assert len(prompt) + by_id["context"].output_tokens == 32
  assert by_id["one"].output_tokens == 1
  # The model's EOS ids stop generation unless ignore_eos: declare the third greedy token an EOS.
  original = model.config
  model.config = original.replace(eos_token_id=(free.token_ids[2],))
  try:
    eos_engine = Engine(model, tokenizer, EngineConfig(slots=2, max_len=32))
    [eos] = eos_engine.generate_all([Request("eos", prompt, SamplingParams(
        max_new_tokens=20, temperature=0.0))])
  finally:
    model.config = original
  assert eos.finish_reason == "eos"
  assert eos.token_ids == free.token_ids[: free.token_ids.index(free.token_ids[2]) + 1]


def test_same_seed_same_tokens_whatever_the_slots(loaded):
  model, tokenizer = loaded["llama3.1-gqa"]
  prompts = random_prompts([4, 11, 7, 15, 3, 9], seed=2)
  params = SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.9, top_k=50, ignore_eos=True)
  runs = []
  # The last: 8-token pages, a pool of 1.5 sequences at the context limit (preempted
  # sequences resume sampling with their own keys).
  for slots, steps, pages in [(1, 1, None), (8, 3, None), (2, 8, None), (6, 2, (8, 12))]:
    page_size, kv_pages = pages or (None, None)
    engine = Engine(model, tokenizer, EngineConfig(slots=slots, max_len=64, steps_per_call=steps,
                                                   seed=123, page_size=page_size,
                                                   kv_pages=kv_pages, admission="eager"))
    order = list(range(len(prompts)))[::-1] if slots == 2 else range(len(prompts))
    results = engine.generate_all(Request(f"r{i}", prompts[i], params) for i in order)
    runs.append({r.id: r.token_ids for r in results})
  assert engine.stats["preemptions"] > 0
  assert runs[0] == runs[1] == runs[2] == runs[3]
  other_seed = Engine(model, tokenizer, EngineConfig(slots=8, max_len=64, seed=124))
  changed = {r.id: r.token_ids for r in other_seed.generate_all(
      Request(f"r{i}", p, params) for i, p in enumerate(prompts))}
  assert changed != runs[0]


def test_live_sequences_move_down_into_freed_slots_and_decode_as_before(hf_checkpoints, loaded,
                                                                       monkeypatch):
  """Requests end at different times; the scheduler moves the highest live slots into the
  freed ones, so that a decode call runs only as many rows as there are sequences. A moved
  sequence decodes as if it had stayed: greedy ones as transformers, sampled ones with their
  own keys (as with one slot, where nothing moves)."""
  from mind_jax.engine._engine import _Scheduler
  model, tokenizer = loaded["llama3.1-gqa"]
  packed = []
  compact = _Scheduler._compact

  def checked(self):
    compact(self)
    packed.append(sorted(self.live))

  monkeypatch.setattr(_Scheduler, "_compact", checked)
  prompts = random_prompts([6, 14, 3, 9, 20, 5, 11, 8], seed=21)
  lengths = [40, 7, 25, 3, 33, 12, 18, 29]
  engine = Engine(model, tokenizer, EngineConfig(slots=8, max_len=128, steps_per_call=2))
  results = engine.generate_all(
      Request(i, p, SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True))
      for i, (p, n) in enumerate(zip(prompts, lengths)))
  hf_model = hf_checkpoints["llama3.1-gqa"][1]
  for prompt, n, result in zip(prompts, lengths, results):
    assert result.token_ids == hf_greedy(hf_model, prompt, n), f"request {result.id}"
  assert engine.stats["slot_moves"] >= 4
  assert all(live == list(range(len(live))) for live in packed)
  sampled = [Request(i, p, SamplingParams(max_new_tokens=n, temperature=1.0, ignore_eos=True))
             for i, (p, n) in enumerate(zip(prompts, lengths))]
  runs = [[r.token_ids for r in Engine(model, tokenizer, EngineConfig(
      slots=slots, max_len=128, steps_per_call=2, seed=5)).generate_all(sampled)]
      for slots in (8, 1)]
  assert runs[0] == runs[1]


def test_a_shape_wanted_a_few_times_runs_a_compiled_one_that_covers_it(loaded):
  from mind_jax.engine._engine import COMPILE_AFTER_CALLS
  model, tokenizer = loaded["llama3.1-gqa"]
  engine = Engine(model, tokenizer, EngineConfig(slots=8, max_len=128))
  assert engine._shape("decode", (8, 256)) == (8, 256)  # nothing compiled covers it
  for _ in range(COMPILE_AFTER_CALLS - 1):  # covered: the compiled program runs it
    assert engine._shape("decode", (4, 128)) == (8, 256)
  assert engine._shape("decode", (4, 128)) == (4, 128)  # wanted often enough: its own
  assert engine._shape("decode", (4, 128)) == (4, 128)
  assert engine._shape("decode", (8, 512)) == (8, 512)  # wider than any compiled one
  assert engine._shape("decode", (4, 200)) == (8, 256)  # the smallest that covers it
  assert engine._shape("prefill", (64, 0)) == (64, 0)  # programs of another kind do not count
  # A shape that must be compiled is the one the calls will want a few calls later.
  assert engine._shape("decode", (8, 1024), ahead=(8, 1536)) == (8, 1536)
  assert engine._shape("decode", (8, 1024), ahead=(8, 1536)) == (8, 1536)


def test_prompts_are_prefilled_in_pieces_padded_to_a_quarter_piece_after_the_first(loaded):
  model, tokenizer = loaded["llama3.1-gqa"]
  engine = Engine(model, tokenizer, EngineConfig(slots=2, max_len=128, prefill_buckets=(32, 64)))
  assert engine.prefill_pieces(0, 20) == [(0, 20, 32)]  # from position 0: the prompt buckets
  assert engine.prefill_pieces(0, 100) == [(0, 64, 64), (64, 100, 48)]
  assert engine.prefill_pieces(30, 45) == [(30, 45, 16)]  # a sharer's suffix
  assert engine.prefill_pieces(30, 127) == [(30, 94, 64), (94, 127, 48)]


def test_warmup_compiles_without_changing_results(loaded):
  model, tokenizer = loaded["llama3.1-gqa"]
  prompts = random_prompts([5, 9], seed=5)
  params = SamplingParams(max_new_tokens=6, temperature=0.7, ignore_eos=True)
  cold = Engine(model, tokenizer, EngineConfig(slots=2, max_len=160, steps_per_call=4))
  warm = Engine(model, tokenizer, EngineConfig(slots=2, max_len=160, steps_per_call=4))
  warm.warmup()
  assert warm._generate._cache_size() == 2  # windows 128 and 160
  run = lambda e: [r.token_ids for r in e.generate_all(Request(i, p, params)  # noqa: E731
                                                       for i, p in enumerate(prompts))]
  assert run(cold) == run(warm)


def test_bad_requests_get_one_line_errors_and_others_finish(loaded):
  model, tokenizer = loaded["llama3.1-gqa"]
  engine = Engine(model, tokenizer, EngineConfig(slots=2, max_len=32))
  good = random_prompts([5, 6], seed=3)
  requests = [Request("ok1", good[0], SamplingParams(max_new_tokens=4, temperature=0.0)),
              Request("empty", [], SamplingParams(max_new_tokens=4)),
              Request("too-long", list(range(40)), SamplingParams(max_new_tokens=4)),
              Request("vocab", [1, 2, 300], SamplingParams(max_new_tokens=4)),
              Request("negative", [1, -5], SamplingParams(max_new_tokens=4)),
              Request("ok2", good[1], SamplingParams(max_new_tokens=4, temperature=0.0))]
  by_id = {r.id: r for r in engine.generate_all(requests)}
  assert by_id["ok1"].output_tokens == 4 and by_id["ok2"].output_tokens == 4
  assert by_id["empty"].error == "empty prompt"
  assert "context limit is 32" in by_id["too-long"].error
  assert by_id["vocab"].error == "token id 300 is outside the vocabulary (0..299)"
  assert "token id -5" in by_id["negative"].error
  for name in ("empty", "too-long", "vocab", "negative"):
    assert by_id[name].finish_reason == "error" and "\n" not in by_id[name].error
  with pytest.raises(mind_jax.MindJaxError, match="max_new_tokens must be >= 1"):
    SamplingParams(max_new_tokens=0)


def test_the_pool_is_sized_by_pages_or_memory_and_bad_sizes_fail_clearly(loaded):
  model, tokenizer = loaded["llama3.1-gqa"]
  engine = Engine(model, tokenizer, EngineConfig(slots=4, max_len=64, page_size=16))
  per_page, total = engine.cache_bytes()
  # 2 layers x 16 positions x 2 kv heads x 16 dims x (k + v) x 4 bytes; by default the pool
  # holds every slot at the context limit when memory allows: 4 x 64 / 16 pages.
  assert per_page == 2 * 16 * 2 * 16 * 2 * 4 and total == 16 * per_page
  assert sum(a.nbytes for a in engine.state.cache.k + engine.state.cache.v) == total
  assert Engine(model, tokenizer, EngineConfig(slots=4, max_len=64, page_size=16,
                                               kv_pages=6)).cache_bytes()[1] == 6 * per_page
  assert Engine(model, tokenizer, EngineConfig(slots=4, max_len=64, page_size=16,
                                               kv_memory=5 * per_page + 1)).cache_bytes()[1] == 5 * per_page
  assert EngineConfig(max_len=160).page == 32 and EngineConfig(max_len=4096).page == 64
  assert EngineConfig(max_len=489).page == 64 and EngineConfig(max_len=489).row_pages == 8
  bad = {
      "page_size=12": (dict(page_size=12), r"engine.page_size=12: a page must hold a multiple of 8"),
      "page_size=48": (dict(page_size=48), r"engine.page_size=48 does not divide the context "
                                           r"limit 64; use 64"),
      "kv_pages=3": (dict(page_size=16, kv_pages=3), r"the KV pool from engine.kv_pages=3 holds 3 "
                     r"page\(s\) of 16 tokens per shard, fewer than one sequence at the context "
                     r"limit needs \(4, 32.0 KiB per device\)"),
      "kv_memory=1e15": (dict(kv_memory=10**15), r"engine.kv_memory=1000000000000000 bytes "
                         r"\(931322.6 GiB\) is more than the .* free on"),
      "huge max_len": (dict(max_len=2**30), r"fewer than one sequence at the context limit"),
  }
  for name, (overrides, message) in bad.items():
    with pytest.raises(mind_jax.MindJaxError, match=message) as error:
      Engine(model, tokenizer, EngineConfig(**{"slots": 4, "max_len": 64, **overrides}))
    assert "\n" not in str(error.value), name


def _one_device_reference(loaded):
  """(tokenizer, requests, their results on one device) for the sharded-engine tests."""
  model, tokenizer = loaded["llama3.1-gqa"]
  prompts = random_prompts([5, 17, 3, 30, 9, 12], seed=4)
  params = SamplingParams(max_new_tokens=16, temperature=0.8, top_p=0.9, ignore_eos=True)
  requests = [Request(i, p, params) for i, p in enumerate(prompts)]
  single = Engine(model, tokenizer, EngineConfig(slots=4, max_len=64)).generate_all(requests)
  return tokenizer, requests, single


def test_sharded_engine_equals_one_device(hf_checkpoints, loaded):
  tokenizer, requests, single = _one_device_reference(loaded)
  mesh = mind_jax.make_mesh({"data": 4, "fsdp": 1, "tensor": 2})
  sharded_model, _ = mind_jax.load_pretrained(hf_checkpoints["llama3.1-gqa"][0], mesh=mesh,
                                              progress=False)
  engine = Engine(sharded_model, tokenizer, EngineConfig(slots=4, max_len=64), mesh=mesh)
  assert engine.state.cache.k[0].sharding.spec[:2] == ("data", "tensor")
  sharded = engine.generate_all(requests)
  assert [r.token_ids for r in sharded] == [r.token_ids for r in single]


def test_an_engine_with_fsdp_weights_splits_its_slots_over_data_and_fsdp(hf_checkpoints, loaded):
  """mesh.rules=train for generation: weights split over fsdp too (a model too large for
  tensor parallelism alone), decode slots and KV cache over data x fsdp."""
  tokenizer, requests, single = _one_device_reference(loaded)
  mesh = mind_jax.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded_model, _ = mind_jax.load_pretrained(hf_checkpoints["llama3.1-gqa"][0], mesh=mesh,
                                              rules="train", progress=False)
  engine = Engine(sharded_model, tokenizer, EngineConfig(slots=4, max_len=64), mesh=mesh,
                  rules="train")
  assert engine.state.cache.k[0].sharding.spec[:2] == (("data", "fsdp"), "tensor")
  sharded = engine.generate_all(requests)
  assert [r.token_ids for r in sharded] == [r.token_ids for r in single]
  with pytest.raises(mind_jax.MindJaxError, match=r"slots=2 must be a multiple of the mesh's batch axes \(4\)"):
    Engine(sharded_model, tokenizer, EngineConfig(slots=2, max_len=64), mesh=mesh, rules="train")
