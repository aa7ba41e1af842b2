"""notebooks/quickstart.ipynb runs top to bottom (its install cell aside) and shows real output."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def notebook_script(path: pathlib.Path) -> str:
  """The notebook's code cells as one script; cells tagged `install` need a notebook kernel
  (`%pip`) and an installed checkout is what the tests already run in."""
  cells = json.loads(path.read_text())["cells"]
  code = ["".join(c["source"]) for c in cells
          if c["cell_type"] == "code" and "install" not in c["metadata"].get("tags", [])]
  for block in code:
    assert not any(line.lstrip().startswith(("%", "!")) for line in block.splitlines()), block
  return "import matplotlib\nmatplotlib.use('Agg')\n" + "\n\n".join(code)


def run_notebook(name: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
  """Runs the notebook's code cells in `cwd`, as a kernel runs them: a __main__ without a file,
  which spawned worker processes (the filter's and the report's) do not import again."""
  script = cwd / (name.removesuffix(".ipynb") + ".py")
  script.write_text(notebook_script(ROOT / "notebooks" / name))
  out = subprocess.run([sys.executable, "-c", f"exec(open({str(script)!r}).read())"], cwd=cwd,
                       capture_output=True, text=True, timeout=900, env={
                           **os.environ, "PYTHONPATH": str(ROOT),
                           # The plan cell's TPU compile, kept with test_shipped_configs.py's.
                           "MIND_JAX_PLAN_CACHE": str(ROOT / "tests" / "tpu_compiles")})
  assert out.returncode == 0, out.stderr[-3000:]
  return out


@pytest.mark.slow
def test_quickstart_generates_filters_reports_and_samples(tmp_path):
  out = run_notebook("quickstart.ipynb", tmp_path)
  work = tmp_path / "mind_quickstart"
  generated = [json.loads(line) for part in sorted((work / "generated").glob("part-*.jsonl"))
               for line in part.read_text().splitlines()]
  assert len({r["style"] for r in generated}) == 7
  summary = json.loads((work / "filtered" / "filter-summary.json").read_text())
  assert summary["input_records"] == len(generated) == summary["kept"] + summary["rejected"]
  assert (work / "filtered" / "report" / "report.html").exists()
  assert f"{len(generated)} conversations:" in out.stdout
  # the engine cell: three requests, each finished with a reason
  finished = [line.split()[:2] for line in out.stdout.splitlines()[-3:]]
  assert sorted(i for i, _ in finished) == ["0", "1", "2"]
  assert all(reason in {"eos", "length"} for _, reason in finished)


@pytest.mark.slow
def test_the_recipe_notebook_walks_every_stage_to_the_report(tmp_path):
  out = run_notebook("mind_recipe.ipynb", tmp_path)
  work = tmp_path / "mind_recipe_notebook"
  records = {p.stem: json.loads(p.read_text()) for p in (work / "stages").glob("*.json")}
  assert len(records) == 8 and all(r["done"] for r in records.values())
  assert "MIND experiment" in out.stdout and "| champ | exact_match |" in out.stdout
  # The plan cell compiled the mind variant's train step for a TPU slice (libtpu is a test extra).
  assert "fits" in out.stdout.lower() and "per chip" in out.stdout
