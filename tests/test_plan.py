"""`python -m mind_jax.plan`: jobs compiled for TPU slices by the real TPU compiler, on CPU.

The compiler comes with the libtpu wheel (`pip install 'mind_jax[tpu]'`, in the test extra);
where it is absent these tests are skipped, saying so.
"""

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import shlex

import pytest

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # tests may run beside another libtpu user

from mind_jax import MindJaxError  # noqa: E402
from mind_jax.plan import main, plan  # noqa: E402
from mind_jax.planning import format_plan, parse_topology  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="the TPU compiler (libtpu) is not installed: "
                                  "pip install 'mind_jax[tpu]'")

# Widths that are multiples of 128, so the TPU lays arrays out without padding and the
# compiler's argument bytes are the arithmetic ones.
ARCH = dict(vocab_size=1024, hidden_size=512, intermediate_size=2048, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, head_dim=128,
            max_position_embeddings=1024)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  """A config.json only: plan reads no weights."""
  import transformers
  path = tmp_path_factory.mktemp("arch")
  transformers.LlamaConfig(**ARCH).save_pretrained(path)
  return str(path)


def _args(config_path, *overrides, topology="v5e-4", job=None, **flags):
  import argparse
  return argparse.Namespace(config=config_path, overrides=list(overrides), topology=topology,
                            num_slices=flags.get("num_slices", 1), job=job,
                            preset=flags.get("preset"), tokens=flags.get("tokens"), mfu=0.45,
                            mbu=0.6, price=flags.get("price"), cache=flags.get("cache"))


# Compile results kept in the repository (see test_shipped_configs.py), for the tests whose
# programs are large and whose point is not the compile itself; the others compile here, so
# that reading the compiler's results stays tested.
RECORDED = str(pathlib.Path(__file__).parent / "tpu_compiles")


def _yaml(tmp_path, text) -> str:
  path = tmp_path / "job.yaml"
  path.write_text(text)
  return str(path)


def _params(arch) -> int:
  d, f, L, v, hd = (arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"],
                    arch["vocab_size"], arch["head_dim"])
  attention = d * hd * (arch["num_attention_heads"] * 2 + arch["num_key_value_heads"] * 2)
  return 2 * v * d + L * (attention + 3 * d * f + 2 * d) + d


def _train_yaml(tmp_path, model_dir):
  return _yaml(tmp_path, f"""
model: {{path: {model_dir}, dtype: float32}}
mesh: {{axes: {{data: 1, fsdp: -1, tensor: 1}}, rules: train}}
batch_size: 8
steps: 100
data: {{seq_len: 128}}
""")


