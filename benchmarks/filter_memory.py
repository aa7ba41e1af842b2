"""Memory the filter's decision pass holds per record, and its peak, on synthetic records.

The filter decides duplicates and the longest conversation per chunk over the
whole output at once, so what pass 1 hands over per record bounds the output
one machine can filter. This measures it two ways on the records of
filter_throughput.py: the bytes pass 1's results hold per record (Python and
NumPy allocations traced by tracemalloc, plus Arrow's allocator), with and
without near-duplicate signatures; and a whole run's peak resident memory
above the parent process's size before it started.

  python benchmarks/filter_memory.py --records 100000 --out docs/results
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from filter_throughput import machine, save_results, synthetic_input  # noqa: E402


def held_per_record(src, tokenizer, near, scratch) -> float:
  import pyarrow as pa

  from mind_jax.config import load_config
  from mind_jax.curation import FilterConfig
  from mind_jax.curation import _filter
  cfg = load_config(FilterConfig, None, [f"input={src}", "out=unused", f"tokenizer={tokenizer}",
                                         f"dedup.near={str(near).lower()}"])
  files = _filter.input_files(src)
  signature = (lambda k: os.path.join(scratch, f"s{near}{k}.npy")) if near else (lambda k: None)
  _filter.inspect_file(files[0], cfg, tokenizer, signature(-1))  # imports and caches warmed up
  tracemalloc.start()
  before, arrow_before = tracemalloc.get_traced_memory()[0], pa.total_allocated_bytes()
  tables = [_filter.inspect_file(f, cfg, tokenizer, signature(k)) for k, f in enumerate(files)]
  held = tracemalloc.get_traced_memory()[0] - before + pa.total_allocated_bytes() - arrow_before
  tracemalloc.stop()
  return held / sum(len(t) for t in tables)


def peak_of_run(src, tokenizer, out, near, workers) -> dict:
  import psutil

  from mind_jax.config import load_config
  from mind_jax.curation import FilterConfig, run_filter
  cfg = load_config(FilterConfig, None, [f"input={src}", f"out={out}", f"tokenizer={tokenizer}",
                                         f"workers={workers}", f"dedup.near={str(near).lower()}",
                                         "dedup.index=bloom" if near else "dedup.index=memory"])
  start = psutil.Process().memory_info().rss
  summary = run_filter(cfg)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {"records": summary["input_records"], "peak_growth_mb": round((peak - start) / 2**20, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--records", type=int, default=20000)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--out", help="directory for the results JSON")
  args = parser.parse_args()
  with synthetic_input(args.records, "filter-memory-") as (work, src, tok, records, _):
    mean_id = sum(len(r["id"]) for r in records) / len(records)
    del records
    results = {"records": args.records, "mean_id_chars": round(mean_id, 1), "machine": machine()}
    for near in (False, True):
      key = "with_signatures" if near else "without_signatures"
      results[f"held_bytes_per_record_{key}"] = round(held_per_record(src, tok, near, work), 1)
    # Last: ru_maxrss is the process's peak so far, and the tracing above stays below this.
    results["bloom_run"] = peak_of_run(src, tok, os.path.join(work, "out"), True, args.workers)
    save_results(results, args.out, "filter_memory")


if __name__ == "__main__":
  main()
