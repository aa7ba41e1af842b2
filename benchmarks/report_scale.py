"""python -m mind_jax.report on a large output: time and peak memory, to show it streams.

Writes N synthetic records (the same generator as filter_throughput.py, in
mind_jax.generate's schema), then times the report over them in this process
and records the peak resident memory before and during the report.

  python benchmarks/report_scale.py --records 100000 --out docs/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from filter_throughput import save_results, synthetic_input  # noqa: E402


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--records", type=int, default=100000)
  parser.add_argument("--out", help="directory for report_scale.json")
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix="report-bench-")
  try:
    src, tok, records, _ = synthetic_input(args.records, work)
    size = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
    del records
    import gc
    gc.collect()
    from mind_jax.config import load_config
    from mind_jax.curation import ReportConfig, run_report
    # Peak RSS only grows: measure the report in a child process so the data generation above
    # does not count.
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
      base = peak_rss_gb()
      report = run_report(load_config(ReportConfig, None, [f"dir={src}", f"tokenizer={tok}",
                                                           f"out={work}/report"]))
      with open(os.path.join(work, "child.json"), "w") as f:
        json.dump({"peak_rss_gb": peak_rss_gb(), "start_rss_gb": base,
                   "records": report["all"]["records"]}, f)
      os._exit(0)
    os.waitpid(pid, 0)
    seconds = time.perf_counter() - start
    with open(os.path.join(work, "child.json")) as f:
      child = json.load(f)
    result = {"records": child["records"], "input_bytes": size, "seconds": round(seconds, 1),
              "records_per_s": round(child["records"] / seconds),
              "peak_rss_gb": round(child["peak_rss_gb"], 2),
              "rss_at_start_gb": round(child["start_rss_gb"], 2),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    print(json.dumps(result, indent=1))
    save_results(result, args.out, "report_scale")
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
