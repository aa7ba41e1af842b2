"""Evaluation: the JAX backend scores like the harness's own HF model; offline tasks; CHAMP scoring."""

import json
import os

import numpy as np
import pytest

from conftest import make_hf_checkpoint
from mind_jax.config import load_config
from mind_jax.evaluation import EvaluateConfig, evaluate
from mind_jax.evaluation._champ import is_right, process_results
from mind_jax.testing import multiple_choice_task

def task_yaml(name: str, data, body: str) -> str:
  """An lm-eval task reading the JSONL file `data`, defined by `body` (YAML)."""
  return (f"task: {name}\ndataset_path: json\n"
          f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(data))}}}}}\n"
          f"test_split: test\n{body}")


ROLLING_YAML = """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{page}}"
metric_list:
  - {metric: word_perplexity}
  - {metric: byte_perplexity}
  - {metric: bits_per_byte}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  make_hf_checkpoint(root / "model")
  # A tokenizer that adds BOS on encode, as Llama's do, so the backends' BOS handling counts.
  from tokenizers.processors import TemplateProcessing
  from mind_jax.text import byte_tokenizer
  tokenizer = byte_tokenizer().hf
  tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
      single=f"{tokenizer.bos_token} $A", special_tokens=[(tokenizer.bos_token, tokenizer.bos_token_id)])
  tokenizer.save_pretrained(str(root / "model"))
  tasks = root / "tasks"
  tasks.mkdir()
  rs = np.random.RandomState(0)
  with open(tasks / "rolling.jsonl", "w") as f:
    for i in range(3):  # longer than the model's 256 positions: several rolling windows
      f.write(json.dumps({"page": " ".join(f"word{rs.randint(50)}" for _ in range(90 + 20 * i))})
              + "\n")
  multiple_choice_task(str(tasks), "tiny_mc", questions=6)
  (tasks / "tiny_rolling.yaml").write_text(
      task_yaml("tiny_rolling", tasks / "rolling.jsonl", ROLLING_YAML))
  return root


def run(setup, backend, *extra, out=None):
  out = out or setup / f"out-{backend}-{len(extra)}"
  cfg = load_config(EvaluateConfig, None, [
      f"model={setup / 'model'}", f"out={out}", f"backend={backend}", "batch_size=4",
      f"tasks_dir=[{json.dumps(str(setup / 'tasks'))}]", *extra])
  return evaluate(cfg), out


def samples(out, task):
  with open(os.path.join(out, "samples", f"{task}.jsonl")) as f:
    return sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
  """Offline as a TPU VM without hub access is: hub variables set, sockets refused."""
  mp = pytest.MonkeyPatch()
  for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    mp.setenv(name, "1")
  mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
  # And the network blocked: any connection attempt from this process fails the test.
  import socket

  def refuse(self, address, *args, **kwargs):
    raise AssertionError(f"network access attempted: {address}")

  mp.setattr(socket.socket, "connect", refuse)
  mp.setattr(socket.socket, "connect_ex", refuse)
  yield
  mp.undo()


def test_the_jax_backend_scores_like_the_harness_hf_model(setup):
  tasks = "tasks=[tiny_mc,tiny_rolling,champ]"
  hf, hf_out = run(setup, "hf", tasks, "limit=4", "num_fewshot=1")
  jax, jax_out = run(setup, "jax", tasks, "limit=4", "num_fewshot=1")
  # Multiple choice: every choice's log-likelihood and greedy flag.
  for a, b in zip(samples(hf_out, "tiny_mc"), samples(jax_out, "tiny_mc"), strict=True):
    ours = np.array([r[0][0] for r in b["resps"]])
    theirs = np.array([r[0][0] for r in a["resps"]])
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]]
  # Rolling log-likelihood over several windows of the 256-token context.
  for a, b in zip(samples(hf_out, "tiny_rolling"), samples(jax_out, "tiny_rolling"), strict=True):
    np.testing.assert_allclose(b["resps"][0][0], a["resps"][0][0], atol=1e-4)
  # Generation with a few-shot example: the same text.
  generated = [(a["filtered_resps"], b["filtered_resps"])
               for a, b in zip(samples(hf_out, "champ"), samples(jax_out, "champ"), strict=True)]
  assert all(x == y for x, y in generated) and any(x[0].strip() for x, _ in generated)
  for task in ("tiny_mc", "champ"):
    assert {k: v for k, v in hf["results"][task].items() if "," in k} == \
        {k: v for k, v in jax["results"][task].items() if "," in k}
  assert "| tiny_mc | acc |" in (jax_out / "results.md").read_text()


def test_outside_a_git_checkout_nothing_about_git_is_printed(setup, tmp_path, monkeypatch,
                                                             capfd):
  """The harness asks git for the working directory's commit; outside a checkout git's
  "fatal: not a git repository" reached the terminal. The record says None instead."""
  monkeypatch.chdir(tmp_path)
  results, _ = run(setup, "jax", "tasks=[tiny_mc]", "limit=2")
  assert "fatal" not in capfd.readouterr().err
  assert results["git_hash"] is None


def test_champ_scores_right_and_wrong_answers():
  assert process_results({"answer": "239"}, [" 239"]) == {"exact_match": 1.0}
  assert process_results({"answer": "239"}, [" 240"]) == {"exact_match": 0.0}
  assert is_right(" $252$.", "C(10, 5), or equivalently 252")
  assert not is_right(" 10", "C(10, 5), or equivalently 252")
  assert is_right(" n = 1", "n=1") and not is_right(" n = 2", "n=1")
  # The answer is the first line; what the model writes after it (working, a next problem
  # that the stop sequences missed) is not part of it.
  assert is_right(" 239\nsince 240 - 1 = 239 and 17 is prime", "239")
  assert not is_right(" 240\n239", "239")


def test_bad_input_is_one_line_before_anything_runs(setup, tmp_path, monkeypatch):
  import shutil
  from mind_jax import MindJaxError
  from mind_jax.evaluation import _run
  (tmp_path / "empty").mkdir()
  with pytest.raises(MindJaxError, match=r"--model=\S+/empty: no weights"):
    evaluate(load_config(EvaluateConfig, None, [f"model={tmp_path / 'empty'}",
                                                f"out={tmp_path / 'o'}"]))
  # Weights cut short in the copy: named before the harness (a minute of set-up) starts.
  cut = shutil.copytree(setup / "model", tmp_path / "cut")
  weights = cut / "model.safetensors"
  size = weights.stat().st_size
  with open(weights, "r+b") as f:
    f.truncate(size - 100)
  with monkeypatch.context() as m:
    m.setattr(_run, "task_manager", lambda *a: pytest.fail("the harness started"))
    with pytest.raises(MindJaxError, match=rf"\S+/cut/model.safetensors: truncated "
                       rf"\({size - 100} bytes where its header describes {size}\)"):
      evaluate(load_config(EvaluateConfig, None, [f"model={cut}", f"out={tmp_path / 'o'}"]))
  with pytest.raises(MindJaxError, match=r"--tasks: unknown task 'no_such_task'"):
    run(setup, "jax", "tasks=[no_such_task]")
  missing = tmp_path / "tasks"
  missing.mkdir()
  os.remove(multiple_choice_task(str(missing), "gone", questions=1).replace(".yaml", ".jsonl"))
  with pytest.raises(MindJaxError, match=r"gone.yaml: task gone: data file \S+/gone.jsonl does "
                     r"not exist"):
    evaluate(load_config(EvaluateConfig, None, [f"model={setup / 'model'}", f"out={tmp_path / 'o'}",
                                                "tasks=[gone]", f"tasks_dir=[{missing}]"]))


def test_a_harness_too_old_is_named(monkeypatch):
  import lm_eval
  from mind_jax import MindJaxError
  from mind_jax.evaluation._run import check_harness
  monkeypatch.setattr(lm_eval, "__version__", "0.4.2")
  with pytest.raises(MindJaxError, match=r"lm-eval 0.4.2 is too old"):
    check_harness()


def test_compare_puts_runs_side_by_side_with_deltas(tmp_path, capsys):
  from mind_jax.evaluate import main
  for name, acc in (("raw", 0.25), ("mind", 0.5)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "results.json").write_text(json.dumps({"results": {"gsm8k": {
        "alias": "gsm8k", "exact_match,strict-match": acc, "exact_match_stderr,strict-match": 0.1}}}))
  assert main(["compare", str(tmp_path / "raw"), str(tmp_path / "mind"), "--out",
               str(tmp_path / "cmp")]) == 0
  table = capsys.readouterr().out
  assert "| gsm8k | exact_match (strict-match) | 0.2500 +- 0.1000 | 0.5000 +- 0.1000 (+0.2500) |" in table
  assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
  assert main(["compare", str(tmp_path / "raw"), str(tmp_path / "nothing")]) == 2



def test_compare_keeps_a_metric_only_a_later_run_has(tmp_path):
  """The baseline was evaluated on gsm8k alone, the second run on gsm8k and arc_easy: the
  table has arc_easy's row too, with "-" under the baseline and no delta."""
  from mind_jax.evaluation import compare
  runs = {"raw": {"gsm8k": {"exact_match,none": 0.25}},
          "mind": {"gsm8k": {"exact_match,none": 0.5}, "arc_easy": {"acc,none": 0.6}}}
  for name, results in runs.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / "results.json").write_text(json.dumps({"results": results}))
  table = compare([str(tmp_path / "raw"), str(tmp_path / "mind")])
  assert table.splitlines()[2:] == ["| arc_easy | acc | - | 0.6000 |",
                                    "| gsm8k | exact_match | 0.2500 | 0.5000 (+0.2500) |"]


