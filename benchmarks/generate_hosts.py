"""One engine over two JAX processes against one process with the same 8 devices, on CPU.

The same generate job (CHAMP problems, the tiny random preset, mesh data x tensor over 8
devices) runs once in one process with 8 CPU devices and once as two processes of 4 devices
each (`jax.distributed` on localhost, gloo collectives, engine.hosts=-1). The records must be
identical; the ratio of output tokens/s is what the cross-process collectives cost here.

  python benchmarks/generate_hosts.py --out bench_out
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time

ARGS = ["input.limit=6", "sampling.max_new_tokens=64", "engine.slots=16", "engine.steps_per_call=8",
        "sampling.context_limit=1024", "mesh.axes.data=4", "mesh.axes.tensor=2",
        "runtime.compile_cache=null"]


def _summary(text: str) -> dict:
  found = dict(re.findall(r"^\s+(output_tokens|elapsed_seconds|units_written): ([\d.]+)$", text, re.M))
  return {k: float(v) for k, v in found.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  job = [sys.executable, "-m", "mind_jax.generate", *ARGS]

  start = time.perf_counter()
  single = subprocess.run([*job, f"output.dir={args.out}/single"], capture_output=True, text=True,
                          env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
                          check=True)
  single_wall = time.perf_counter() - start

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  start = time.perf_counter()
  procs = [subprocess.Popen(
      [*job, f"output.dir={args.out}/two", "distributed=on", "engine.hosts=-1"],
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
      env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  outs = [p.communicate()[0] for p in procs]
  two_wall = time.perf_counter() - start
  assert all(p.returncode == 0 for p in procs)

  from mind_jax.mind import part_files, read_records

  def records(d):
    return sorted((r for p in part_files(d) for r in read_records(p)), key=lambda r: r["id"])
  same = records(f"{args.out}/single") == records(f"{args.out}/two")
  a, b = _summary(single.stdout), _summary(outs[0])
  result = {
      "records_identical": same, "units": a["units_written"], "output_tokens": a["output_tokens"],
      "single_process": {"job_seconds": a["elapsed_seconds"], "wall_seconds": round(single_wall, 2),
                         "output_tokens_per_s": a["output_tokens"] / a["elapsed_seconds"]},
      "two_processes": {"job_seconds": b["elapsed_seconds"], "wall_seconds": round(two_wall, 2),
                        "output_tokens_per_s": b["output_tokens"] / b["elapsed_seconds"]},
  }
  result["ratio_two_over_single"] = (result["two_processes"]["output_tokens_per_s"]
                                     / result["single_process"]["output_tokens_per_s"])
  print(json.dumps(result, indent=2))
  with open(os.path.join(args.out, "generate_hosts.json"), "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
