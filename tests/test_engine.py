"""The engine: greedy tokens equal transformers' generate; stops, seeds, slots, bad input."""

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
  for slots, steps in [(1, 1), (8, 3), (2, 8)]:
    engine = Engine(model, tokenizer, EngineConfig(slots=slots, max_len=64, steps_per_call=steps,
                                                   seed=123))
    order = list(range(len(prompts)))[::-1] if slots == 2 else range(len(prompts))
    results = engine.generate_all(Request(f"r{i}", prompts[i], params) for i in order)
    runs.append({r.id: r.token_ids for r in results})
  assert runs[0] == runs[1] == runs[2]
  other_seed = Engine(model, tokenizer, EngineConfig(slots=8, max_len=64, seed=124))
  changed = {r.id: r.token_ids for r in other_seed.generate_all(
      Request(f"r{i}", p, params) for i, p in enumerate(prompts))}
  assert changed != runs[0]


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


def test_cache_size_is_reported_and_an_impossible_cache_fails_clearly(loaded):
  model, tokenizer = loaded["llama3.1-gqa"]
  engine = Engine(model, tokenizer, EngineConfig(slots=4, max_len=64))
  per_slot, total = engine.cache_bytes()
  # 2 layers x 64 positions x 2 kv heads x 16 dims x (k + v) x 4 bytes
  assert per_slot == 2 * 64 * 2 * 16 * 2 * 4 and total == 4 * per_slot
  with pytest.raises(mind_jax.MindJaxError, match=r"use fewer slots \(about \d+ fit at "
                                                  r"max_len=1000000000\) or a shorter max_len"):
    Engine(model, tokenizer, EngineConfig(slots=1024, max_len=10**9))


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