def test_a_continuation_is_greedy_only_when_every_token_is_the_models_top_choice(setup):
  """The harness's is_greedy (behind multiple choice's greedy accuracy, for one): every token
  of the continuation is the model's argmax given what precedes it. The model's own 4-token
  greedy continuation, found with transformers, is greedy; the same with its last token
  swapped for the runner-up is not, though its first 3 tokens are still top choices. The
  log-likelihoods are transformers' too."""
  import torch
  import transformers

  from mind_jax.evaluation._jax_lm import JaxLM
  reference = transformers.AutoModelForCausalLM.from_pretrained(str(setup / "model")).eval()
  context = [256, *b"Problem. 2 + 2 ="]  # BOS, then bytes (the byte tokenizer's ids)
  ids = list(context)
  with torch.no_grad():
    for _ in range(4):
      last = reference(torch.tensor([ids])).logits[0, -1]
      ids.append(int(last.argmax()))
    logprobs = torch.log_softmax(reference(torch.tensor([ids])).logits[0], -1).numpy()
  greedy = ids[len(context):]
  runner_up = int(last.topk(2).indices[1])  # the second choice for the 4th token
  changed = [*greedy[:-1], runner_up]
  # Token j of the continuation is predicted at position len(context) - 1 + j.
  at = [len(context) - 1 + j for j in range(4)]
  expected_greedy = sum(logprobs[p, t] for p, t in zip(at, greedy))
  expected_changed = expected_greedy - logprobs[at[3], greedy[3]] + logprobs[at[3], runner_up]

  lm = JaxLM(str(setup / "model"), batch_size=4)
  (ll_greedy, is_greedy), (ll_changed, changed_is_greedy) = lm._loglikelihood_tokens(
      [(None, context, greedy), (None, context, changed)], disable_tqdm=True)
  assert is_greedy and not changed_is_greedy
  np.testing.assert_allclose([ll_greedy, ll_changed], [expected_greedy, expected_changed],
                             atol=1e-4)