@needs_libtpu
def test_a_train_plan_agrees_with_arithmetic(tmp_path, model_dir):
  p = plan(_args(_train_yaml(tmp_path, model_dir), topology="v5e-4", price=1.2))
  n, chips, tokens = _params(ARCH), 4, 8 * 128
  assert p["model"]["parameters"] == n and p["chips"] == chips and p["fits"]
  # fsdp over 4 chips: every matrix is split 4 ways, the norms are whole on every chip.
  norms = (2 * ARCH["num_hidden_layers"] + 1) * ARCH["hidden_size"]
  weights = 4 * ((n - norms) // chips + norms)
  assert p["memory"]["weights"] == weights
  # mu, nu, and scalars: step counts and the injected hyperparameters (learning rate, betas...)
  assert 2 * weights <= p["memory"]["optimizer_state"] <= 2 * weights + 64
  # The compiler's inputs are exactly the state and the batch.
  compiled = p["programs"]["train_step"]
  assert compiled["total_bytes_per_chip"] >= weights * 3
  # 6 FLOPs per parameter per token (the embedding lookup has none; attention is small here).
  textbook = 6 * (n - ARCH["vocab_size"] * ARCH["hidden_size"]) * tokens
  assert abs(p["step"]["compiler_flops"] / textbook - 1) < 0.10
  # The predicted step: its model FLOPs (the textbook count plus causal attention's,
  # 6 x layers x sequence x heads' width per token, as MFU counts them) at the assumed 45% of
  # the 4 chips' peak, 197 TFLOP/s each (v5e, bf16).
  width = ARCH["num_attention_heads"] * ARCH["head_dim"]
  model_flops = textbook + 6 * ARCH["num_hidden_layers"] * 128 * width * tokens
  assert math.isclose(p["step"]["model_flops"], model_flops)
  assert math.isclose(p["step"]["predicted_seconds"], model_flops / (chips * 197e12 * 0.45))
  assert p["budget"]["tokens"] == 100 * tokens
  assert math.isclose(p["budget"]["hours"], 100 * p["step"]["predicted_seconds"] / 3600)
  assert math.isclose(p["budget"]["chip_hours"], p["budget"]["hours"] * chips)
  assert math.isclose(p["budget"]["cost"], p["budget"]["chip_hours"] * 1.2)


@needs_libtpu
def test_a_generate_plan_agrees_with_arithmetic(tmp_path, model_dir):
  path = _yaml(tmp_path, f"""
model: {{path: {model_dir}, dtype: float32}}
mesh: {{axes: {{data: 1, fsdp: 1, tensor: 1}}}}
engine: {{slots: 64, steps_per_call: 4}}
sampling: {{context_limit: 256}}
chunking: {{max_tokens: 32}}
""")
  p = plan(_args(path, "mesh.axes.data=-1", topology="v6e-8", tokens=1e6))
  n = _params(ARCH)
  assert p["engines"] == 1 and p["mesh"]["data"] == 8 and p["fits"]
  assert p["memory"]["weights"] == 4 * n  # replicated over data
  # KV cache: 64 slots over 8 chips, keys and values, every layer, fp32.
  per_chip = 2 * ARCH["num_hidden_layers"] * (64 // 8) * ARCH["num_key_value_heads"] * 256 * ARCH["head_dim"] * 4
  assert p["memory"]["kv_cache"] == per_chip
  # One decode step: 2 FLOPs per parameter per token for the slots on a chip (the head
  # included; the embedding lookup has none); attention over a short window is small.
  decode = p["programs"]["decode"]["flops_per_chip"]
  textbook = 2 * (n - ARCH["vocab_size"] * ARCH["hidden_size"]) * 64 / 8
  assert abs(decode / textbook - 1) < 0.10
  assert p["budget"]["tokens"] == 1e6 and p["step"]["predicted_tokens_per_second"] > 0



def test_a_donated_input_that_the_output_overwrites_is_counted_once():
  """x -> 2x + 1 on a 1024 x 1024 float32 (4 MiB), compiled for this machine. With x donated
  the compiler writes the output over it (jax's memory analysis reports the 4 MiB aliased):
  the program holds one 4 MiB buffer. Without donation it holds the input and the output."""
  import jax
  import jax.numpy as jnp

  from mind_jax.planning._compile import compile_program
  x, mib = jax.ShapeDtypeStruct((1024, 1024), jnp.float32), 2 ** 20
  mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
  for donate, buffers in ((True, 1), (False, 2)):
    lowered = jax.jit(lambda a: a * 2 + 1, donate_argnums=0 if donate else ()).lower(x)
    memory = lowered.compile().memory_analysis()
    assert memory.alias_size_in_bytes == (4 * mib if donate else 0)
    rest = memory.temp_size_in_bytes + memory.generated_code_size_in_bytes
    assert compile_program("step", lowered, mesh).total_bytes == buffers * 4 * mib + rest

def test_job_lengths_come_from_the_config_and_the_papers_or_a_runs_conversations(tmp_path):
  from mind_jax.mind import GenerateConfig
  from mind_jax.planning._lengths import job_lengths
  def with_(section, **keys):
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=keys)})
  cfg = GenerateConfig()  # 500-token chunks, seven styles, context_first, sharing on
  cfg = with_("sampling", max_new_tokens=None)  # as the shipped configs: the paper's lengths
  paper = job_lengths(cfg)
  # A chunk and 200 tokens of instruction and template; the chunk shared by the 7 styles;
  # the paper's two stated styles (452, 630) and five at its mean (540).
  assert (paper.prompt, paper.shared_prefix, paper.sharers) == (700, 500, 7)
  assert paper.output == pytest.approx((452 + 630 + 5 * 540) / 7)
  squares = 452 ** 2 + 630 ** 2 + 5 * 540 ** 2
  assert paper.output_weighted == pytest.approx(squares / (7 * paper.output))
  # 64-token pages, 16 steps per call: the prefix's 7 whole pages held once per chunk; its own
  # 252 prompt tokens, half its conversation, a call's steps, half a page, a reserve page.
  assert paper.held_tokens(64, 16) == pytest.approx(
      448 / 7 + 252 + paper.output_weighted / 2 + 16 + 32 + 64)
  assert paper.read_tokens(64) == pytest.approx(700 + paper.output_weighted / 2 + 32)
  assert paper.prefill_tokens() == pytest.approx(700 - 500 * 6 / 7)
  alone = job_lengths(with_("prompt", order="instruction_first"))
  assert (alone.shared_prefix, alone.sharers, alone.prefill_tokens()) == (0, 1, 700)
  capped = job_lengths(with_("sampling", max_new_tokens=48))  # the generate default's cap
  assert capped.output == capped.output_weighted == 48
  (tmp_path / "part-00000-000000.jsonl").write_text("".join(
      json.dumps({"id": str(i), "output_tokens": n, "finish_reason": reason}) + "\n"
      for i, (n, reason) in enumerate([(100, "eos"), (300, "eos"), (0, "error")])))
  run = job_lengths(cfg, records=str(tmp_path))
  assert (run.output, run.output_weighted) == (200, 250) and str(tmp_path) in run.source
  with pytest.raises(MindJaxError, match=r"--records .*: no conversations there"):
    job_lengths(cfg, records=str(tmp_path / "empty"))


