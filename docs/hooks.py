"""MkDocs hooks: README.md as the site's front page, and the CLI reference (docs/cli.md) made
from each job's own argument parser and config schema whenever the site is built, so the site
says what `--help` says. docs/cli.md is kept in the repository for readers on GitHub;
tests/test_docs.py checks it is current (`python docs/hooks.py > docs/cli.md` rewrites it)."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import sys

from mkdocs.structure.files import File

# (job, its config schema's name in the job's module; None where the job takes another job's
# config, as plan does).
JOBS = [("generate", "GenerateConfig"), ("filter", "FilterConfig"), ("report", "ReportConfig"),
        ("mix", "TrainConfig"), ("train", "TrainConfig"), ("evaluate", "EvaluateConfig"),
        ("recipe", "RecipeConfig"), ("plan", None), ("convert", "ConvertConfig"),
        ("sample", "SampleConfig"), ("smoke", "SmokeConfig")]
SUBCOMMANDS = {"evaluate": ["compare", "prepare"]}


def help_text(job: str, *subcommand: str) -> str:
  """What `python -m mind_jax.JOB [SUBCOMMAND] --help` prints in a terminal 100 columns wide
  (argparse wraps to the terminal's width: fixed, so the reference is the same wherever built)."""
  module = importlib.import_module(f"mind_jax.{job}")
  out, columns = io.StringIO(), os.environ.get("COLUMNS")
  os.environ["COLUMNS"] = "100"
  try:
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
      module.main([*subcommand, "--help"])
  finally:
    if columns is None:
      del os.environ["COLUMNS"]
    else:
      os.environ["COLUMNS"] = columns
  # A default file inside the package shows where it is installed: the reference names it
  # from the checkout's root instead.
  checkout = os.path.dirname(os.path.dirname(os.path.abspath(module.__file__))) + os.sep
  return out.getvalue().replace(checkout, "")


def _cell(value) -> str:
  return str(value).replace("|", "\\|").replace("\n", " ")


def cli_reference() -> str:
  from mind_jax import config as config_lib
  lines = ["# CLI reference", "",
           "Generated from each job's argument parser and config schema (`python docs/hooks.py`, "
           "and again whenever the site is built): the same text `python -m mind_jax.JOB --help` "
           "prints. Every job takes "
           "`--config FILE.yaml` (`configs/` holds one per use) and `key=value` overrides, before "
           "or after its flags; a key given twice, a flag and a key that disagree, an unknown key "
           "or a bad value stop the job before it starts, in one line naming the key.", ""]
  lines += ["Jobs: " + " · ".join(f"[{job}](#{job})" for job, _ in JOBS), ""]
  for job, schema_name in JOBS:
    text = help_text(job)
    usage = text.split("\nconfiguration keys")[0].rstrip()
    lines += [f"## {job}", "", "```text", usage, "```", ""]
    for sub in SUBCOMMANDS.get(job, []):
      lines += [f"### {job} {sub}", "", "```text", help_text(job, sub).rstrip(), "```", ""]
    if schema_name is None:
      lines += ["Its `key=value` overrides are those of the job it plans: "
                "[generate](#generate) or [train](#train).", ""]
      continue
    schema = getattr(importlib.import_module(f"mind_jax.{job}"), schema_name)
    lines += [f"### {job}: configuration keys", "", "| key | default | description |",
              "|---|---|---|"]
    lines += [f"| `{key}` | `{_cell(repr(default))}` | {_cell(about)} |"
              for key, default, about in config_lib.keys(schema)]
    lines.append("")
  return "\n".join(lines)


def on_files(files, config):
  with open("README.md", encoding="utf-8") as f:
    files.append(File.generated(config, "index.md", content=f.read()))
  return files


_REPO_LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|#)([^)]+)\)")


def on_page_markdown(markdown, page, config, files):
  """The CLI reference as the code says it now. README's links are relative to the repository:
  on the site docs/X.md is X.md, and a link to any other file of the repository becomes its
  path in code (the site holds docs/ only)."""
  if page.file.src_uri == "cli.md":
    return cli_reference()
  if page.file.src_uri != "index.md":
    return markdown

  def relink(match):
    text, target = match.groups()
    if target.startswith("docs/"):
      return f"[{text}]({target.removeprefix('docs/')})"
    return f"{text} (`{target}`)" if text.strip("`") != target else f"`{target}`"
  return _REPO_LINK.sub(relink, markdown)


if __name__ == "__main__":
  sys.stdout.write(cli_reference() + "\n")