def test_prepared_local_data_runs_the_harness_tasks_offline(setup, tmp_path):
  """gsm8k and arc_easy as the harness defines them, on files in their hub schemas."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  from mind_jax.evaluate import main
  source = tmp_path / "files"
  (source / "gsm8k").mkdir(parents=True)
  rows = [{"question": f"Tom has {i} apples and buys 2 more. How many now?",
           "answer": f"He has {i} + 2 = {i + 2} apples.\n#### {i + 2}"} for i in range(12)]
  for split, part in (("train", rows[:9]), ("test", rows[9:])):
    with open(source / "gsm8k" / f"{split}-00000-of-00001.jsonl", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in part)
  (source / "arc_easy").mkdir()
  arc = pa.table({"id": ["a", "b", "c"], "question": ["Which is a mammal?"] * 3,
                  "choices": [{"text": ["cat", "fish", "frog"], "label": ["A", "B", "C"]}] * 3,
                  "answerKey": ["A", "A", "A"]})
  for split in ("train", "validation", "test"):
    pq.write_table(arc, source / "arc_easy" / f"{split}-00000-of-00001.parquet")
  for subject in ("abstract_algebra", "philosophy"):  # a STEM subject and another
    (source / "mmlu" / subject).mkdir(parents=True)
    table = pa.table({"question": [f"{subject} question {i}?" for i in range(6)],
                      "subject": [subject] * 6, "choices": [["w", "x", "y", "z"]] * 6,
                      "answer": [i % 4 for i in range(6)]})
    for split in ("dev", "validation", "test"):
      pq.write_table(table, source / "mmlu" / subject / f"{split}-00000-of-00001.parquet")
  assert main(["prepare", str(source), "--data-dir", str(tmp_path / "data")]) == 0
  # The paper's suite over what was prepared, with its few-shot counts.
  suite, _ = run(setup, "jax", "tasks=[mind]", f"data_dir={tmp_path / 'data'}", "limit=1",
                 "tasks_dir=[]")
  assert {"gsm8k", "mind_mmlu", "mind_mmlu_stem", "mind_reasoning", "arc_easy"} <= set(
      suite["results"])
  assert suite["n-shot"]["gsm8k"] == 8 and suite["n-shot"]["mmlu_abstract_algebra"] == 5
  from mind_jax.evaluation import results_table
  paper = results_table(suite).split("As in the MIND paper's table")[1]
  assert "| GSM8K | MATH | MMLU-STEM | MMLU | General reasoning |" in paper
  assert paper.strip().splitlines()[-1].count("| -") == 1  # MATH was not prepared
  results, out = run(setup, "jax", "tasks=[gsm8k,arc_easy]", f"data_dir={tmp_path / 'data'}",
                     "num_fewshot=1", "limit=2", "tasks_dir=[]")
  assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(results["results"]["gsm8k"])
  assert "acc,none" in results["results"]["arc_easy"]
  prompt = samples(out, "gsm8k")[0]["arguments"][0][0]
  assert prompt.startswith("Question: Tom has") and "#### " in prompt  # the harness's own format
  from mind_jax import MindJaxError
  with pytest.raises(MindJaxError, match=r"unknown task 'race': not prepared in \S+/data"):
    run(setup, "jax", "tasks=[race]", f"data_dir={tmp_path / 'data'}", "tasks_dir=[]")


def test_the_suite_on_the_hub_tasks_is_indexed_with_its_few_shot_counts(tmp_path):
  """Without a data directory `mind` names the harness's own tasks (loading them would
  download their data, so only the index is checked here)."""
  import lm_eval
  import yaml
  from mind_jax.evaluation._local import hub_suite_tasks, write_suite
  from lm_eval.tasks import TaskManager
  builtin = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
  tasks = hub_suite_tasks(builtin)
  assert len([t for t in tasks if t.startswith("mmlu_")]) == 57 and "minerva_math_algebra" in tasks
  write_suite(str(tmp_path), tasks, builtin)
  manager = TaskManager(include_path=[str(tmp_path)])
  assert {"mind", "mind_mmlu", "mind_mmlu_stem", "mind_math", "mind_reasoning"} <= set(
      manager.all_tasks)
  assert set(tasks) <= set(manager.all_tasks)  # every leaf is a real harness task
  stem = yaml.safe_load((tmp_path / "mind_mmlu_stem.yaml").read_text())
  assert len(stem["task"]) == 19 and all(e["num_fewshot"] == 5 for e in stem["task"])


# --- the keys of EvaluateConfig, each against a reference outside mind_jax ------------------------

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def choice_scores(out, task="tiny_mc"):
  """[documents, choices] of the log-likelihoods the run wrote to its samples."""
  return np.array([[r[0][0] for r in s["resps"]] for s in samples(out, task)])


def torch_scores(model, out, task="tiny_mc", softmax_dtype=None):
  """The same requests scored by a transformers model: BOS, the context's bytes and the
  continuation's (the byte tokenizer's ids), the continuation's log-probabilities summed.
  `softmax_dtype` None: in float32; else in the model's dtype, as the harness's HF model."""
  import torch
  scores = []
  for sample in samples(out, task):
    row = []
    for context, continuation in sample["arguments"]:
      ids = [256, *context.encode(), *continuation.encode()]
      n = len(continuation.encode())
      with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
        logprobs = torch.log_softmax(logits if softmax_dtype else logits.float(), -1)
      picked = torch.stack([logprobs[len(ids) - n - 1 + j, ids[len(ids) - n + j]]
                            for j in range(n)])
      row.append(float(picked.sum()))
    scores.append(row)
  return np.array(scores)


def test_dtype_bfloat16_scores_in_bfloat16_on_both_backends(setup, tmp_path):
  """The hf backend: exactly transformers' bfloat16 model, scored as the harness's HF model
  scores (log-softmax in the model's dtype). The jax backend: the float32 model's scores to
  within bfloat16's precision, and not the float32 scores themselves (the jax backend's
  float32 scores equal transformers' to 1e-5)."""
  import torch
  import transformers
  hf_out, jax_out = tmp_path / "hf", tmp_path / "jax"
  run(setup, "hf", "tasks=[tiny_mc]", "limit=2", "dtype=bfloat16", out=hf_out)
  run(setup, "jax", "tasks=[tiny_mc]", "limit=2", "dtype=bfloat16", out=jax_out)
  bf16 = transformers.AutoModelForCausalLM.from_pretrained(
      str(setup / "model"), dtype=torch.bfloat16).eval()
  np.testing.assert_allclose(choice_scores(hf_out),
                             torch_scores(bf16, hf_out, softmax_dtype=torch.bfloat16), atol=1e-5)
  fp32 = transformers.AutoModelForCausalLM.from_pretrained(str(setup / "model")).eval()
  difference = np.abs(choice_scores(jax_out) - torch_scores(fp32, jax_out)).max()
  assert 5e-4 < difference < 0.02, difference


def test_tensor_2_splits_the_weights_over_two_devices_and_scores_as_transformers(
    setup, tmp_path, monkeypatch):
  import jax
  import transformers
  from flax import nnx

  from mind_jax.evaluation._jax_lm import JaxLM
  made, init = [], JaxLM.__init__

  def keep(self, *args, **kwargs):
    init(self, *args, **kwargs)
    made.append(self)
  monkeypatch.setattr(JaxLM, "__init__", keep)
  out = tmp_path / "out"
  run(setup, "jax", "tasks=[tiny_mc]", "limit=2", "tensor=2", out=out)
  weights = jax.tree.leaves(nnx.state(made[0].model, nnx.Param))
  assert {len(w.sharding.device_set) for w in weights} == {2}
  # Heads and MLP columns split: some weights hold half their values on each device.
  assert any(w.addressable_shards[0].data.size == w.size // 2 for w in weights)
  reference = transformers.AutoModelForCausalLM.from_pretrained(str(setup / "model")).eval()
  np.testing.assert_allclose(choice_scores(out), torch_scores(reference, out), atol=1e-4)


def test_quantize_int8_scores_as_a_numpy_dequantization_of_the_checkpoint(setup, tmp_path):
  """Every projection and the (untied) head quantized in numpy, per output channel at
  absmax / 127, multiplied back out into transformers' float model: its scores are the int8
  run's, and differ from the float model's."""
  import torch
  import transformers
  out = tmp_path / "out"
  run(setup, "jax", "tasks=[tiny_mc]", "limit=2", "quantize=int8", out=out)
  float_model = transformers.AutoModelForCausalLM.from_pretrained(str(setup / "model")).eval()
  reference = transformers.AutoModelForCausalLM.from_pretrained(str(setup / "model")).eval()
  with torch.no_grad():
    for name, p in reference.named_parameters():
      if name.split(".")[-2] in PROJECTIONS or name == "lm_head.weight":
        w = p.numpy()
        scale = np.abs(w).max(axis=1) / 127
        values = np.clip(np.round(w / scale[:, None]), -127, 127)
        p.copy_(torch.from_numpy((values * scale[:, None]).astype(np.float32)))
  np.testing.assert_allclose(choice_scores(out), torch_scores(reference, out), atol=1e-4)
  assert np.abs(choice_scores(out) - torch_scores(float_model, out)).max() > 1e-3


SAMPLED_YAML = """output_type: generate_until
doc_to_text: "Problem. {{question}}\\nAnswer:"
doc_to_target: " {{answer}}"
generation_kwargs: {until: ["\\n\\n"], do_sample: true, temperature: 1.0, max_gen_toks: 8}
metric_list:
  - {metric: exact_match, aggregation: mean, higher_is_better: true}
"""


def test_a_seed_picks_the_few_shot_examples_and_the_sampled_answers(
    setup, tmp_path):
  """One-shot multiple choice and a task sampled at temperature 1 (8 tokens of a random
  model): seeds 1 and 2 draw other few-shot examples, and other samples for every document
  (both documents' prompts are the same under the two seeds: only the sampling seed can
  change their samples). Both seeds are not the default, so a seed that never reaches the
  harness or the engine makes the two runs alike."""
  tasks = tmp_path / "tasks"
  tasks.mkdir()
  with open(tasks / "sampled.jsonl", "w") as f:
    for i in range(2):
      f.write(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n")
  (tasks / "tiny_sampled.yaml").write_text(
      task_yaml("tiny_sampled", tasks / "sampled.jsonl", SAMPLED_YAML))

  def drawn(name, seed):
    out = tmp_path / name
    results, _ = run(setup, "jax", "tasks=[tiny_mc,tiny_sampled]", "limit=2", "num_fewshot=1",
                     f"tasks_dir=[{json.dumps(str(setup / 'tasks'))},{json.dumps(str(tasks))}]",
                     f"seed={seed}", out=out)
    return ([s["arguments"][0][0] for s in samples(out, "tiny_mc")],
            [s["arguments"][0][0] for s in samples(out, "tiny_sampled")],
            [s["resps"][0][0] for s in samples(out, "tiny_sampled")],
            results["config"]["fewshot_seed"])

  (shots_1, prompts_1, texts_1, seed_1), (shots_2, prompts_2, texts_2, seed_2) = (
      drawn("one", 1), drawn("two", 2))
  assert shots_1 != shots_2, shots_1
  assert prompts_1 == prompts_2
  assert all(a != b for a, b in zip(texts_1, texts_2, strict=True)), (texts_1, texts_2)
  assert (seed_1, seed_2) == (1, 2)  # as the harness records it


def test_overwrite_replaces_an_evaluation_made_with_other_settings_and_keeps_the_users_files(
    setup, tmp_path):
  from mind_jax import MindJaxError
  tasks, out = tmp_path / "tasks", tmp_path / "out"
  tasks.mkdir()
  multiple_choice_task(str(tasks), "mc_a", questions=2)
  multiple_choice_task(str(tasks), "mc_b", questions=2, seed=1)
  keys = [f"tasks_dir=[{json.dumps(str(tasks))}]", "limit=2"]
  run(setup, "jax", "tasks=[mc_a,mc_b]", *keys, out=out)
  (out / "notes.txt").write_text("mine")
  assert sorted(os.listdir(out / "samples")) == ["mc_a.jsonl", "mc_b.jsonl"]
  with pytest.raises(MindJaxError, match=r"written with other settings: tasks .*--overwrite"):
    run(setup, "jax", "tasks=[mc_a]", *keys, out=out)
  results, _ = run(setup, "jax", "tasks=[mc_a]", *keys, "overwrite=true", out=out)
  # What the first evaluation wrote is gone (mc_b's samples with it), the user's file stays.
  assert os.listdir(out / "samples") == ["mc_a.jsonl"]
  assert set(json.load(open(out / "results.json"))["results"]) == {"mc_a"}
  assert (out / "notes.txt").read_text() == "mine"


def test_a_training_workdir_given_as_the_model_is_read_from_its_hf_export(setup, tmp_path):
  """model= a directory whose run.json says mind_jax.train wrote it: its hf/ export is
  evaluated; before the export exists, one line says so."""
  import shutil

  from mind_jax import MindJaxError
  from mind_jax.evaluation import resolve_model
  workdir = tmp_path / "train"
  workdir.mkdir()
  (workdir / "run.json").write_text(json.dumps({"job": "train", "settings": {}}))
  with pytest.raises(MindJaxError, match=r"--model=\S+/train: a training workdir with no hf/"):
    resolve_model(str(workdir))
  shutil.copytree(setup / "model", workdir / "hf")
  assert resolve_model(str(workdir)) == str(workdir / "hf")
