"""Side by side: the results of several evaluations (raw-only against MIND, say), with deltas."""

from __future__ import annotations

import json
import os

from mind_jax._atomic import write_bytes
from mind_jax._errors import MindJaxError

COMPARE_TABLE, COMPARE_PLOT = "compare.md", "compare.png"


def read_results(directory: str) -> dict:
  path = os.path.join(directory, "results.json")
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise MindJaxError(f"{path}: missing (not a python -m mind_jax.evaluate output)") from e
  except json.JSONDecodeError as e:
    raise MindJaxError(f"{path}: invalid JSON at line {e.lineno}") from e


def scores(results: dict) -> dict[tuple[str, str], tuple[float, float | None]]:
  """{(task, metric[,filter]): (value, stderr)} of one results.json."""
  out = {}
  for task, metrics in results.get("results", {}).items():
    for key, value in metrics.items():
      if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
        continue
      metric, _, filt = key.partition(",")
      stderr = metrics.get(f"{metric}_stderr,{filt}")
      name = metric if filt in ("", "none") else f"{metric} ({filt})"
      out[(task, name)] = (float(value), float(stderr) if isinstance(stderr, (int, float)) else None)
  return out


def comparison(directories: list[str]) -> tuple[list[str], list[list[str]], list, list]:
  """The runs side by side as a table (header, rows of cells; the first run is the baseline,
  deltas against it), with each run's (name, scores) and the (task, metric) keys."""
  runs = [(os.path.basename(os.path.normpath(d)), scores(read_results(d))) for d in directories]
  keys = sorted(set().union(*(s.keys() for _, s in runs)))
  base = runs[0][1]
  rows = []
  for key in keys:
    cells = []
    for index, (_, run) in enumerate(runs):
      if key not in run:
        cells.append("-")
        continue
      value, stderr = run[key]
      cell = f"{value:.4f}" + (f" +- {stderr:.4f}" if stderr is not None else "")
      if index and key in base:
        cell += f" ({value - base[key][0]:+.4f})"
      cells.append(cell)
    rows.append([*key, *cells])
  return ["task", "metric", *(name for name, _ in runs)], rows, runs, keys


def markdown_table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def compare(directories: list[str], out: str | None = None) -> str:
  """The Markdown table of `comparison`, also written with a bar chart to `out` when given."""
  if len(directories) < 2:
    raise MindJaxError("compare: give at least two evaluation output directories")
  side_by_side = comparison(directories)
  return write_comparison(side_by_side, out) if out else markdown_table(*side_by_side[:2])


def write_comparison(side_by_side: tuple, out: str) -> str:
  """Writes a `comparison`'s table (compare.md) and bar chart (compare.png) to `out`."""
  header, rows, runs, keys = side_by_side
  table = markdown_table(header, rows)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, COMPARE_TABLE), "w") as f:
    f.write(table)
  write_bytes(os.path.join(out, COMPARE_PLOT), _bar_chart(runs, keys))
  return table


def _bar_chart(runs, keys) -> bytes:
  import io

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  width = 0.8 / len(runs)
  x = np.arange(len(keys))
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys)), 4))
  for index, (name, run) in enumerate(runs):
    values = [run.get(k, (np.nan, None))[0] for k in keys]
    errors = [run.get(k, (0, None))[1] or 0 for k in keys]
    ax.bar(x + index * width, values, width, yerr=errors, label=name, capsize=2)
  ax.set_xticks(x + width * (len(runs) - 1) / 2, [f"{t}\n{m}" for t, m in keys], fontsize=8)
  ax.legend()
  ax.set_ylabel("score")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  plt.close(fig)
  return buffer.getvalue()
