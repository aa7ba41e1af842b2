"""The commands the docs show are commands that work.

Read: every `bash` block of README.md and docs/*.md, the example lines of each job's `--help`
(the site's CLI reference shows them), and the usage comments of the shipped configs. Each
`python -m mind_jax.JOB ...` among them is given to that job's own command line and config
loader, stopped once the config is loaded: an unknown flag or key, a bad value, a config file
that does not exist or an `[--optional]` part a reader would copy fails here, naming the place.
Blocks marked `<!-- doc-test: run -->` are run as written on CPU in a fresh directory, and those
marked `<!-- doc-test: run after the tour -->` where the README's tour ran. The site is built in
strict mode (a broken link or anchor fails).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mind_jax.config as config_lib
import mind_jax.evaluation

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIGS = sorted([*(ROOT / "configs").glob("*.yaml"), *(ROOT / "tpu" / "configs").glob("*.yaml")])
RUN, RUN_AFTER_TOUR = "<!-- doc-test: run -->", "<!-- doc-test: run after the tour -->"


def _docs_hooks():
  spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@dataclasses.dataclass
class Block:
  where: str  # file:line of the block's first command line
  text: str
  mark: str | None = None  # RUN, RUN_AFTER_TOUR or None


def bash_blocks(path: Path) -> list[Block]:
  blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
  i = 0
  while i < len(lines):
    if lines[i].strip() == "```bash":
      end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
      mark = lines[i - 1].strip() if i and lines[i - 1].strip() in (RUN, RUN_AFTER_TOUR) else None
      blocks.append(Block(f"{path.relative_to(ROOT)}:{i + 2}", "\n".join(lines[i + 1:end]), mark))
      i = end
    i += 1
  return blocks


def help_examples() -> list[Block]:
  """The example command lines of each job's --help (the module docstring's)."""
  hooks, found = _docs_hooks(), []
  for job, _ in hooks.JOBS:
    for sub in ((), *((s,) for s in hooks.SUBCOMMANDS.get(job, []))):
      text = hooks.help_text(job, *sub).replace("\\\n", " ")
      found += [Block(f"python -m mind_jax.{' '.join((job, *sub))} --help", line.strip())
                for line in text.splitlines()
                if re.match(r"\s*python -m mind_jax\.[a-z_]+(\s|$)", line)]
  return found


def config_comments() -> list[Block]:
  found = []
  for path in CONFIGS:
    text = re.sub(r"\\\n#\s*", " ", path.read_text(encoding="utf-8"))
    for number, line in enumerate(text.splitlines(), 1):
      match = re.match(r"#\s+(python -m mind_jax\.[a-z_]+(\s.*)?)$", line)
      if match:
        found.append(Block(f"{path.relative_to(ROOT)}:{number}", match.group(1)))
  return found


def shell_commands(block: Block) -> list[tuple[int, list[str]]]:
  """(line offset, argv) of each simple command of a block: continuation lines joined, comments
  dropped, `&&`, `;` and `|` split, `$VARIABLES` read as 0 (they stand for a host's index)."""
  found, pending, start = [], "", 0
  for number, line in enumerate(block.text.splitlines()):
    if not pending:
      start = number
    pending += line.rstrip("\\") + " "
    if line.endswith("\\"):
      continue
    lexer = shlex.shlex(re.sub(r"\$\{?[A-Z_]+\}?", "0", pending), posix=True,
                        punctuation_chars=";&|")
    lexer.whitespace_split = True
    current = []
    for word in [*lexer, ";"]:
      if word in (";", "&&", "||", "|", "&"):
        if current:
          found.append((start, current))
        current = []
      else:
        current.append(word)
    pending = ""
  return found


def mind_jax_command(argv: list[str]) -> list[str] | None:
  """The `mind_jax.JOB ARGS...` of a command that runs a job (also behind `tpu/pod.sh run --`)."""
  for i in range(len(argv) - 2):
    if argv[i] in ("python", "python3") and argv[i + 1] == "-m" and argv[i + 2].startswith("mind_jax."):
      return argv[i + 2:]
  return None


class _Loaded(BaseException):
  """Raised once a job has parsed its command line and loaded its config. A BaseException, so
  the jobs' own handling (every Exception becomes one `error:` line) lets it through."""


def check_command(job_argv: list[str]) -> str | None:
  """None where `python -m mind_jax.JOB ARGS` parses and loads its config; else what failed."""
  name, args = job_argv[0], job_argv[1:]
  optional = [word for word in args if word.startswith("[-")]
  if optional:
    return f"{optional[0]}: brackets a reader would type (show the command with and without it)"
  try:
    module = importlib.import_module(name)
  except ImportError as e:
    return f"no such job: {e}"
  real_load = config_lib.load_config

  def load_then_stop(*a, **k):
    real_load(*a, **k)
    raise _Loaded

  def stop(*a, **k):
    raise _Loaded

  err = io.StringIO()
  # Its own patches, undone on return: the caller's (a chdir) stay.
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(config_lib, "load_config", load_then_stop)
    # `evaluate compare|prepare` take no config: their command line is what is checked (the
    # directories the docs name are examples).
    patch.setattr(mind_jax.evaluation, "compare", stop)
    patch.setattr(mind_jax.evaluation, "prepare", stop)
    try:
      with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = module.main(args)
    except _Loaded:
      return None
    except SystemExit as e:  # argparse: --help exits 0, a bad flag 2
      status = e.code
    except Exception as e:  # noqa: BLE001  the job broke on these arguments: report, go on
      return f"{type(e).__name__}: {e}"
  last = [line for line in err.getvalue().splitlines() if line.strip()][-1:]
  return None if status == 0 else f"exit status {status}: {' '.join(last)[-400:]}"


def test_every_documented_command_parses_and_loads_its_config(monkeypatch):
  monkeypatch.chdir(ROOT)  # the docs' paths (configs/...) are the repository's
  blocks = [b for path in DOCS for b in bash_blocks(path)] + help_examples() + config_comments()
  checked, failures = 0, []
  for block in blocks:
    for offset, argv in shell_commands(block):
      where = re.sub(r":(\d+)$", lambda m: f":{int(m.group(1)) + offset}", block.where)
      job = mind_jax_command(argv)
      if job is not None:
        checked += 1
        problem = check_command(job)
        if problem:
          failures.append(f"{where}: {shlex.join(argv)}\n    {problem}")
      elif len(argv) > 1 and argv[0] in ("python", "python3", "bash") and "/" in argv[1]:
        checked += 1
        if not (ROOT / argv[1]).is_file():
          failures.append(f"{where}: {shlex.join(argv)}\n    no such script")
  assert not failures, "commands in the docs that fail as written:\n" + "\n".join(failures)
  assert checked > 90, checked  # the docs show this many: fewer means they were not all read


def test_a_renamed_key_or_flag_in_a_documented_command_is_caught(monkeypatch):
  monkeypatch.chdir(ROOT)
  assert check_command(["mind_jax.generate", "--dry-run", "input.limit=3"]) is None
  assert "input.limt: unknown key" in check_command(
      ["mind_jax.generate", "--dry-run", "input.limt=3"])
  assert "--near-duplicates" in check_command(
      ["mind_jax.filter", "x", "--out", "y", "--near-duplicates"])
  assert "config file does not exist" in check_command(
      ["mind_jax.train", "--config", "configs/train-llama9.yaml"])
  assert "brackets" in check_command(["mind_jax.mix", "[--json]"])


def test_shell_commands_reads_continuations_chains_and_comments():
  block = Block("x:1", "a b \\\n  c=d  # note\n"
                "x && python -m mind_jax.plan --topologies; tpu/pod.sh run -- y $HOST_INDEX")
  assert shell_commands(block) == [(0, ["a", "b", "c=d"]), (2, ["x"]),
                                   (2, ["python", "-m", "mind_jax.plan", "--topologies"]),
                                   (2, ["tpu/pod.sh", "run", "--", "y", "0"])]


def _run(block: Block, cwd: Path):
  for name in ("configs", "tpu"):  # the docs' commands run in a checkout
    if not (cwd / name).exists():
      (cwd / name).symlink_to(ROOT / name)
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  done = subprocess.run(["bash", "-e", "-x", "-c", block.text], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, (f"{block.where}: the block failed as written:\n"
                                + (done.stdout + done.stderr)[-3000:])


@pytest.fixture(scope="module")
def tour(tmp_path_factory) -> Path:
  """The directory the README's tour ran in."""
  (block,) = [b for b in bash_blocks(ROOT / "README.md") if b.mark == RUN]
  cwd = tmp_path_factory.mktemp("tour")
  _run(block, cwd)
  return cwd


@pytest.mark.slow
def test_the_readme_tour_runs_as_written_on_cpu(tour):
  for written in ("mind_output", "mind_filtered/kept", "mind_filtered/report/report.html",
                  "mind_train/hf/config.json", "mind_eval/results.json",
                  "mind_recipe/report/index.html"):
    assert (tour / written).exists(), written


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for path in DOCS[1:] for b in bash_blocks(path) if b.mark],
                         ids=lambda b: b.where)
def test_marked_blocks_of_the_guides_run_as_written_on_cpu(block, tmp_path, request):
  if block.mark == RUN_AFTER_TOUR:
    shutil.copytree(request.getfixturevalue("tour"), tmp_path / "run", symlinks=True)
  _run(block, tmp_path / "run" if block.mark == RUN_AFTER_TOUR else tmp_path)


def test_the_cli_reference_in_the_repository_is_current():
  assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == _docs_hooks().cli_reference() + "\n", (
      "docs/cli.md differs from what the jobs' --help says: rewrite it with "
      "`python docs/hooks.py > docs/cli.md`")


@pytest.mark.slow
def test_the_site_builds_in_strict_mode(tmp_path):
  # mkdocs comes with the test extra, next to this Python.
  done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mkdocs"), "build",
                         "--strict", "--site-dir", str(tmp_path / "site")],
                        cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
  assert done.returncode == 0, done.stdout + done.stderr
  reference = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
  for key in ("input.source", "engine.kv_dtype", "data.sources", "optimizer.learning_rate",
              "--near-dup", "--topologies"):
    assert key in reference, key
