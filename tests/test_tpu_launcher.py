"""tpu/pod.sh: the gcloud commands it builds, and the job it starts on each host (run here)."""

import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

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


def test_missing_settings_and_unknown_commands_fail_in_one_line():
  missing = pod("run", "--", "true", TPU_NAME="")
  assert missing.returncode == 2 and missing.stderr.strip() == "tpu/pod.sh: set TPU_NAME (the TPU VM's name)"
  assert pod("launch").stderr.strip().startswith("tpu/pod.sh: unknown command 'launch'")
  assert pod("run").returncode == 2
  assert "tpu/pod.sh run -- python -m mind_jax.generate" in pod("--help").stdout


def test_run_starts_the_same_detached_job_on_every_host_with_its_arguments_intact(tmp_path):
  """The remote command `run` sends is executed here, as one host's shell would: the job must
  start detached, log to ~/mind_jax-logs, and receive overrides with spaces, quotes and $."""
  argv_file = tmp_path / "argv.json"
  program = f"import json, sys; json.dump(sys.argv[1:], open({str(argv_file)!r}, 'w'))"
  args = ["input.source=/data/my corpus/*.parquet", "name='quoted'", "x=$HOME"]
  out = pod("run", "--", sys.executable, "-c", program, *args)
  gcloud = shlex.split(out.stdout)
  assert gcloud[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mind", "--worker=all"]
  remote = next(a for a in gcloud if a.startswith("--command="))[len("--command="):]

  home = tmp_path / "home"
  (home / "mind_jax").mkdir(parents=True)
  (home / "mind_jax-venv" / "bin").mkdir(parents=True)
  (home / "mind_jax-venv" / "bin" / "activate").write_text("")
  started = subprocess.run(["bash", "-c", remote], capture_output=True, text=True, timeout=30,
                           env={**os.environ, "HOME": str(home)})
  assert started.returncode == 0 and ": started, log ~/mind_jax-logs/run-" in started.stdout
  assert _read_when_written(argv_file) == args
  assert len(list((home / "mind_jax-logs").glob("run-*.log"))) == 1


def _read_when_written(path, timeout=30.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not started, or mid-write
      time.sleep(0.1)
  raise AssertionError(f"{path} was not written: the job did not start")
