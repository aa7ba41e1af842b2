"""A full disk: each job stops with one line and exit status 1, keeps what it completed, and the
same command, rerun once there is room, ends as an uninterrupted run does.

The disk is a tmpfs mounted for the test (the suite runs as root on CI); where mounting is not
permitted the tests are skipped, saying so.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest


def _job(name, *args):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  return subprocess.run([sys.executable, "-m", f"mind_jax.{name}", *args], capture_output=True,
                        text=True, env=env)


def _one_line_exit_1(done, pattern):
  import re
  assert done.returncode == 1, done.stderr[-2000:]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and re.search(pattern, errors[0]), done.stderr[-2000:]


TRAIN = ["steps=30", "checkpoint.every=10"]


def test_training_stops_before_a_checkpoint_that_does_not_fit_and_resumes_once_it_does(
    tmp_path, small_disk):
  """The tiny preset's checkpoints are about 1.7 MiB: 3 MiB holds the one of step 10, not the
  one of step 20."""
  disk = small_disk(3 * 1024)
  full = _job("train", *TRAIN, f"workdir={disk / 'w'}")
  _one_line_exit_1(full, r"workdir=\S+/w: [\d.]+ MiB free, but the checkpoint of step 20 needs "
                         r"about [\d.]+ MiB; the last complete checkpoint is step 10; free "
                         r"space and rerun the same command")
  assert sorted(os.listdir(disk / "w" / "checkpoints")) == ["10"]
  small_disk(64 * 1024)
  resumed = _job("train", *TRAIN, f"workdir={disk / 'w'}")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "start_step: 10" in resumed.stdout
  whole = _job("train", *TRAIN, f"workdir={tmp_path / 'whole'}")
  assert whole.returncode == 0, whole.stderr[-2000:]
  from safetensors.numpy import load_file
  a, b = (load_file(str(d / "hf" / "model.safetensors")) for d in (disk / "w", tmp_path / "whole"))
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_training_refuses_to_start_where_not_one_checkpoint_fits(small_disk):
  disk = small_disk(1024)
  full = _job("train", *TRAIN, f"workdir={disk / 'w'}")
  _one_line_exit_1(full, r"the checkpoint of step 10 needs about [\d.]+ MiB; no checkpoint was "
                         r"written yet")
  assert not os.path.exists(disk / "w" / "metrics.jsonl") or not open(
      disk / "w" / "metrics.jsonl").read()  # not one step trained


def _records(out):
  rows = []
  for name in sorted(os.listdir(out)):
    if name.startswith("part-") and name.endswith(".jsonl"):
      with open(out / name) as f:
        rows += [json.loads(line) for line in f]
  return sorted(rows, key=lambda r: r["id"])


def test_generation_on_a_full_disk_keeps_its_parts_and_finishes_on_a_rerun(tmp_path, small_disk):
  args = ["input.limit=2", "output.records_per_part=4"]
  disk = small_disk(24)
  full = _job("generate", *args, f"output.dir={disk / 'g'}")
  _one_line_exit_1(full, r"no space left on device writing \S+/g/(part-\S+\.jsonl|manifest-\d+"
                         r"\.json) \(\d+ KiB free there\); what was completed before is kept")
  assert not [n for n in os.listdir(disk / "g") if n.endswith(".tmp")]  # no partial part file
  small_disk(4 * 1024)
  assert _job("generate", *args, f"output.dir={disk / 'g'}").returncode == 0
  assert _job("generate", *args, f"output.dir={tmp_path / 'whole'}").returncode == 0
  assert _records(disk / "g") == _records(tmp_path / "whole")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  out = tmp_path_factory.mktemp("gen") / "g"
  assert _job("generate", "input.limit=2", f"output.dir={out}").returncode == 0
  return out


def _same_files(a, b, names):
  for name in names:
    with open(a / name, "rb") as x, open(b / name, "rb") as y:
      assert x.read() == y.read(), name


def test_filter_and_report_on_a_full_disk_finish_on_a_rerun(tmp_path, small_disk, generated):
  disk = small_disk(24)
  for job, args, out, same in (
      ("filter", [str(generated), "--out"], "f", ["kept/part-00000-000000.jsonl"]),
      ("report", [str(generated), "--out"], "r", ["report.md"])):
    full = _job(job, *args, str(disk / out))
    _one_line_exit_1(full, rf"no space left on device writing \S+/{out}/\S+ \(\d+ KiB free "
                           r"there\); what was completed before is kept")
    assert not [n for _, _, files in os.walk(disk / out) for n in files if n.endswith(".tmp")]
  small_disk(4 * 1024)
  for job, args, out, same in (
      ("filter", [str(generated), "--out"], "f", ["kept/part-00000-000000.jsonl"]),
      ("report", [str(generated), "--out"], "r", ["report.md"])):
    assert _job(job, *args, str(disk / out)).returncode == 0
    assert _job(job, *args, str(tmp_path / out)).returncode == 0
    _same_files(disk / out, tmp_path / out, same)


def test_convert_refuses_a_checkpoint_that_does_not_fit_before_writing(tmp_path, small_disk):
  from conftest import make_hf_checkpoint
  make_hf_checkpoint(tmp_path / "hf")
  disk = small_disk(24)
  full = _job("convert", str(tmp_path / "hf"), str(disk / "c"))
  _one_line_exit_1(full, r"dst=\S+/c: 24 KiB free, but the orbax checkpoint needs about \d+ "
                         r"KiB; nothing was written; free space and rerun the same command")
  assert not os.path.exists(disk / "c")
  small_disk(4 * 1024)
  assert _job("convert", str(tmp_path / "hf"), str(disk / "c")).returncode == 0
  import jax
  from flax import nnx
  from mind_jax.ckpts import load_pretrained
  ours, _ = load_pretrained(str(disk / "c"), progress=False)
  theirs, _ = load_pretrained(str(tmp_path / "hf"), progress=False)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.state(ours)),
                                                   jax.tree.leaves(nnx.state(theirs))))


def test_a_read_only_remount_is_one_line_and_the_rerun_finishes(tmp_path, small_disk, generated):
  disk = small_disk(4 * 1024)
  (disk / "f").mkdir()
  small_disk(4 * 1024, read_only=True)
  refused = _job("filter", str(generated), "--out", str(disk / "f"))
  _one_line_exit_1(refused, r"out=\S+/f: is not writable \(Read-only file system\); nothing "
                            r"was written; make it writable and rerun the same command")
  small_disk(4 * 1024)
  assert _job("filter", str(generated), "--out", str(disk / "f")).returncode == 0
  assert _job("filter", str(generated), "--out", str(tmp_path / "f")).returncode == 0
  _same_files(disk / "f", tmp_path / "f", ["kept/part-00000-000000.jsonl"])


GCS_DENIED = ('PERMISSION_DENIED: Error writing "gs://bkt/run/checkpoints/20/d/0": HTTP response '
              'code: 403 with body: w@p.iam.gserviceaccount.com does not have '
              'storage.objects.create access to the Google Cloud Storage object.')


@pytest.mark.parametrize("error, expected", [
    (OSError(30, "Read-only file system", "/mnt/out/part-00000.jsonl"),
     r"^read-only file system writing /mnt/out/part-00000.jsonl; what was completed before is kept; make it writable and rerun the same command$"),
    (OSError(122, "Disk quota exceeded", "/tmp/q/x"),
     r"^disk quota exceeded writing /tmp/q/x \(.* free there\); .*; free space and rerun"),
    (ValueError("RESOURCE_EXHAUSTED: Failed writing \"/tmp/w/c/20/x\" [os_error_code='28']"),
     r"^no space left on device writing /tmp/w/c/20/x \(.*\); .*free space and rerun"),
    (ValueError(GCS_DENIED),
     r"^the bucket refused the write \(no storage.objects.create permission\) writing "
     r"gs://bkt/run/checkpoints/20/d/0; what was completed before is kept; grant write access "
     r"to the bucket and rerun the same command$"),
], ids=["erofs", "edquot", "tensorstore-enospc", "gcs-403"])
def test_a_refused_write_is_one_line_naming_the_file_and_what_to_do(error, expected):
  import re

  from mind_jax._errors import disk_full
  try:  # raised inside another exception, as the async checkpoint writer does
    try:
      raise error
    except Exception as inner:
      raise RuntimeError("checkpoint save failed") from inner
  except RuntimeError as outer:
    full = disk_full(outer)
  assert full is not None and re.search(expected, str(full)), full


@pytest.mark.parametrize("error", [
    ValueError("PERMISSION_DENIED: w@p does not have storage.objects.get access to gs://bkt/x"),
    OSError(13, "Permission denied", "/root/secret.jsonl"),
], ids=["gcs-read-denied", "local-read-denied"])
def test_a_refused_read_is_not_called_a_full_disk(error):
  from mind_jax import MindJaxError
  from mind_jax._errors import disk_full
  assert disk_full(error) is None
  ours = MindJaxError("out=/mnt/f: is not writable (Read-only file system)")
  assert disk_full(ours) is None  # our own message is printed as it is, exit 2


def test_our_message_about_a_write_the_disk_refused_keeps_its_words_and_says_what_to_do():
  from mind_jax import MindJaxError
  from mind_jax._errors import disk_full
  try:
    try:
      raise OSError(28, "No space left on device", "/w/run.json")
    except OSError as e:
      raise MindJaxError("/w: cannot write run.json (No space left on device)") from e
  except MindJaxError as ours:
    assert str(disk_full(ours)) == ("/w: cannot write run.json (No space left on device); what "
                                    "was completed before is kept; free space and rerun the "
                                    "same command")