@needs_libtpu
def test_a_generate_plan_counts_the_pages_sequences_hold_not_rows_at_the_context_limit(
    tmp_path, model_dir):
  path = _yaml(tmp_path, f"""
model: {{path: {model_dir}, dtype: float32}}
mesh: {{axes: {{data: -1, fsdp: 1, tensor: 1}}}}
engine: {{slots: 64, steps_per_call: 4, kv_memory: 8MiB}}
sampling: {{context_limit: 1024, max_new_tokens: null}}
chunking: {{max_tokens: 64}}
""")
  p = plan(_args(path, topology="v5e-4", tokens=1e6, cache=RECORDED))
  assert p["fits"] and p["mesh"]["data"] == 4
  pages, step, lengths = p["pages"], p["step"], p["assumptions"]["lengths"]
  # Keys and values of 2 layers, 1 kv head of 128, fp32; 8 MiB per chip of 64-token pages.
  token_bytes = 2 * ARCH["num_hidden_layers"] * ARCH["num_key_value_heads"] * ARCH["head_dim"] * 4
  assert pages["pool_bytes_per_chip"] == p["memory"]["kv_cache"] == 8 * 2 ** 20
  assert pages["pool_tokens"] == 4 * 8 * 2 ** 20 // token_bytes
  # 8 MiB per chip holds 4 sequences at the context limit, 16 over the 4 chips: a planner
  # that reserved a row per slot would stop there. Sequences hold their lengths' pages.
  rows_at_the_limit = 4 * 8 * 2 ** 20 // (1024 * token_bytes)
  held = lengths["prompt"] - 64 + 64 / 7 + lengths["output_weighted"] / 2 + 4 + 32 + 64
  assert pages["held_tokens_per_sequence"] == pytest.approx(held)
  assert step["sequences_at_once"] == pages["pool_tokens"] / 4 // held * 4  # whole per shard
  assert step["sequences_at_once"] > 1.5 * rows_at_the_limit
  # A step reads the sequences' contexts (prefix included, in whole pages), not the pool.
  read = step["sequences_at_once"] * (lengths["prompt"] + lengths["output_weighted"] / 2 + 32)
  assert pages["kv_bytes_read_per_step_per_chip"] == pytest.approx(read * token_bytes / 4)
  # A float32 pool is not the paged kernel's (it reads bfloat16): XLA gathers the pages in the
  # one-step program, so the compiler's count holds them already.
  assert step["decode_bytes_per_step_per_chip"] == p["programs"]["decode"]["bytes_accessed_per_chip"]
  # The chunk's 64 tokens prefilled once for 7 styles: 6/7 of them saved.
  assert pages["prefill_tokens_saved_by_sharing"] == pytest.approx(64 * 6 / 7)
  assert (step["prompt_buckets"], step["suffix_buckets"]) == ([512], [256])
  assert "decode at once (bound by the pool)" in format_plan(p)


