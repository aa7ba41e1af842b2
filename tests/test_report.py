"""python -m mind_jax.report: the numbers match counts made here, and the pages render."""

import json
import re

import numpy as np
import pytest
from rouge_score import rouge_scorer

from mind_jax import MindJaxError, config
from mind_jax.curation import FilterConfig, ReportConfig, run_filter, run_report
from mind_jax.mind import GenerateConfig, run
from mind_jax.report import main as report_main
from conftest import DIALOGUE, read_dir, record, write_parts


@pytest.fixture(scope="module")
def default_output(tmp_path_factory):
  """The default generation run (embedded corpus, smoke-test model), then the default filter."""
  root = tmp_path_factory.mktemp("default")
  run(config.load_config(GenerateConfig, None, [f"output.dir={root / 'gen'}"]))
  run_filter(config.load_config(FilterConfig, None, [f"input={root / 'gen'}",
                                                     f"out={root / 'filtered'}", "min_tokens=20"]))
  return root


def stats(values):
  a = np.asarray(values, dtype=float)
  return {"mean": round(a.mean(), 1), "median": round(float(np.median(a)), 1),
          "p90": round(float(np.percentile(a, 90)), 1)}


def test_report_numbers_match_independent_counts(default_output):
  filtered = default_output / "filtered"
  report = run_report(config.load_config(ReportConfig, None, [f"dir={filtered}",
                                                              "similarity_sample=1000"]))
  kept, rejected = read_dir(filtered / "kept"), read_dir(filtered / "rejected")
  assert report["all"]["records"] == len(kept) + len(rejected) == 3 * 7 * 2  # 3 problems, 2 chunks
  assert report["all"]["kept"] == len(kept) > 0
  scorer = rouge_scorer.RougeScorer(["rougeL"])
  for style, entry in report["styles"].items():
    mine = [r for r in kept.values() if r["style"] == style]
    theirs = [r for r in rejected.values() if r["style"] == style]
    assert (entry["kept"], entry["rejected"]) == (len(mine), len(theirs))
    reasons = {}
    for r in theirs:
      for reason in r["reject_reasons"]:
        reasons[reason] = reasons.get(reason, 0) + 1
    assert entry["reasons"] == reasons
    if mine:  # byte tokenizer: a source's tokens are its UTF-8 bytes
      assert entry["conversation_tokens"] == stats([len(r["conversation"].encode()) for r in mine])
      assert entry["turns"] == stats([r["turns"] for r in mine])
      assert entry["source_tokens"] == stats([len(r["source"].encode()) for r in mine])
      rouge = np.mean([scorer.score(r["source"], r["conversation"])["rougeL"].fmeasure
                       for r in mine])
      assert entry["similarity"]["rouge_l"] == pytest.approx(rouge, abs=1e-4)
      assert entry["similarity"]["scored"] == len(mine)


def test_pages_are_written_and_self_contained(default_output):
  out = default_output / "pages"
  run_report(config.load_config(ReportConfig, None, [f"dir={default_output / 'filtered'}",
                                                     f"out={out}"]))
  page = (out / "report.html").read_text()
  assert "two_students" in page and page.count("data:image/png;base64,") == 3
  assert not re.search(r'src="(?!data:)', page)  # nothing outside the file
  markdown = (out / "report.md").read_text()
  for png in re.findall(r"\]\(([^)]+\.png)\)", markdown):
    assert (out / png).read_bytes().startswith(b"\x89PNG")
  assert "| all |" in markdown and "### Two Students" in markdown
  assert "Filter: at least 20 tokens; cleanup; truncated: flag; exact dedup" in markdown


def test_unfiltered_generation_output_counts_everything_as_kept(default_output):
  report = run_report(config.load_config(ReportConfig, None, [f"dir={default_output / 'gen'}",
                                                              f"out={default_output / 'r2'}"]))
  assert not report["filtered"]
  assert report["all"]["kept"] == report["all"]["records"] == 42


def test_similarity_orders_styles_by_closeness_to_the_source(tmp_path):
  source = ("The derivative of x squared is two x, because the difference quotient of x squared "
            "simplifies to two x plus h, and h tends to zero.")
  close = "Prof A: " + source + "\nProf B: Indeed, " + source.lower()
  far = DIALOGUE
  records = [record(f"d{i}#0#two_professors", close + f" ({i})", "two_professors", source=source)
             for i in range(3)]
  records += [record(f"d{i}#0#layman_know_all", far + f"Sam: ({i})\n", "layman_know_all",
                     source=source) for i in range(3)]
  write_parts(tmp_path / "gen", records)
  report = run_report(config.load_config(ReportConfig, None, [f"dir={tmp_path / 'gen'}",
                                                              "similarity_sample=2",
                                                              "examples=1"]))
  professors, layman = report["styles"]["two_professors"], report["styles"]["layman_know_all"]
  assert professors["similarity"]["rouge_l"] > 0.5 > layman["similarity"]["rouge_l"]
  assert professors["similarity"]["bleu"] > layman["similarity"]["bleu"]
  assert professors["similarity"]["scored"] == 2  # the sample size, not every record
  assert [len(v) for v in report["examples"].values()] == [1, 1]
  assert report["styles"]["two_professors"]["turns"]["mean"] == 2


def test_numbers_and_samples_do_not_depend_on_files_or_workers(tmp_path):
  """Part files are read in parallel processes; the sample is the records of smallest hash of
  (seed, id), so it is the same whichever files and workers the records came through."""
  records = [record(f"d{i:02d}#0#{style}", DIALOGUE + f"Sam: case {i}.\n" * (i % 4 + 1), style)
             for i in range(24) for style in ("debate", "interview")]

  def report(name, files, workers, seed=0):
    write_parts(tmp_path / name, records, files)
    return run_report(config.load_config(ReportConfig, None, [
        f"dir={tmp_path / name}", f"workers={workers}", "similarity_sample=5", "examples=3",
        f"seed={seed}"]))

  one, three = report("one", 1, 1), report("three", 3, 2)
  assert one == {**three, "dir": one["dir"]}
  assert one["styles"]["debate"]["similarity"]["scored"] == 5
  assert [e["id"] for e in report("seeded", 1, 1, seed=7)["examples"]["debate"]] != \
         [e["id"] for e in one["examples"]["debate"]]


def test_bad_input(tmp_path, capsys):
  with pytest.raises(MindJaxError, match="directory does not exist"):
    run_report(ReportConfig(dir=str(tmp_path / "missing")))
  broken = write_parts(tmp_path / "gen", [record("a")])
  (broken / "part-00000-000000.jsonl").write_text('{"id": "a"}\n')
  assert report_main([str(broken)]) == 2
  assert "part-00000-000000.jsonl:1: missing field" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    report_main(["--help"])
  assert "similarity_sample" in capsys.readouterr().out


def test_report_json_is_the_returned_numbers(default_output):
  out = default_output / "json"
  report = run_report(config.load_config(ReportConfig, None, [f"dir={default_output / 'filtered'}",
                                                              f"out={out}"]))
  assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
