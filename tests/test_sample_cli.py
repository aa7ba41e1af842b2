"""python -m mind_jax.sample: JSON output, exact ids, chat formatting, one-line errors."""

import json

import pytest

from mind_jax import sample


@pytest.fixture(scope="module")
def checkpoint(hf_checkpoints):
  return hf_checkpoints["llama3.1-gqa"][0]


def run(capsys, *args):
  code = sample.main(list(args))
  out = capsys.readouterr()
  return code, out.out, out.err


def test_json_output_per_prompt_in_order(checkpoint, capsys):
  code, out, err = run(capsys, "--model", checkpoint, "--prompt-ids", "5,6,7",
                       "--prompt", "x^2 + 1", "--max-new-tokens", "6", "--temperature", "0",
                       "--ignore-eos", "--json", "--dtype", "float32")
  assert code == 0
  records = [json.loads(line) for line in out.strip().splitlines()]
  assert [r["prompt_ids"] for r in records] == [[5, 6, 7], [256] + list(b"x^2 + 1")]
  for record in records:
    assert set(record) == {"prompt_ids", "token_ids", "text", "finish_reason"}
    assert len(record["token_ids"]) == 6 and record["finish_reason"] == "length"


def test_same_seed_same_sample_and_chat_template(checkpoint, capsys):
  args = ["--model", checkpoint, "--chat", "--prompt", "hi", "--max-new-tokens", "8",
          "--seed", "7", "--top-p", "0.9", "--top-k", "40", "--json", "--ignore-eos"]
  first = json.loads(run(capsys, *args)[1])
  assert json.loads(run(capsys, *args)[1]) == first
  other = json.loads(run(capsys, *[("8" if a == "7" else a) for a in args])[1])
  assert other["token_ids"] != first["token_ids"]  # the seed is really used
  # The chat template wraps the message in header tokens and opens the assistant turn.
  assert first["prompt_ids"][:2] == [256, 258] and first["prompt_ids"][-2:] == [10, 10]


def test_bad_prompts_print_one_line_each_and_others_finish(checkpoint, capsys):
  code, out, err = run(capsys, "--model", checkpoint, "--prompt-ids", "1,2",
                       "--prompt-ids", "1,2,999", "--max-new-tokens", "3", "--json")
  assert code == 1
  assert err.strip().splitlines()[-1] == \
      "error: prompt 1: token id 999 is outside the vocabulary (0..299)"
  records = [json.loads(line) for line in out.strip().splitlines()]
  assert records[0]["finish_reason"] != "error" and records[1]["finish_reason"] == "error"


def test_missing_model_directory(tmp_path, capsys):
  code, _, err = run(capsys, "--model", str(tmp_path / "none"), "--prompt", "hi")
  assert code == 2
  assert err.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'none'}: model directory "
                                                 "does not exist")
  code, _, err = run(capsys, "--model", str(tmp_path), "--prompt-ids", "1,x")
  assert code == 2


def test_the_engine_is_sized_from_the_prompts():
  from mind_jax import config, preset
  from mind_jax.engine import Request, SamplingParams
  from mind_jax.sample import SampleConfig, engine_config
  from mind_jax.sharding import one_device_mesh
  cfg = config.load_config(SampleConfig, None, ["sampling.max_new_tokens=256"])
  model_config = preset("tiny")
  params = SamplingParams(max_new_tokens=256)
  # 64 prompts of 64-256 tokens: a slot each, room for the longest + 256, one prefill program.
  similar = [Request(i, [1] * (64 + 3 * i), params) for i in range(64)]
  engine = engine_config(cfg, similar, model_config, one_device_mesh())
  assert (engine.slots, engine.max_len, engine.steps_per_call) == (64, 512, 16)
  assert engine.prefill_buckets == (256,)
  # One long prompt among short ones: padding all to it would more than double the prefill.
  spread = [Request(0, [1] * 1000, params)] + [Request(i, [1] * 10, params) for i in range(1, 9)]
  engine = engine_config(cfg, spread, model_config, one_device_mesh())
  assert engine.prefill_buckets is None and engine.max_len == 2048 and engine.slots == 9
  # What the user sets wins.
  cfg = config.load_config(SampleConfig, None, ["engine.slots=4", "engine.max_len=600",
                                                "engine.prefill_buckets=[128,512]",
                                                "engine.kv_dtype=int8"])
  engine = engine_config(cfg, similar, model_config, one_device_mesh())
  assert (engine.slots, engine.max_len, engine.prefill_buckets) == (4, 600, (128, 512))
  assert engine.cache_dtype == "int8"
