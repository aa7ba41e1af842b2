"""python -m mind_jax.report on a large output: time and peak memory, to show it streams.

Writes N synthetic records (the same generator as filter_throughput.py, in
mind_jax.generate's schema), then times the report over them with each number
of worker processes given (1 and one per CPU by default), each in a forked
child, and records the peak resident memory of the report process and of its
workers.

  python benchmarks/report_scale.py --records 100000 --out docs/results
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from filter_throughput import machine, save_results, synthetic_input  # noqa: E402


def peak_rss_gb(who=resource.RUSAGE_SELF) -> float:
  return resource.getrusage(who).ru_maxrss / 2**20


def timed_report(src, tok, out, workers) -> dict:
  """The report in a forked child, so that neither the data generation nor an earlier run
  counts in its peak memory; worker processes' memory is sampled while they run."""
  from mind_jax.config import load_config
  from mind_jax.curation import ReportConfig, run_report
  result_file = os.path.join(out, "child.json")
  start = time.perf_counter()
  pid = os.fork()
  if pid == 0:
    base = peak_rss_gb()
    stop, workers_peak = threading.Event(), [0]
    sampler = threading.Thread(target=_sample_workers_rss, args=(stop, workers_peak), daemon=True)
    sampler.start()
    report = run_report(load_config(ReportConfig, None, [f"dir={src}", f"tokenizer={tok}",
                                                         f"out={out}", f"workers={workers}"]))
    stop.set()
    sampler.join()
    with open(result_file, "w") as f:
      json.dump({"peak_rss_gb": peak_rss_gb(), "start_rss_gb": base,
                 "workers_peak_rss_gb": workers_peak[0] / 2**30 if workers > 1 else None,
                 "records": report["all"]["records"]}, f)
    os._exit(0)
  os.waitpid(pid, 0)
  seconds = time.perf_counter() - start
  with open(result_file) as f:
    child = json.load(f)
  return {"workers": workers, "records": child["records"], "seconds": round(seconds, 1),
          "records_per_s": round(child["records"] / seconds),
          "peak_rss_gb": round(child["peak_rss_gb"], 2),
          "rss_at_start_gb": round(child["start_rss_gb"], 2),
          "workers_peak_rss_gb": child["workers_peak_rss_gb"] and round(child["workers_peak_rss_gb"], 2)}


def _sample_workers_rss(stop, peak) -> None:
  """The largest sum of the worker processes' resident memory, sampled every 0.2 s (a child's
  own ru_maxrss would count the pages it shared with this process before exec)."""
  import psutil
  me = psutil.Process()
  while not stop.wait(0.2):
    total = 0
    for child in me.children(recursive=True):
      try:
        total += child.memory_info().rss
      except psutil.Error:  # exited between listing and reading
        pass
    peak[0] = max(peak[0], total)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--records", type=int, default=100000)
  parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
  parser.add_argument("--out", help="directory for report_scale.json")
  args = parser.parse_args()
  with synthetic_input(args.records, "report-bench-") as (work, src, tok, records, _):
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
    del records
    import gc
    gc.collect()
    runs = [timed_report(src, tok, os.path.join(work, f"report-{w}"), w) for w in args.workers]
    result = {"records": args.records, "input_bytes": size, "runs": runs, "machine": machine()}
    if len(runs) > 1:
      result["speedup"] = round(runs[0]["seconds"] / runs[-1]["seconds"], 2)
    save_results(result, args.out, "report_scale")


if __name__ == "__main__":
  main()
