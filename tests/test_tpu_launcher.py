"""tpu/pod.sh: the gcloud commands it builds, and the job it starts on each host (run here)."""

import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
POD = str(ROOT / "tpu" / "pod.sh")


def pod(*args, **env):
  return subprocess.run(["bash", POD, *args], capture_output=True, text=True,
                        env={**os.environ, "DRY_RUN": "1", "TPU_NAME": "mind", "ZONE": "zone-a", **env})


def test_create_picks_the_runtime_of_the_tpu_generation():
  out = pod("create", ACCELERATOR="v5litepod-16", PROJECT="proj", SPOT="1")
  assert shlex.split(out.stdout) == [
      "gcloud", "compute", "tpus", "tpu-vm", "create", "mind", "--accelerator-type=v5litepod-16",
      "--version=v2-alpha-tpuv5-lite", "--spot", "--zone=zone-a", "--project=proj"]
  assert "--version=v2-alpha-tpuv6e" in pod("create").stdout  # v6e-8 by default
  unknown = pod("create", ACCELERATOR="v9-8")
  assert unknown.returncode == 2
  assert unknown.stderr.strip() == "tpu/pod.sh: no known runtime version for ACCELERATOR=v9-8; set RUNTIME"


def test_create_plans_the_job_first_and_refuses_a_slice_it_does_not_fit(tmp_path):
  fake = tmp_path / "python"  # stands in for `python -m mind_jax.plan`: records, then answers
  fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\nexit $PLAN_EXIT\n")
  fake.chmod(0o755)
  refused = pod("create", "--config", "job.yaml", "steps=10", ACCELERATOR="v5p-128",
                PYTHON=str(fake), PLAN_EXIT="1")
  assert refused.returncode == 2 and "gcloud" not in refused.stdout
  assert refused.stderr.strip() == ("tpu/pod.sh: not creating v5p-128: the job does not fit it "
                                    "(or could not be planned), see above")
  assert (tmp_path / "args").read_text().split() == [
      "-m", "mind_jax.plan", "--topology", "v5p-128", "--config", "job.yaml", "steps=10"]
  created = pod("create", "--config", "job.yaml", ACCELERATOR="v5p-128", PYTHON=str(fake),
                PLAN_EXIT="0")
  assert created.returncode == 0 and "--accelerator-type=v5p-128" in created.stdout


def test_missing_settings_and_unknown_commands_fail_in_one_line():
  missing = pod("run", "--", "true", TPU_NAME="")
  assert missing.returncode == 2 and missing.stderr.strip() == "tpu/pod.sh: set TPU_NAME (the TPU VM's name)"
  assert pod("launch").stderr.strip().startswith("tpu/pod.sh: unknown command 'launch'")
  assert pod("run").returncode == 2
  assert "tpu/pod.sh run -- python -m mind_jax.generate" in pod("--help").stdout


def remote_command(*args) -> str:
  """The shell command `pod.sh` sends to every host for `args`."""
  gcloud = shlex.split(pod(*args).stdout)
  assert gcloud[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mind", "--worker=all"]
  return next(a for a in gcloud if a.startswith("--command="))[len("--command="):]


def on_host(command, home):
  """Runs a remote command here, as one host's login shell would, with HOME as the host's."""
  return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30,
                        env={**os.environ, "HOME": str(home)})


@pytest.fixture
def host(tmp_path):
  """A host's home after `pod.sh setup`: the checkout and its virtual environment."""
  home = tmp_path / "home"
  (home / "mind_jax").mkdir(parents=True)
  (home / "mind_jax-venv" / "bin").mkdir(parents=True)
  (home / "mind_jax-venv" / "bin" / "activate").write_text("")
  return home


def test_run_starts_the_same_detached_job_on_every_host_with_its_arguments_intact(tmp_path, host):
  """The job must start detached, log to ~/mind_jax-logs, and receive overrides with spaces,
  quotes and $ exactly as typed."""
  argv_file = tmp_path / "argv.json"
  program = f"import json, sys; json.dump(sys.argv[1:], open({str(argv_file)!r}, 'w'))"
  args = ["input.source=/data/my corpus/*.parquet", "name='quoted'", "x=$HOME"]
  started = on_host(remote_command("run", "--", sys.executable, "-c", program, *args), host)
  assert started.returncode == 0 and ": started, log ~/mind_jax-logs/run-" in started.stdout
  assert _read_when_written(argv_file) == args
  assert len(list((host / "mind_jax-logs").glob("run-*.log"))) == 1


def test_a_second_run_is_refused_while_one_runs_and_stop_ends_it_with_its_workers(tmp_path, host):
  child_file = tmp_path / "child.pid"
  program = ("import subprocess, time; worker = subprocess.Popen(['sleep', '60']); "
             f"open({str(child_file)!r}, 'w').write(str(worker.pid)); time.sleep(60)")
  run = remote_command("run", "--", sys.executable, "-c", program)
  assert on_host(run, host).returncode == 0
  pid = int(_read_when_written(host / "mind_jax-logs" / "run.pid"))
  worker = int(_read_when_written(child_file))
  again = on_host(run, host)
  assert again.returncode == 1 and f"a job is already running (pid {pid})" in again.stdout
  assert ": stopped" in on_host(remote_command("stop"), host).stdout
  deadline = time.time() + 10
  while (_alive(pid) or _alive(worker)) and time.time() < deadline:
    time.sleep(0.1)
  assert not _alive(pid) and not _alive(worker)
  assert ": nothing running" in on_host(remote_command("stop"), host).stdout


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  # a killed child of ours stays a zombie until reaped; it no longer runs
  with open(f"/proc/{pid}/stat") as f:
    return f.read().split(")")[-1].split()[0] != "Z"


def _read_when_written(path, timeout=30.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not started, or mid-write
      time.sleep(0.1)
  raise AssertionError(f"{path} was not written: the job did not start")