@needs_libtpu
def test_per_chip_activations_do_not_grow_with_the_fsdp_axis(tmp_path, model_dir):
  """One sequence per chip on 4 and on 16 chips: the same activations per chip. (Left to XLA,
  the output head was computed with the whole global batch on every chip under fsdp.)"""
  temps = {}
  for topology, chips in (("v5e-4", 4), ("v5e-16", 16)):
    p = plan(_args(_train_yaml(tmp_path, model_dir), f"batch_size={chips}", "data.seq_len=512",
                   topology=topology, cache=RECORDED))
    temps[chips] = p["memory"]["activations_and_temporaries"]
  assert temps[16] < 1.5 * temps[4], temps


@needs_libtpu
def test_a_multi_slice_plan_spans_the_slices_with_the_data_axis(tmp_path, model_dir):
  p = plan(_args(_train_yaml(tmp_path, model_dir), topology="v5e-4", num_slices=2))
  assert (p["chips"], p["hosts"], p["fits"]) == (8, 2, True)
  assert p["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}  # fsdp within a slice, data across


@needs_libtpu
def test_a_generate_plan_on_a_multi_host_slice_compares_engines_per_host_and_over_the_slice(
    tmp_path, model_dir):
  path = _yaml(tmp_path, f"""
model: {{path: {model_dir}, dtype: bfloat16}}
mesh: {{axes: {{data: 4, fsdp: 1, tensor: 1}}}}
engine: {{slots: 16, steps_per_call: 4}}
sampling: {{context_limit: 256}}
chunking: {{max_tokens: 32}}
""")
  p = plan(_args(path, "engine.hosts=1", topology="v5e-16", cache=RECORDED))
  assert (p["engines"], p["engine_chips"], p["mesh"]["data"]) == (4, 4, 4)
  per_host, whole = p["modes"]
  assert per_host["engine_hosts"] == 1 and whole["engine_hosts"] == -1
  assert whole["engines"] == 1 and whole["mesh"] == {"data": 16, "fsdp": 1, "tensor": 1}
  assert per_host["fits"] and whole["fits"]
  # The plan picks: the fastest mode that fits (per host: no decode step crosses hosts).
  assert per_host["predicted_tokens_per_second"] > whole["predicted_tokens_per_second"]
  assert p["choice"]["overrides"] == "engine.hosts=1 mesh.axes={data: 4, fsdp: 1, tensor: 1}"
  assert "the fastest that fits: engine.hosts=1 mesh.axes={data: 4" in format_plan(p)


@needs_libtpu
def test_a_program_that_does_not_fit_says_by_how_much_and_what_to_change(tmp_path, model_dir, capsys):
  path = _train_yaml(tmp_path, model_dir)
  # 2 layers at 1024 x 1024 x 8192 sequences per chip is far above a v5e chip's 16 GiB.
  code = main(["--config", path, "--topology", "v5e-4", "batch_size=4096", "data.seq_len=1024",
               "--json"])
  out = json.loads(capsys.readouterr().out)
  assert code == 1 and out["fits"] is False
  assert out["total_bytes_per_chip"] > out["memory"]["capacity_bytes_per_chip"]
  assert any(a.startswith("microbatches=") for a in out["advice"])


@needs_libtpu
def test_a_state_larger_than_the_chip_is_advised_more_chips_only(capsys):
  """Llama-3.1-8B training on one v5e chip: fp32 weights and two Adam moments are 12 bytes for
  each of its 8,030,261,248 parameters, 89.75 GiB against 16. Fewer activations (microbatches,
  remat) cannot fit that, so they are not offered."""
  code = main(["--config", str(ROOT / "configs" / "train-llama3.1-8b.yaml"), "--topology",
               "v5e-1", "--preset", "llama3.1-8b", "--json"])
  out = json.loads(capsys.readouterr().out)
  assert code == 1 and out["fits"] is False
  state_gib = 8_030_261_248 * 12 / 2 ** 30
  assert f"{state_gib:.2f}" == "89.75"
  assert out["advice"] == [
      "the weights and optimizer state alone are 89.75 GiB per chip of 16: only more chips on "
      "the fsdp axis can fit it (a larger slice, or mesh.axes.fsdp over more of this one)"]


@needs_libtpu
def test_json_output_and_exit_status(tmp_path, model_dir, capsys):
  assert main(["--config", _train_yaml(tmp_path, model_dir), "--topology", "v4-8", "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["fits"] is True and out["total_bytes_per_chip"] > 0
  assert out["chip"]["chips_per_host"] == 4 and out["topology"] == "v4-8"


@needs_libtpu
def test_an_unchanged_program_is_read_from_the_plan_cache_and_a_changed_one_compiled(
    tmp_path, model_dir, capsys, monkeypatch):
  from mind_jax.planning import _cache, _compile
  cache, config = str(tmp_path / "cache"), _train_yaml(tmp_path, model_dir)

  def run(*extra):
    assert main(["--config", config, "--topology", "v5e-4", "--json", "--no-exact-cost",
                 "--cache", cache, *extra]) == 0
    return json.loads(capsys.readouterr().out)
  real, made = _compile._compiled, []
  monkeypatch.setattr(_compile, "_compiled", lambda *a: made.append(real(*a)) or made[-1])
  first = run()
  assert len(os.listdir(cache)) == 1 and not first["programs"]["train_step"]["cached"]
  # From here a compile is counted, not run (the TPU compiler takes half a minute a program):
  # what is under test is whether the cache asks for one.
  compiles = []
  monkeypatch.setattr(_compile, "_compiled", lambda name, lowered: compiles.append(name) or
                      dataclasses.replace(made[0], name=name))
  again = run("--mfu", "0.3")  # other assumptions, the same program
  assert compiles == [] and again["programs"]["train_step"]["cached"]
  assert again["memory"] == first["memory"]
  assert again["step"]["compiler_flops"] == first["step"]["compiler_flops"]
  run("batch_size=16")  # another program
  assert len(compiles) == 1 and len(os.listdir(cache)) == 2
  monkeypatch.setattr(_cache, "_version", lambda package: "another")  # another compiler
  run()
  assert len(compiles) == 2
  run("--no-cache")
  assert len(compiles) == 3 and len(os.listdir(cache)) == 3
  for entry in os.listdir(cache):  # an unreadable entry is compiled over
    (pathlib.Path(cache) / entry).write_text("{")
  assert not run()["programs"]["train_step"]["cached"] and len(compiles) == 4
  for entry in pathlib.Path(cache).iterdir():  # as is one of fields the code no longer reads
    if entry.read_text() != "{":  # the one the last run wrote again
      stored = json.loads(entry.read_text())
      entry.write_text(json.dumps({**stored, "result": {**stored["result"], "vmem_bytes": 0}}))
  assert not run()["programs"]["train_step"]["cached"] and len(compiles) == 5


def test_topology_names_as_users_type_them():
  assert (parse_topology("v5p-128").chips, parse_topology("v5p-128").hosts) == (64, 16)
  assert (parse_topology("v6e-8").chips, parse_topology("v6e-8").hosts) == (8, 1)
  assert (parse_topology("v5e-256").chips, parse_topology("v5e-256").hosts) == (256, 64)
  assert parse_topology("v4-32").topology_name == "v4:2x2x4"
  assert parse_topology("v5litepod-16").name == "v5e-16"
  # A per-host job compiles for one host: a whole topology of that host's chips.
  assert parse_topology("v5e-16").host_slice().name == "v5e-4"
  assert parse_topology("v5p-128").host_slice().name == "v5p-8"
  assert parse_topology("v6e-8").host_slice().name == "v6e-8"


def test_bad_input_is_one_line_each(tmp_path, model_dir, monkeypatch):
  with pytest.raises(MindJaxError, match=r"--topology v7-8: unknown TPU slice; known: v4-8, .*v6e-256"):
    parse_topology("v7-8")
  path = _train_yaml(tmp_path, model_dir)
  if importlib.util.find_spec("libtpu") is not None:
    with pytest.raises(MindJaxError, match=r"mesh.axes: .* needs 8 devices but 4 are available"):
      plan(_args(path, "mesh.axes.fsdp=8", topology="v5e-4"))
  import builtins
  real_import = builtins.__import__

  def no_libtpu(name, *args, **kwargs):
    if name == "libtpu":
      raise ImportError(name)
    return real_import(name, *args, **kwargs)
  monkeypatch.setattr(builtins, "__import__", no_libtpu)
  with pytest.raises(MindJaxError, match=r"libtpu.*not installed: pip install 'mind_jax\[tpu\]'"):
    plan(_args(path, topology="v5e-4"))


def test_plan_reads_a_stage_of_a_recipe_config(tmp_path):
  from mind_jax.plan import job_kind, load_job
  from mind_jax.planning import devices, parse_topology
  path = tmp_path / "recipe.yaml"
  path.write_text("train: {steps: 7, batch_size: 4}\nvariants:\n"
                  "  - {name: raw, train: {data: {sources: [{path: '@corpus'}]}}}\n"
                  "  - {name: mind, train: {steps: 9, data: {sources: [{path: '@conversations'}]}}}\n")
  with pytest.raises(MindJaxError, match=r"a recipe config; pass --job generate or --job train"):
    job_kind(str(path), None)
  pytest.importorskip("libtpu", reason="the TPU compiler: pip install 'mind_jax[tpu]'")
  chips = devices(parse_topology("v5e-4"))
  assert load_job(str(path), [], "train", None, chips)[0].steps == 7  # the first variant's
  assert load_job(str(path), [], "train", None, chips, "mind")[0].steps == 9
  with pytest.raises(MindJaxError, match=r"--variant nope: not a variant of .* \(raw, mind\)"):
    load_job(str(path), [], "train", None, chips, "nope")


def test_the_help_examples_name_what_their_configs_need():
  """Each example in --help loads its job on this machine (shipped configs name checkpoints
  that are not here, so an example without --preset would stop at once)."""
  import jax
  import mind_jax.plan as plan_cli
  text = plan_cli.__doc__.replace("\\\n", " ")
  examples = [shlex.split(line)[3:] for line in text.splitlines()
              if line.strip().startswith("python -m mind_jax.plan --config")]
  assert len(examples) == 4
  for argv in examples:
    args = plan_cli._parser().parse_args(argv)
    job = plan_cli.job_kind(str(ROOT / args.config), args.job)
    cfg, _ = plan_cli.load_job(str(ROOT / args.config), args.overrides, job, args.preset,
                               jax.devices(), args.variant)
    assert cfg.model.path is None or os.path.isdir(cfg.model.path) or args.preset, argv


def test_topologies_lists_each_slice_with_its_chips_hosts_and_chip_figures(capsys):
  """`--topologies` alone prints the known slices, each with Cloud TPU's published figures:
  v5p-128 is 64 chips on 16 hosts of 4 (95 GiB, 459 bf16 TFLOP/s, 2765 GB/s per chip),
  v5e-256 is 256 chips on 64 hosts (16 GiB, 197 TFLOP/s, 819 GB/s), v6e-8 is 8 chips on one
  host (32 GiB, 918 TFLOP/s, 1640 GB/s)."""
  assert main(["--topologies"]) == 0
  rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
  assert {"v4-8", "v5e-1", "v5p-1024", "v6e-256"} <= set(rows)
  # slice, chips, layout, hosts, chips per host, HBM, "GiB", TFLOP/s, GB/s
  assert rows["v5p-128"][1:2] + rows["v5p-128"][3:] == ["64", "16", "4", "95", "GiB", "459", "2765"]
  assert rows["v5e-256"][1:2] + rows["v5e-256"][3:] == ["256", "64", "4", "16", "GiB", "197", "819"]
  assert rows["v6e-8"][1:2] + rows["v6e-8"][3:] == ["8", "1", "8", "32", "GiB", "918", "1640"]


@needs_libtpu
def test_the_mfu_a_token_budget_and_no_exact_cost_given_on_the_command_line_reach_a_train_plan(
    tmp_path, model_dir, capsys):
  """--mfu 0.3: the predicted step is its model FLOPs at 30% of the 4 chips' peak (v5e:
  197 TFLOP/s each). --tokens 2e6: the budget is 2e6 tokens, not steps x batch x sequence.
  --no-exact-cost with scanned layers: the compiler counts the layer loop's body once, so
  the step's FLOPs are one layer short of the textbook count of both."""
  path = _train_yaml(tmp_path, model_dir)
  assert main(["--config", path, "--topology", "v5e-4", "--mfu", "0.3", "--tokens", "2e6",
               "--no-exact-cost", "model.scan_layers=true", "--json"]) == 0
  p = json.loads(capsys.readouterr().out)
  n, tokens, width = _params(ARCH), 8 * 128, ARCH["num_attention_heads"] * ARCH["head_dim"]
  model_flops = (6 * (n - ARCH["vocab_size"] * ARCH["hidden_size"]) * tokens
                 + 6 * ARCH["num_hidden_layers"] * 128 * width * tokens)
  assert math.isclose(p["step"]["predicted_seconds"], model_flops / (4 * 197e12 * 0.3))
  assert p["assumptions"]["mfu"] == 0.3
  assert p["budget"]["tokens"] == 2e6
  assert math.isclose(p["budget"]["hours"], 2e6 / tokens * p["step"]["predicted_seconds"] / 3600)
  d, f, hd = ARCH["hidden_size"], ARCH["intermediate_size"], ARCH["head_dim"]
  layer = d * hd * 2 * (ARCH["num_attention_heads"] + ARCH["num_key_value_heads"]) + 3 * d * f
  one_layer_short = 6 * (n - ARCH["vocab_size"] * d - layer) * tokens
  assert abs(p["step"]["compiler_flops"] / one_layer_short - 1) < 0.10, p["step"]


@needs_libtpu
def test_a_generate_plan_takes_its_lengths_from_records_and_its_decode_time_from_the_mbu(
    tmp_path, model_dir, capsys):
  """--records DIR: the conversations there (100 and 300 tokens; the error record left out)
  set the output lengths, 200 on average and 250 weighted by length, and with them the pages
  a sequence holds. --mbu 0.3: a decode step takes the longer of its FLOPs at 45% of the
  chip's peak and its bytes at 30% of its bandwidth (v5e: 197 TFLOP/s, 819 GB/s); here the
  bytes."""
  records = tmp_path / "run"
  records.mkdir()
  (records / "part-00000-000000.jsonl").write_text("".join(
      json.dumps({"id": str(i), "output_tokens": n, "finish_reason": reason}) + "\n"
      for i, (n, reason) in enumerate([(100, "eos"), (300, "eos"), (0, "error")])))
  path = _yaml(tmp_path, f"""
model: {{path: {model_dir}, dtype: float32}}
mesh: {{axes: {{data: -1, fsdp: 1, tensor: 1}}}}
engine: {{slots: 64, steps_per_call: 4}}
sampling: {{context_limit: 1024, max_new_tokens: null}}
chunking: {{max_tokens: 64}}
""")
  assert main(["--config", path, "--topology", "v5e-4", "--mbu", "0.3", "--records",
               str(records), "--tokens", "1e6", "--no-exact-cost", "--json"]) == 0
  p = json.loads(capsys.readouterr().out)
  lengths, step = p["assumptions"]["lengths"], p["step"]
  assert (lengths["output"], lengths["output_weighted"]) == (200, 250)
  # The chunk's prompt less its 64 shared tokens, the shared ones over 7 styles, half the
  # conversation, a call's 4 steps, half a 64-token page and a reserve page.
  held = lengths["prompt"] - 64 + 64 / 7 + 250 / 2 + 4 + 32 + 64
  assert p["pages"]["held_tokens_per_sequence"] == pytest.approx(held)
  compute = p["programs"]["decode"]["flops_per_chip"] / (197e12 * 0.45)
  memory = step["decode_bytes_per_step_per_chip"] / (819e9 * 0.3)
  assert memory > compute
  assert step["predicted_decode_step_seconds"] == pytest.approx(memory)
  assert p["assumptions"]["mbu"] == 0.3


KERNEL = '''
import jax
from jax.experimental import pallas as pl


def double(x_ref, o_ref):
  o_ref[...] = x_ref[...] * {factor}


def program(x):
  return pl.pallas_call(double, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype))(x)
'''


@needs_libtpu
def test_a_kernel_is_the_same_program_wherever_its_source_is_installed(tmp_path):
  """A Pallas kernel's serialized body carries its Python file's path (where jax is
  installed): the same kernel from another venv or checkout has the same key."""
  import importlib.util

  import jax
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  from mind_jax.planning import devices
  from mind_jax.planning._cache import program_key
  chips = devices(parse_topology("v5e-4"))[:1]
  mesh = Mesh(np.array(chips), ("x",))
  x = jax.ShapeDtypeStruct((8, 128), np.float32, sharding=NamedSharding(mesh, PartitionSpec()))

  def key(where, factor=2):
    path = tmp_path / where / "kernel.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(KERNEL.format(factor=factor))
    spec = importlib.util.spec_from_file_location(f"kernel_{where}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lowered = jax.jit(module.program).trace(x).lower(lowering_platforms=("tpu",))
    assert "tpu_custom_call" in lowered.as_text() and str(path) in _kernel_text(lowered)
    return program_key(lowered, mesh)
  assert key("venv-a/site-packages") == key("checkout-b/somewhere/else")
  assert key("venv-a/site-packages") != key("venv-a/site-packages", factor=3)


def _kernel_text(lowered) -> str:
  import base64
  import re
  # The body, and the locations that newer jax serializes apart from it.
  blobs = re.findall(r'\\22(?:body|debug_locations)\\22: \\22([A-Za-z0-9+/=]+)', lowered.as_text())
  return "".join(base64.b64decode(blob).decode("latin-1") for blob in blobs)
