"""Generation across hosts, run for real as JAX processes on this machine sharing 8 CPU devices
(gloo collectives): one engine over every host's chips (engine.hosts=-1), an engine per host
(the default) each on its own share, and engines of two hosts side by side (engine.hosts=2)."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from mind_jax.mind import part_files, read_records

KILLED_AFTER_PARTS = os.path.join(os.path.dirname(__file__), "helpers",
                                  "generate_killed_after_parts.py")
ARGS = ["input.limit=2", "sampling.max_new_tokens=12", "engine.slots=8", "engine.steps_per_call=4",
        "sampling.context_limit=1024", "output.records_per_part=2", "mesh.axes.data=4",
        "mesh.axes.tensor=2", "runtime.compile_cache=null",
        # A pool of ~1.2 sequences per slot shard, filled eagerly: the schedulers of the hosts
        # of one engine decide pages, shared prefixes and preemptions alike, or their outputs
        # differ.
        "engine.page_size=16", "engine.kv_pages=320", "engine.admission=eager"]


def records(out_dir):
  return sorted((r for p in part_files(str(out_dir)) for r in read_records(p)),
                key=lambda r: r["id"])


def _single(out_dir, *overrides):
  return subprocess.run([sys.executable, "-m", "mind_jax.generate", f"output.dir={out_dir}", *ARGS,
                         *overrides],
                        capture_output=True, text=True,
                        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})


def _two_processes(out_dir, kill_writer_after_parts=None, engines=("engine.hosts=-1",),
                   processes=2):
  """`processes` hosts sharing 8 CPU devices; process 0 (an engine's writer) SIGKILLs itself
  after that many parts, if given."""
  job = ["-m", "mind_jax.generate"]
  writer = [KILLED_AFTER_PARTS, str(kill_writer_after_parts)] if kill_writer_after_parts else job
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return [subprocess.Popen(
      [sys.executable, *(writer if i == 0 else job),
       f"output.dir={out_dir}", *ARGS,
       "distributed=on", *engines], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env={**os.environ,
                      "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}",
                      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                      "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(i)})
      for i in range(processes)]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("single")
  done = _single(out)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "  preemptions: 0\n" not in done.stdout and "  prefix_tokens_reused: 0\n" not in done.stdout
  return out


@pytest.mark.slow
def test_two_processes_run_one_engine_and_write_the_single_process_dataset(single_run, tmp_path):
  for process in _two_processes(tmp_path):
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert "  preemptions: 0\n" not in out  # each host's scheduler preempted alike
  ours, theirs = records(tmp_path), records(single_run)
  assert len(theirs) > 8 and ours == theirs
  assert all(r["finish_reason"] != "error" and r["output_tokens"] for r in ours)  # all decoded
  assert len({r["id"] for r in ours}) == len(ours)  # no duplicates
  # One engine, one writer: every part is shard 0's, written by process 0.
  assert {os.path.basename(p).split("-")[1] for p in part_files(str(tmp_path))} == {"00000"}


@pytest.mark.slow
def test_an_engine_per_host_each_writes_its_share_and_both_report_the_whole(single_run, tmp_path):
  # An earlier run with other settings, which output.overwrite replaces: host 0 alone deletes
  # its parts, before either host writes one.
  earlier = _single(tmp_path, "input.limit=1", "sampling.max_new_tokens=4")
  assert earlier.returncode == 0, earlier.stderr[-3000:]
  processes = _two_processes(tmp_path, engines=("mesh.axes.data=2", "output.overwrite=true"))
  outputs = [p.communicate(timeout=300) for p in processes]
  for process, (_, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-3000:]
  ours = records(tmp_path)
  # The same records as one process with one engine: a request's tokens do not depend on the
  # engine, its slots or its other requests.
  assert ours == records(single_run)
  assert all(r["finish_reason"] != "error" and r["output_tokens"] for r in ours)
  # Each host's engine wrote its own share's parts.
  assert {os.path.basename(p).split("-")[1] for p in part_files(str(tmp_path))} == {"00000", "00001"}
  for out, _ in outputs:  # each host's summary counts the whole slice's dataset
    assert f"wrote {len(ours)} records" in out and "  engines: 2" in out
    assert "  documents_read: 2\n" in out  # the input's own count, read alike by both


@pytest.mark.slow
def test_engines_of_two_hosts_side_by_side(single_run, tmp_path):
  """Four hosts of 2 devices, engines of two hosts (engine.hosts=2, as 70B on v4-32): each
  engine's first host writes its share, and every host reports the whole slice."""
  processes = _two_processes(tmp_path, engines=("engine.hosts=2", "mesh.axes.data=2"),
                             processes=4)
  outputs = [p.communicate(timeout=300) for p in processes]
  for process, (_, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-3000:]
  ours = records(tmp_path)
  assert ours == records(single_run)
  assert {os.path.basename(p).split("-")[1] for p in part_files(str(tmp_path))} == {"00000", "00001"}
  for out, _ in outputs:
    assert f"wrote {len(ours)} records" in out and "  engines: 2" in out


@pytest.mark.slow
def test_both_processes_killed_mid_run_and_rerun_end_with_the_same_dataset(single_run, tmp_path):
  writer, other = _two_processes(tmp_path, kill_writer_after_parts=2)
  assert writer.wait(timeout=300) == -signal.SIGKILL
  other.send_signal(signal.SIGKILL)  # it waits on a collective its peer will never join
  other.wait()
  partial = len(records(tmp_path))
  assert 0 < partial < len(records(single_run)), "the kill must land mid-run"
  for process in _two_processes(tmp_path):
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
  assert records(tmp_path) == records(single_run)
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.parametrize("admission", ["eager", "projected"])
def test_the_scheduler_decides_the_same_whatever_the_timing(monkeypatch, admission):
  """Hosts of one engine each run the host-side scheduler: fed the same requests, they must
  put the same request in the same slot at the same call, however long each call takes."""
  import itertools

  from flax import nnx

  from mind_jax.engine import Engine, EngineConfig, Request, SamplingParams
  from mind_jax.engine import _engine
  from mind_jax.nn import Llama, preset

  model = Llama(preset("tiny", dtype="float32"), rngs=nnx.Rngs(0))
  # Shared prefixes (every prompt starts 1, 2, 3) and a pool of 1.5 sequences at the context
  # limit: the decisions include pages, copies and preemptions.
  requests = [Request(f"r{i}", list(range(1, 4 + 3 * i)), SamplingParams(max_new_tokens=10 + 4 * (i % 5),
                                                                  ignore_eos=True),
                      prefix_len=3) for i in range(12)]

  def decisions(clock):
    monkeypatch.setattr(_engine.time, "perf_counter", clock)
    monkeypatch.setattr(_engine.time, "monotonic", clock)
    engine = Engine(model, None, EngineConfig(slots=4, max_len=64, steps_per_call=2,
                                              page_size=8, kv_pages=12, admission=admission))
    made, prefill = [], engine._prefill

    def recorded(seq, start, table, copy):
      made.append((engine.stats["generate_calls"], seq.request.id, seq.slot, tuple(seq.pages),
                   start, copy))
      return prefill(seq, start, table, copy)
    engine._prefill = recorded
    finished = [(r.id, r.token_ids) for r in engine.generate(iter(requests))]
    return made, finished, engine.stats["preemptions"]

  steady = itertools.count(0.0, 0.01)
  erratic = (t * t * 7.3 % 1000 for t in itertools.count(1.0))  # jumps, even backwards
  first, second = decisions(lambda: next(steady)), decisions(lambda: next(erratic))
  assert first == second and len(first[0]) >= len(requests)
  if admission == "eager":  # the decisions include preemptions
    assert first[2] > 0
  assert len(first[1]) == len(requests)
