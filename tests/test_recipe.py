"""python -m mind_jax.recipe: the stages of one experiment, shared generation, resume after a
kill, a changed filter redoing only what reads it, and bad input refused before anything runs."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import pytest

from mind_jax import MindJaxError
from mind_jax.experiment import load, plan, run
from mind_jax.experiment import _stages
from mind_jax.experiment._kinds import KINDS

KILLED_IN_TRAINING = os.path.join(os.path.dirname(__file__), "helpers",
                                  "recipe_killed_in_training.py")
CONVERSATIONS = "{data: {sources: [{path: '@conversations'}]}}"


def recipe(workdir, *overrides):
  """The embedded default recipe, in `workdir`."""
  return load(overrides=[f"workdir={workdir}", *overrides])


def names(stages):
  return [s.name for s in stages]


# --- the plan -----------------------------------------------------------------------------------


def test_the_default_plan_generates_once_for_the_mind_variant_and_trains_both(tmp_path):
  stages = {s.name: s for s in plan(recipe(tmp_path))}
  assert list(stages) == ["generate", "filter", "dataset-report", "train/raw", "train/mind",
                          "evaluate/raw", "evaluate/mind", "compare"]
  assert stages["train/raw"].after == []  # raw text: it reads no conversations
  assert stages["train/mind"].after == ["filter"]
  mind = stages["train/mind"].config
  assert mind.data.sources[0].path == str(tmp_path / "filter")
  assert mind.workdir == str(tmp_path / "train" / "mind")
  assert stages["train/raw"].config.data.sources[0].path == "champ"  # @corpus: generate's input
  assert stages["evaluate/mind"].config.model == str(tmp_path / "train" / "mind" / "hf")


def test_a_config_file_replaces_the_embedded_default(tmp_path):
  path = tmp_path / "mine.yaml"
  path.write_text("workdir: exp\ngenerate: {input: {source: corpus.jsonl}}\n")
  mine = load(str(path))
  # Keys the file leaves out take each command's own defaults, not the demo's small ones.
  assert mine.evaluate.limit is None and mine.train.steps == 200
  assert [v.name for v in mine.variants] == ["raw", "mind"]
  assert load().evaluate.limit == 40 and load().train.steps == 60


def test_variants_needing_the_same_conversations_share_their_generation(tmp_path):
  variants = ("variants=[{name: raw, train: {data: {sources: [{path: '@corpus'}]}}},"
              f"{{name: mind, train: {CONVERSATIONS}}},"
              "{name: longest, train: {data: {sources: [{path: '@conversations', "
              "select: longest_per_chunk}]}}},"
              f"{{name: chunk200, generate: {{chunking: {{max_tokens: 200}}}}, train: {CONVERSATIONS}}},"
              f"{{name: strict, filter: {{min_tokens: 80}}, train: {CONVERSATIONS}}}]")
  stages = {s.name: s for s in plan(recipe(tmp_path, variants))}
  assert [n for n in stages if n.startswith(("generate", "filter"))] == [
      "generate", "generate-chunk200", "filter", "filter-chunk200", "filter-strict"]
  assert stages["generate"].variants == ["mind", "longest", "strict"]
  assert stages["filter"].variants == ["mind", "longest"]
  assert stages["filter-strict"].after == ["generate"]  # another filter of the same generation
  assert stages["generate-chunk200"].config.chunking.max_tokens == 200
  assert stages["generate-chunk200"].config.output.dir == str(tmp_path / "generate-chunk200")
  assert stages["train/chunk200"].after == ["filter-chunk200"]


def test_fingerprints_do_not_depend_on_where_the_workdir_is(tmp_path):
  here, there = plan(recipe(tmp_path / "a")), plan(recipe(tmp_path / "b"))
  assert [s.fingerprint for s in here] == [s.fingerprint for s in there]


def test_a_changed_filter_setting_redoes_the_filter_and_what_reads_it(tmp_path):
  stages = plan(recipe(tmp_path))
  for stage in stages:
    _stages.write_record(str(tmp_path), stage, {"fingerprint": stage.fingerprint, "done": True,
                                                "settings": _stages.flatten(stage.settings)})
  assert set(_stages.decide(str(tmp_path), stages).values()) == {"skip"}
  decisions = _stages.decide(str(tmp_path), plan(recipe(tmp_path, "filter.min_tokens=80")))
  assert decisions == {"generate": "skip", "filter": "redo", "dataset-report": "redo",
                       "train/raw": "skip", "train/mind": "redo", "evaluate/raw": "skip",
                       "evaluate/mind": "redo", "compare": "redo"}
  # A setting that changes how a stage runs, not what it writes, redoes nothing.
  decisions = _stages.decide(str(tmp_path), plan(recipe(tmp_path, "train.mesh.axes.data=1",
                                                         "generate.engine.slots=4")))
  assert set(decisions.values()) == {"skip"}



def test_records_of_the_version_before_the_marks_are_kept(tmp_path):
  """Before the config's marks, generate's fingerprint held model.remat, scan_layers and
  attention, and not engine.kv_dtype: other fingerprints, the same settings."""
  stages = plan(recipe(tmp_path))
  old = {}
  for stage in stages:
    settings = _stages.flatten(stage.settings)
    if stage.kind == "generate":
      del settings["engine.kv_dtype"]
      settings.update({"model.remat": "none", "model.scan_layers": None, "model.attention": "auto"})
    settings.update({f"after.{a}": old[a] for a in stage.after})
    old[stage.name] = stage.fingerprint[::-1]
    _stages.write_record(str(tmp_path), stage, {"fingerprint": old[stage.name], "done": True,
                                                "settings": settings})
  assert set(_stages.decide(str(tmp_path), stages).values()) == {"skip"}
  # A key the old record lacks, set to other than its default then, is a change.
  decisions = _stages.decide(str(tmp_path), plan(recipe(tmp_path, "generate.engine.kv_dtype=int8")))
  assert decisions["generate"] == decisions["train/mind"] == "redo"
  assert decisions["train/raw"] == "skip"


def test_new_weights_at_the_same_model_path_redo_the_training_that_starts_from_them(tmp_path):
  """A path does not say what a local checkpoint holds: train's fingerprint covers the model
  directory's content. New weights at train.model.path redo train/raw, which reads nothing
  upstream that could tell it, and train/mind, while generation (another model) is kept."""
  model = tmp_path / "model"
  model.mkdir()
  (model / "config.json").write_text("{}")
  (model / "model.safetensors").write_bytes(b"the first weights")
  overrides = [f"train.model.path={model}", "train.model.preset=null"]
  workdir = tmp_path / "exp"
  for stage in plan(recipe(workdir, *overrides)):
    _stages.write_record(str(workdir), stage, {"fingerprint": stage.fingerprint, "done": True,
                                               "settings": _stages.flatten(stage.settings)})
  (model / "model.safetensors").write_bytes(b"the second weights")
  decisions = _stages.decide(str(workdir), plan(recipe(workdir, *overrides)))
  assert decisions == {"generate": "skip", "filter": "skip", "dataset-report": "skip",
                       "train/raw": "redo", "train/mind": "redo", "evaluate/raw": "redo",
                       "evaluate/mind": "redo", "compare": "redo"}


def test_the_report_sums_the_tokens_of_every_step(tmp_path):
  """metrics.jsonl has each step's tokens (the loss weights it trained on): the report's total
  is their sum, and its loss curves are drawn against the tokens trained on so far. Three
  steps of 512, 512 and 256 tokens: 1280, at 512, 1024 and 1280."""
  from mind_jax.experiment._report import collect
  cfg = recipe(tmp_path)
  train = next(s for s in plan(cfg) if s.name == "train/raw")
  os.makedirs(train.directory)
  steps = [{"step": 1, "tokens": 512.0, "loss": 5.0},
           {"step": 2, "tokens": 512.0, "loss": 4.0, "eval_loss": 4.5},
           {"step": 3, "tokens": 256.0, "loss": 3.0}]
  with open(os.path.join(train.directory, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(step) + "\n" for step in steps)
  training = collect(str(tmp_path), cfg, [train], {})["training"]["raw"]
  assert (training["steps"], training["tokens"], training["final_loss"]) == (3, 1280, 3.0)
  assert training["curve"] == [(512, 5.0), (1024, 4.0), (1280, 3.0)]
  assert training["eval_curve"] == [(1024, 4.5)] and training["eval_loss"] == 4.5

# --- bad input: one line, before anything runs -------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["variants=[{name: raw, train: {steps: 5, stepz: 6}}]"],
     r"variants\[0\] \(raw\).train.stepz: unknown key"),
    (["variants=[{name: raw, train: {data: {sources: [{path: '@corpus', wieght: 2}]}}}]"],
     r"variants\[0\] \(raw\).train.data.sources.0.wieght: unknown key"),
    (["variants=[{name: raw, trian: {}}]"], r"variants.0.trian: unknown key"),
    (["variants=[{name: a}, {name: b}, {name: a}]"],
     r"variants\[2\].name='a': two variants with the same name \(variants\[0\] too\)"),
    (["variants=[{name: a/b}]"], r"variants\[0\].name='a/b': use letters"),
    (["variants=[]"], r"at least one variant"),
    (["baseline=nope"], r"baseline='nope': not a variant \(raw, mind\)"),
    (["train.workdir=/tmp/elsewhere"], r"train.workdir: set by the recipe"),
    (["variants=[{name: a, generate: {output: {dir: x}}, train: " + CONVERSATIONS + "}]"],
     r"variants\[0\] \(a\).generate.output.dir: set by the recipe"),
    (["variants=[{name: a, train: {data: {sources: [{path: '@filtered'}]}}}]"],
     r"variants \(a\).train.data.sources\[0\].path=@filtered: unknown; the recipe's paths are "
     "@corpus, @generated, @conversations"),
    (["variants=[{name: a, filter: {min_tokens: 9}}]"],
     r"variants \(a\): overrides generate or filter but trains on neither"),
    (["generate.model.path=/no/such/model"], r"generate: model.path=/no/such/model: model directory does not exist"),
    (["variants=[{name: a, train: {data: {sources: [{path: /no/such.jsonl}]}}}]"],
     r"train/a: data.sources\[0\].path: .*/no/such.jsonl"),
])
def test_bad_recipes_are_refused_in_one_line_before_anything_runs(tmp_path, overrides, message):
  workdir = tmp_path / "exp"
  with pytest.raises(MindJaxError, match=message) as error:
    run(recipe(workdir, *overrides))
  assert "\n" not in str(error.value)
  assert not workdir.exists()


def test_a_workdir_holding_something_else_is_refused(tmp_path):
  (tmp_path / "train").mkdir()
  (tmp_path / "train" / "run.json").write_text(json.dumps({"job": "train", "settings": {}}))
  with pytest.raises(MindJaxError, match=r"holds the output of mind_jax.train, not an experiment"):
    run(recipe(tmp_path / "train"))
  other = tmp_path / "other"
  other.mkdir()
  (other / "run.json").write_text(json.dumps({"job": "recipe", "settings": {"experiment": "x"}}))
  with pytest.raises(MindJaxError, match=r"holds the experiment 'x'; continue it with experiment=x"):
    run(recipe(other))
  loose = tmp_path / "loose"
  (loose / "train").mkdir(parents=True)  # a recipe's layout with no record vouching for it
  with pytest.raises(MindJaxError, match=r"no run.json that says mind_jax.recipe wrote them"):
    run(recipe(loose))
  assert sorted(os.listdir(loose)) == ["train"]


def test_stages_run_alone_only_once_their_inputs_are_done(tmp_path):
  with pytest.raises(MindJaxError, match=r"--stages: train/mind reads filter, not done yet"):
    run(recipe(tmp_path / "exp"), only=["train/mind"])
  with pytest.raises(MindJaxError, match=r"--stages: unknown stage 'train/nope'; this "
                     r"experiment's: generate, filter"):
    run(recipe(tmp_path / "exp"), only=["train/nope"])
  assert not (tmp_path / "exp").exists()


def test_on_a_slice_host_0_alone_writes_the_recipes_files(tmp_path, monkeypatch):
  """Started on every host of a slice, the recipe runs a train or generate stage as one job of
  all hosts; only host 0 claims the workdir, records stages and sets a redone stage aside, and
  the hosts meet before a stage's job starts and again before host 0 records it done (a
  host may still be writing its share). (The two-host jobs themselves are tested in test_train
  and test_generate_hosts.)"""
  from mind_jax.experiment import _run
  workdir = tmp_path / "exp"
  met, jobs = [], []
  record_path = workdir / "stages" / "train.raw.json"

  def sync(hosts, why):  # where the hosts meet, and whether the stage was recorded done by then
    met.append((why, record_path.exists() and json.loads(record_path.read_text())["done"]))
  monkeypatch.setattr(_run, "sync_hosts", sync)

  def as_host(host, *overrides, only=("train/raw",)):
    monkeypatch.setattr(_run, "_hosts", lambda stages: (host, 2))

    def job(stage, context):  # the training job (every host takes part; host 0 writes its files)
      jobs.append(host)
      if host == 0:
        (workdir / "train" / "raw").mkdir(parents=True, exist_ok=True)
      return {}
    monkeypatch.setattr(KINDS["train"], "run", job)
    return run(recipe(workdir, *overrides), only=list(only))

  assert as_host(1) == {"train/raw": "ran"} and jobs == [1]
  assert not workdir.exists()
  assert [why for why, _ in met] == ["stages decided", "train/raw set up", "train/raw finished"]
  met.clear()
  as_host(0)
  assert met == [("stages decided", False), ("train/raw set up", False),
                 ("train/raw finished", False)]
  record = (workdir / "stages" / "train.raw.json").read_text()
  assert json.loads(record)["done"]
  assert (workdir / "run.json").exists() and (workdir / "recipe.yaml").exists()
  assert as_host(1, "train.steps=61") == {"train/raw": "redone"}  # host 1 moves nothing
  assert not (workdir / "superseded").exists()
  assert (workdir / "stages" / "train.raw.json").read_text() == record
  as_host(0, "train.steps=61")
  assert len(os.listdir(workdir / "superseded")) == 1
  with pytest.raises(MindJaxError, match=r"^filter, dataset-report: single-host stages, and this "
                     r"run spans 2 hosts; run them on one host"):
    as_host(0, only=("generate", "filter", "dataset-report"))


def test_a_preempted_training_stops_the_recipe_with_the_stage_not_done(tmp_path, monkeypatch):
  """SIGTERM (a spot VM's notice) makes training save and return early: the recipe must not
  call that stage done (nor go on to evaluate an unfinished model); a rerun resumes it."""
  from mind_jax import training
  workdir = tmp_path / "exp"
  monkeypatch.setattr(training, "run", lambda cfg: {"workdir": cfg.workdir, "start_step": 0,
                                                    "stopped_at": 7, "preempted": True})
  assert run(recipe(workdir), only=["train/raw", "evaluate/raw"]) == {"train/raw": "preempted"}
  assert not json.loads((workdir / "stages" / "train.raw.json").read_text())["done"]
  assert _stages.decide(str(workdir), plan(recipe(workdir)))["train/raw"] == "resume"


# --- end to end ---------------------------------------------------------------------------------


def _recipe(workdir, *overrides, helper=None):
  command = [sys.executable, *(helper or ["-m", "mind_jax.recipe"]), f"workdir={workdir}",
             *overrides]
  return subprocess.run(command, capture_output=True, text=True)


def _report_without_timings(workdir):
  text = (workdir / "report" / "report.md").read_text()
  return text.split("## Time per stage")[0]


def _fingerprint(workdir, record):
  return json.loads((workdir / "stages" / f"{record}.json").read_text())["fingerprint"]


def _mtimes(*directories):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for directory in directories for d, _, files in os.walk(directory) for f in files}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("recipe") / "exp"
  done = _recipe(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_the_default_recipe_runs_every_stage_and_reports_both_variants(default_run):
  for path in ["generate/manifest-00000.json", "filter/filter-summary.json",
               "filter/report/report.html", "train/raw/hf/model.safetensors",
               "train/mind/hf/model.safetensors", "train/mind/metrics.jsonl",
               "evaluate/raw/results.json", "evaluate/mind/results.json",
               "report/index.html", "report/report.md", "report/loss.png", "recipe.yaml"]:
    assert (default_run / path).exists(), path
  records = {p.stem: json.loads(p.read_text()) for p in (default_run / "stages").glob("*.json")}
  assert len(records) == 8 and all(r["done"] for r in records.values())
  report = json.loads((default_run / "report" / "report.json").read_text())
  assert list(report["training"]) == ["raw", "mind"]
  assert report["training"]["mind"]["steps"] == 60
  assert set(report["evaluation"]) == {"raw", "mind"}
  markdown = (default_run / "report" / "report.md").read_text()
  assert "| task | metric | raw | mind |" in markdown and "| champ | exact_match |" in markdown
  page = (default_run / "report" / "index.html").read_text()
  assert page.count("data:image/png;base64,") == 2 and "<td>mind</td>" in page
  assert '<a href="../filter/report/report.html">' in page  # the dataset report, from report/
  assert (default_run / "report" / "../filter/report/report.html").exists()


@pytest.mark.slow
def test_on_two_hosts_generate_and_train_run_as_slice_jobs_and_one_host_goes_on(default_run,
                                                                                 tmp_path):
  """Started on both hosts of a slice (two JAX processes here, 4 CPU devices each), generation
  runs an engine per host on its share and training one program over both hosts' 8 devices;
  host 0 records each stage once both have finished it, and a single-host run then finds the
  two stages done and goes on from them."""
  import socket

  from mind_jax.mind import part_files, read_records
  workdir = tmp_path / "exp"
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  hosts = [subprocess.Popen(
      [sys.executable, "-m", "mind_jax.recipe", f"workdir={workdir}", "--stages",
       "generate,train/raw"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  for host in hosts:
    _, err = host.communicate(timeout=600)
    assert host.returncode == 0, err[-3000:]

  def records(directory):
    return sorted((r for p in part_files(str(directory)) for r in read_records(p)),
                  key=lambda r: r["id"])
  # Each host's engine wrote its share; together, the single-host run's dataset.
  ours = records(workdir / "generate")
  assert ours == records(default_run / "generate")
  assert {os.path.basename(p).split("-")[1] for p in part_files(str(workdir / "generate"))} \
      == {"00000", "00001"}
  generate = json.loads((workdir / "stages" / "generate.json").read_text())
  assert generate["done"] and generate["attempts"] == 1
  assert generate["summary"]["units_written"] == len(ours)  # the slice's, not host 0's share
  train = json.loads((workdir / "stages" / "train.raw.json").read_text())
  assert train["done"] and train["devices"] == 8 and train["summary"]["steps"] == 60
  assert (workdir / "train" / "raw" / "hf" / "model.safetensors").exists()
  assert not (workdir / "filter").exists()  # single-host stages were left for one host
  # One host goes on: the slice's stages are done, what reads them runs.
  decisions = _stages.decide(str(workdir), plan(recipe(workdir)))
  assert decisions == {**{name: "run" for name in decisions}, "generate": "skip",
                       "train/raw": "skip"}


def _done_until(default_run, workdir, stage):
  """`workdir` as a recipe leaves it when it stops just before `stage` (in the default plan's
  order): the default run's earlier stages, copied with their records; nothing of the rest."""
  stages = plan(recipe(default_run))
  later = stages[names(stages).index(stage):]
  skipped = {pathlib.Path(s.directory) for s in later} | {
      default_run / "stages" / s.record_path for s in later}
  shutil.copytree(default_run, workdir, ignore=lambda directory, entries: [
      e for e in entries if pathlib.Path(directory, e) in skipped])
  for s in later:  # a parent left empty (evaluate/ without its variants) goes too
    parent = (workdir / pathlib.Path(s.directory).relative_to(default_run)).parent
    if parent != workdir and parent.exists() and not os.listdir(parent):
      parent.rmdir()


@pytest.mark.slow
def test_killed_while_training_the_second_variant_and_rerun(default_run, tmp_path):
  workdir = tmp_path / "exp"
  _done_until(default_run, workdir, "train/mind")  # the stages before it as a recipe left them
  killed = _recipe(workdir, helper=[KILLED_IN_TRAINING, "mind", "25"])
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  record = json.loads((workdir / "stages" / "train.mind.json").read_text())
  assert not record["done"] and not (workdir / "evaluate").exists()
  before = _mtimes(workdir / "generate", workdir / "filter", workdir / "train" / "raw")
  done = _recipe(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  assert _mtimes(workdir / "generate", workdir / "filter", workdir / "train" / "raw") == before
  assert "resuming from" in done.stderr  # training went on from its checkpoint
  assert _report_without_timings(workdir) == _report_without_timings(default_run)


@pytest.mark.slow
def test_a_changed_filter_reruns_filter_and_what_reads_it_only(default_run, tmp_path):
  workdir = tmp_path / "exp"
  shutil.copytree(default_run, workdir)  # copy2: modification times kept
  kept = _mtimes(workdir / "generate", workdir / "train" / "raw", workdir / "evaluate" / "raw")
  redone = _mtimes(workdir / "filter", workdir / "train" / "mind", workdir / "evaluate" / "mind")
  done = _recipe(workdir, "filter.min_tokens=90")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "filter: settings changed: min_tokens (50 -> 90)" in done.stderr
  assert [line.strip() for line in done.stdout.splitlines()
          if re.fullmatch(r"  \S+: (ran|skipped|resumed|redone)", line)] == [
      "generate: skipped", "filter: redone", "dataset-report: redone", "train/raw: skipped",
      "train/mind: redone", "evaluate/raw: skipped", "evaluate/mind: redone", "compare: redone"]
  assert _mtimes(workdir / "generate", workdir / "train" / "raw", workdir / "evaluate" / "raw") == kept
  after = _mtimes(workdir / "filter", workdir / "train" / "mind", workdir / "evaluate" / "mind")
  assert all(after.get(path) != mtime for path, mtime in redone.items() if path in after)
  summary = json.loads((workdir / "filter" / "filter-summary.json").read_text())
  assert summary["config"]["min_tokens"] == 90
  # What was redone is set aside, not deleted (a changed key must not cost a generation).
  assert sorted(n.split(".")[0] for n in os.listdir(workdir / "superseded")) == [
      "compare", "evaluate", "filter", "train"]
  old = json.loads((workdir / "superseded" / f"filter.{_fingerprint(default_run, 'filter')}"
                    / "filter-summary.json").read_text())
  assert old["config"]["min_tokens"] == 50


@pytest.mark.slow
def test_a_full_disk_stops_the_recipe_in_one_line_and_the_rerun_ends_as_an_uninterrupted_one(
    default_run, small_disk):
  """8 MiB holds generation and the filter (done here already, as a recipe leaves them), not
  every file of both trainings: the recipe stops in a training (where exactly depends on the
  sizes of its files), and once the disk grows the rerun finishes what was left."""
  workdir = small_disk(8 * 1024) / "exp"
  _done_until(default_run, workdir, "train/raw")  # generation and the filter, done
  full = _recipe(workdir)
  assert full.returncode == 1, full.stderr[-3000:]
  errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
  assert "Traceback" not in full.stderr and len(errors) == 1, full.stderr[-3000:]
  assert re.search(r"workdir=\S+/train/\w+: [\d.]+ [KM]iB free, but the checkpoint of step \d+ "
                   r"needs about [\d.]+ MiB; (the last complete checkpoint is step \d+|no "
                   r"checkpoint was written yet); free space and rerun|no space left on device "
                   r"writing \S+/train/\w+/\S+ \([\d.]+ [KM]iB free there\); what was completed "
                   r"before is kept; free space and rerun", errors[0]), errors[0]
  records = {p.stem: json.loads(p.read_text()) for p in (workdir / "stages").glob("*.json")}
  assert records["generate"]["done"] and records["filter"]["done"]
  assert not all(r["done"] for name, r in records.items() if name.startswith("train"))
  assert not (workdir / "evaluate").exists()
  small_disk(64 * 1024)
  done = _recipe(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  if "the last complete checkpoint" in errors[0]:
    assert "resuming from" in done.stderr
  assert _report_without_timings(workdir) == _report_without_timings(default_run)
