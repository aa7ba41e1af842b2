"""Bad input, as a new user or an adversary gives it, to every command-line job.

Each case builds its files in a fresh directory, runs one job's `main` in this process and
checks three things: the exit status; that a refusal is exactly one `error:` line naming the
file, line or key at fault (no traceback, no doubled words, no misleading prefix); and that
nothing that existed before changed: a refused run leaves the directory byte for byte as it
was, a run that succeeds changes only the files it owns. docs/bad-input.md states how many
cases there are; a test keeps it current.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import make_hf_checkpoint, record, write_parts

# A generation small enough to rerun often: one document, one style, four tokens.
GEN = ["input.limit=1", "prompt.styles=[debate]", "sampling.max_new_tokens=4", "engine.slots=8"]
GOOD, NOT_UTF8, NO_TEXT = b'{"text": "a b"}', b'{"text": "\xff"}', b'{"body": "a"}'
CONTROL_CHARACTER = b'{"text": "a\x01b"}'  # a raw U+0001 inside a JSON string


def _main(job: str) -> Callable:
  import importlib
  return importlib.import_module(f"mind_jax.{job}").main


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """What the cases start from, made once: a generation output, its filter output and a tiny
  HF checkpoint (copied into each case's own directory)."""
  root = tmp_path_factory.mktemp("built")
  assert _main("generate")([f"output.dir={root / 'gen'}", *GEN]) == 0
  assert _main("filter")([str(root / "gen"), "--out", str(root / "filt"), "workers=1"]) == 0
  make_hf_checkpoint(root / "ckpt")
  return root


@dataclasses.dataclass
class Case:
  """One bad (or borderline) input: `setup(w)` prepares files under `w` and returns the job
  and its argv; the job must exit with `code`, and a refusal must match `message`. A job that
  succeeds may change only files whose path relative to `w` matches `may_change`."""

  name: str
  setup: Callable[[Path], tuple[str, list[str]]]
  message: str | None = None
  code: int = 2
  may_change: str = r"$^"


def _write(path: Path, data: bytes | str) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data.encode() if isinstance(data, str) else data)
  return path


def _corpus(w: Path, lines: list[bytes], name="corpus.jsonl") -> Path:
  return _write(w / name, b"".join(line + b"\n" for line in lines))


def _trained(w: Path) -> Path:
  """A workdir with a finished two-step run of the tiny preset."""
  assert _main("train")([f"workdir={w / 'run'}", "steps=2", "data.seq_len=64"]) == 0
  return w / "run"


def _damaged_gz(w: Path) -> Path:
  raw = b"".join(json.dumps({"id": i, "text": "x " * 200}).encode() + b"\n" for i in range(50))
  data = bytearray(gzip.compress(raw))
  for i in range(20, 40):  # deflate data, past the header: inflation fails, not the CRC
    data[i] ^= 0x5A
  return _write(w / "damaged.jsonl.gz", bytes(data))


def _styles_with_new_debate(w: Path) -> Path:
  from importlib import resources
  import yaml
  data = yaml.safe_load((resources.files("mind_jax.mind") / "styles.yaml").read_text())
  data["styles"]["debate"]["instruction"] += " Keep it short."
  return _write(w / "styles.yaml", yaml.safe_dump(data))


def _tensor_names(path: Path) -> list[str]:
  from mind_jax.ckpts import SafetensorsReader
  with SafetensorsReader(str(path)) as reader:
    return list(reader.tensors)


def _index_pointing_at(w: Path, target: str) -> Path:
  """The checkpoint with its weights moved out and an index that names them at `target`."""
  names = _tensor_names(w / "ckpt")
  shutil.move(w / "ckpt" / "model.safetensors", w / "outside.safetensors")
  _write(w / "ckpt" / "model.safetensors.index.json",
         json.dumps({"metadata": {}, "weight_map": {n: target for n in names}}))
  return w / "ckpt"


def _symlinked_weights(w: Path) -> Path:
  shutil.move(w / "ckpt" / "model.safetensors", w / "outside.safetensors")
  os.symlink(w / "outside.safetensors", w / "ckpt" / "model.safetensors")
  return w / "ckpt"


def _linked_out(w: Path, name: str) -> Path:
  """The checkpoint with `name` (config.json, tokenizer.json) a link to a file outside it."""
  shutil.move(w / "ckpt" / name, w / name)
  os.symlink(w / name, w / "ckpt" / name)
  return w / "ckpt"


def _edit_config(w: Path, **changes) -> Path:
  path = w / "ckpt" / "config.json"
  path.write_text(json.dumps(json.loads(path.read_text()) | changes))
  return w / "ckpt"


def _append(path: Path, text: str) -> Path:
  """`path` with `text` added as a last line; returns its directory."""
  with open(path, "a") as f:
    f.write(text + "\n")
  return path.parent


def _with_user_file(directory: Path) -> Path:
  """`directory` (a job's output) with a file of the user's in it."""
  _write(directory / "important.txt", "mine")
  return directory.parent if directory.name == "kept" else directory


def _without_tokenizer(w: Path) -> Path:
  for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
    (w / "ckpt" / name).unlink(missing_ok=True)
  return w / "ckpt"


def _pickle_only(w: Path) -> Path:
  _write(w / "pt" / "pytorch_model.bin", "PK")
  shutil.copy(w / "ckpt" / "config.json", w / "pt" / "config.json")
  return w / "pt"


def _dup_parts(w: Path) -> Path:
  shutil.copy(w / "gen" / "part-00000-000000.jsonl", w / "gen" / "part-00001-000000.jsonl")
  return w / "gen"


CASES = [
    # --- generate: output directories, checked before the corpus is read or a model loads
    Case("generate: output.dir is a file", lambda w: (
        "generate", [*GEN, f"output.dir={_write(w / 'afile', 'mine')}"]),
        r"output.dir=\S+/afile: is a file, not a directory"),
    Case("generate: output.dir below a file", lambda w: (
        "generate", [*GEN, f"output.dir={_write(w / 'afile', 'mine')}/sub"]),
        r"output.dir=\S+/afile/sub: cannot be created \(\S+/afile is a file\)"),
    Case("generate: output.dir on a file system that refuses writes", lambda w: (
        "generate", [*GEN, "output.dir=/proc/mind_jax_test/out"]),
        r"output.dir=/proc/mind_jax_test/out: cannot be created in /proc"),
    Case("generate: output.dir inside the input directory", lambda w: (
        "generate", [*GEN, f"input.source={_corpus(w / 'corpus', [GOOD]).parent}",
                     f"output.dir={w / 'corpus' / 'out'}"]),
        r"output.dir=\S+/corpus/out: lies inside the input \S+/corpus; write elsewhere"),
    # --- generate: a rerun with other settings is refused, naming what differs
    Case("generate: rerun with another seed", lambda w: (
        "generate", [*GEN, f"output.dir={w / 'gen'}", "seed=1"]),
        r"output.dir=\S+/gen: written with other settings: seed \(0 -> 1\); write to another "
        r"directory, or add --overwrite"),
    Case("generate: rerun with another temperature", lambda w: (
        "generate", [*GEN, f"output.dir={w / 'gen'}", "sampling.temperature=0.7"]),
        r"other settings: sampling.temperature \(1.0 -> 0.7\)"),
    Case("generate: rerun with another model", lambda w: (
        "generate", [*GEN, f"output.dir={w / 'gen'}", f"model.path={w / 'ckpt'}"]),
        r"other settings: model \('smoke-test:tiny-random-seed0' -> 'ckpt, content [0-9a-f]+'\)"),
    Case("generate: rerun with another dtype", lambda w: (
        "generate", [*GEN, f"output.dir={w / 'gen'}", "model.dtype=bfloat16"]),
        r"other settings: dtype \('float32' -> 'bfloat16'\), param_dtype"),
    Case("generate: rerun with another prompt for a style", lambda w: (
        "generate", [*GEN, f"output.dir={w / 'gen'}",
                     f"prompt.styles_file={_styles_with_new_debate(w)}"]),
        r"other settings: prompt.styles.debate \('[0-9a-f]+' -> '[0-9a-f]+'\)"),
    Case("generate: rerun with another chunk size", lambda w: (
        "generate", [*GEN, f"output.dir={w / 'gen'}", "chunking.max_tokens=200"]),
        r"other settings: chunking.max_tokens \(500 -> 200\)"),
    Case("generate: part files no run record vouches for", lambda w: (
        "generate", [*GEN, f"output.dir={(w / 'gen' / 'run.json').unlink() or w / 'gen'}"]),
        r"output.dir=\S+/gen: holds 1 file\(s\) like this job's output \(part-00000-000000.jsonl, "
        r"...\) but no run.json"),
    Case("generate: output.dir holding a filter output", lambda w: (
        "generate", [*GEN, f"output.dir={w / 'filt'}"]),
        r"output.dir=\S+/filt: holds the output of mind_jax.filter; write elsewhere"),
    # --- generate: input and model
    Case("generate: empty input", lambda w: (
        "generate", [*GEN, f"input.source={_corpus(w, [])}", f"output.dir={w / 'out'}"]),
        r"input.source=\S+/corpus.jsonl: no documents to generate from"),
    Case("generate: missing model directory", lambda w: (
        "generate", [*GEN, f"model.path={w / 'nope'}", f"output.dir={w / 'out'}"]),
        r"model.path=\S+/nope: model directory does not exist \(mind_jax never downloads"),
    Case("generate: model without tokenizer files", lambda w: (
        "generate", [*GEN, f"model.path={_without_tokenizer(w)}", f"output.dir={w / 'out'}"]),
        r"model.path=\S+/ckpt: no tokenizer files"),
    Case("generate: weight index naming a file outside the checkpoint", lambda w: (
        "generate", [*GEN, f"model.path={_index_pointing_at(w, '../outside.safetensors')}",
                     f"output.dir={w / 'out'}"]),
        r"\S+/model.safetensors.index.json: weight_map names '../outside.safetensors', which lies "
        r"outside the model directory"),
    Case("generate: damaged deflate data in a .gz", lambda w: (
        "generate", [*GEN, f"input.source={_damaged_gz(w)}", f"output.dir={w / 'out'}"]),
        r"\S+/damaged.jsonl.gz: unreadable after line \d+ \(Error -3 while decompressing"),
    Case("generate: malformed JSON line", lambda w: (
        "generate", [*GEN, f"input.source={_corpus(w, [GOOD, b'{oops'])}",
                     f"output.dir={w / 'out'}"]),
        r"\S+/corpus.jsonl:2: malformed JSON \(.* at column 2\)"),
    Case("generate: a control character inside a JSON string", lambda w: (
        "generate", [*GEN, f"input.source={_corpus(w, [GOOD, CONTROL_CHARACTER])}",
                     f"output.dir={w / 'out'}"]),
        r"\S+/corpus.jsonl:2: malformed JSON \(Invalid control character at column 12\) "),
    Case("generate: line that is not UTF-8", lambda w: (
        "generate", [*GEN, f"input.source={_corpus(w, [NOT_UTF8])}",
                     f"output.dir={w / 'out'}"]),
        r"\S+/corpus.jsonl:1: not valid UTF-8"),
    Case("generate: record without the text field", lambda w: (
        "generate", [*GEN, f"input.source={_corpus(w, [NO_TEXT])}",
                     f"output.dir={w / 'out'}"]),
        r"^corpus.jsonl:1: missing text field 'text'"),
    Case("generate: a damaged part file in output.dir", lambda w: (
        "generate", [*GEN, f"output.dir={_append(w / 'gen' / 'part-00000-000000.jsonl', '{oops')}"]),
        r"^\S+/gen/part-00000-000000.jsonl:\d+: malformed JSON .*; a damaged part file of the "
        r"output: move it aside"),
    Case("generate: a damaged run.json", lambda w: (
        "generate", [*GEN, f"output.dir={_append(w / 'gen' / 'run.json', '}')}"]),
        r"^\S+/gen/run.json: unreadable run record"),
    Case("generate: invalid YAML in a styles file", lambda w: (
        "generate", [*GEN, f"prompt.styles_file={_write(w / 's.yaml', 'styles: [1')}",
                     f"output.dir={w / 'out'}"]),
        r"^\S+/s.yaml: line \d+ invalid YAML \(expected"),
    Case("generate: an unknown style", lambda w: (
        "generate", [f"output.dir={w / 'out'}", "prompt.styles=[debates]"]),
        r"^prompt.styles: unknown style\(s\) debates; available: two_students"),
    # --- the command line
    Case("generate: a flag and a key=value for one setting", lambda w: (
        "generate", [f"output.dir={w / 'out'}", "--limit", "2", "input.limit=3"]),
        r"^command line: --limit sets input.limit, and so does input.limit=3; give one$"),
    Case("generate: typo in a section name", lambda w: (
        "generate", [f"output.dir={w / 'out'}", "modle.dtype=float32"]),
        r"^command line: modle: unknown key$"),
    Case("generate: typo in a config file", lambda w: (
        "generate", ["--config", str(_write(w / "c.yaml", "model:\n  dtpye: float32\n")),
                     f"output.dir={w / 'out'}"]),
        r"^\S+/c.yaml: model.dtpye: unknown key$"),
    Case("generate: invalid YAML", lambda w: (
        "generate", ["--config", str(_write(w / "c.yaml", "seed: 1\nmodel: [x\n"))]),
        r"^\S+/c.yaml: line \d+ invalid YAML"),
    Case("generate: slots the mesh does not divide", lambda w: (
        "generate", [*GEN, f"output.dir={w / 'out'}", "engine.slots=3"]),
        r"^engine.slots=3 must be a multiple of the mesh's batch axes \(8 here"),
    Case("generate: shard index out of range", lambda w: (
        "generate", [f"output.dir={w / 'out'}", "num_shards=2", "shard_index=2"]),
        r"^shard_index=2 must be < num_shards=2$"),
    Case("generate: key=value on both sides of a flag (accepted)", lambda w: (
        "generate", [f"output.dir={w / 'gen'}", "--dry-run", *GEN]), code=0),
    Case("generate: rerun with the same settings resumes (accepted)", lambda w: (
        "generate", [*GEN, f"output.dir={w / 'gen'}"]), code=0),
    Case("generate: --overwrite replaces only the job's own files (accepted)", lambda w: (
        "generate", [*GEN, f"output.dir={_with_user_file(w / 'gen')}", "seed=1", "--overwrite"]),
        code=0, may_change=r"gen/(part-|manifest-|run\.json)"),
    # --- filter
    Case("filter: --out is a file", lambda w: (
        "filter", [str(w / "gen"), "--out", str(_write(w / "afile", "mine"))]),
        r"out=\S+/afile: is a file, not a directory"),
    Case("filter: input inside --out (filter prev/kept --out prev)", lambda w: (
        "filter", [str(w / "filt" / "kept"), "--out", str(w / "filt")]),
        r"out=\S+/filt: contains the input \S+/filt/kept; write elsewhere"),
    Case("filter: --out inside the input", lambda w: (
        "filter", [str(w / "gen"), "--out", str(w / "gen" / "f")]),
        r"out=\S+/gen/f: lies inside the input \S+/gen; write elsewhere"),
    Case("filter: --out is the input", lambda w: (
        "filter", [str(w / "gen"), "--out", str(w / "gen")]),
        r"out=\S+/gen: contains the input \S+/gen"),
    Case("filter: rerun with other rules", lambda w: (
        "filter", [str(w / "gen"), "--out", str(w / "filt"), "--strict", "workers=1"]),
        r"out=\S+/filt: written with other settings: copy_source.enabled \(False -> True\), "
        r"repetition.enabled \(False -> True\), turns.enabled \(False -> True\)"),
    Case("filter: an output name taken by a file it did not write", lambda w: (
        "filter", [str(w / "gen"), "--out",
                   str(_write(w / "mine" / "kept" / "part-00000-000000.jsonl", "x").parent.parent)]),
        r"out=\S+/mine: kept/part-00000-000000.jsonl exists and was not written by mind_jax.filter"),
    Case("filter: the same id twice", lambda w: (
        "filter", [str(_dup_parts(w)), "--out", str(w / "out"), "workers=1"]),
        r"\S+/part-00001-000000.jsonl:1: record id '.*' appears again \(first at "
        r"\S+/part-00000-000000.jsonl:1\)"),
    Case("filter: missing input directory", lambda w: (
        "filter", [str(w / "nope"), "--out", str(w / "out")]),
        r"\S+/nope: input directory does not exist"),
    Case("filter: record without a conversation", lambda w: (
        "filter", [str(write_parts(w / "in", [{k: v for k, v in record("a").items()
                                               if k != "conversation"}])), "--out", str(w / "out")]),
        r"\S+/part-00000-000000.jsonl:1: missing field 'conversation'"),
    Case("filter: part files with no records", lambda w: (
        "filter", [str(write_parts(w / "in", [])), "--out", str(w / "out"), "tokenizer=byte"]),
        r"\S+/in: its 1 part file\(s\) hold no records"),
    Case("filter: a flag and a key=value for one setting", lambda w: (
        "filter", [str(w / "gen"), "--out", str(w / "out"), "--min-tokens", "5", "min_tokens=6"]),
        r"^command line: --min-tokens sets min_tokens, and so does min_tokens=6; give one$"),
    Case("filter: rerun keeps a user's file in kept/ (accepted)", lambda w: (
        "filter", [str(w / "gen"), "--out", str(_with_user_file(w / "filt" / "kept")), "workers=1"]),
        code=0, may_change=r"filt/filter-summary\.json"),  # it names the input dir, copied here
    Case("filter: --overwrite replaces only the filter's files (accepted)", lambda w: (
        "filter", [str(w / "gen"), "--out", str(_with_user_file(w / "filt" / "kept")), "--strict",
                   "--overwrite", "workers=1"]),
        code=0, may_change=r"filt/(kept/part-|rejected/part-|filter-summary|contamination|run\.json)"),
    # --- report
    Case("report: the same id twice", lambda w: ("report", [str(_dup_parts(w)), "workers=1"]),
         r"\S+/part-00001-000000.jsonl:1: record id '.*' appears again \(first at "
         r"\S+/part-00000-000000.jsonl:1\)"),
    Case("report: --out is a file", lambda w: (
        "report", [str(w / "filt"), "--out", str(_write(w / "afile", "mine"))]),
        r"out=\S+/afile: is a file, not a directory"),
    Case("report: a report file it did not write", lambda w: (
        "report", [str(w / "filt"), "--out", str(_write(w / "r" / "report.html", "mine").parent)]),
        r"out=\S+/r: report.html exists and was not written by mind_jax.report"),
    Case("report: --out holding a generation output", lambda w: (
        "report", [str(w / "filt"), "--out", str(w / "gen")]),
        r"out=\S+/gen: holds the output of mind_jax.generate; write elsewhere"),
    Case("report: missing directory", lambda w: ("report", [str(w / "nope")]),
         r"\S+/nope: directory does not exist"),
    # --- checkpoints: convert and sample
    Case("convert: into its own source", lambda w: (
        "convert", [str(w / "ckpt"), str(w / "ckpt")]),
        r"dst=\S+/ckpt: is the source checkpoint"),
    Case("convert: into a directory inside the source", lambda w: (
        "convert", [str(w / "ckpt"), str(w / "ckpt" / "orbax")]),
        r"dst=\S+/ckpt/orbax: lies inside the input \S+/ckpt"),
    Case("convert: into a non-empty directory", lambda w: (
        "convert", [str(w / "ckpt"), str(_write(w / "dst" / "notes.txt", "mine").parent)]),
        r"dst=\S+/dst: exists and is not empty"),
    Case("convert: into a file", lambda w: (
        "convert", [str(w / "ckpt"), str(_write(w / "afile", "mine"))]),
        r"dst=\S+/afile: is a file, not a directory"),
    Case("convert: missing source", lambda w: ("convert", [str(w / "nope"), str(w / "dst")]),
         r"\S+/nope: model directory does not exist"),
    Case("convert: weight index naming ../", lambda w: (
        "convert", [str(_index_pointing_at(w, "../outside.safetensors")), str(w / "dst")]),
        r"weight_map names '../outside.safetensors', which lies outside the model directory"),
    Case("convert: weight index naming an absolute path", lambda w: (
        "convert", [str(_index_pointing_at(w, str(w / "outside.safetensors"))), str(w / "dst")]),
        r"weight_map names '/\S+/outside.safetensors', which lies outside the model directory"),
    Case("convert: weights symlinked from outside", lambda w: (
        "convert", [str(_symlinked_weights(w)), str(w / "dst")]),
        r"\S+/ckpt/model.safetensors is a link to \S+/outside.safetensors, which lies outside"),
    Case("convert: config.json symlinked from outside", lambda w: (
        "convert", [str(_linked_out(w, "config.json")), str(w / "dst")]),
        r"\S+/ckpt/config.json is a link to \S+/config.json, which lies outside"),
    Case("generate: tokenizer.json symlinked from outside", lambda w: (
        "generate", [*GEN, f"model.path={_linked_out(w, 'tokenizer.json')}", f"output.dir={w / 'out'}"]),
        r"\S+/ckpt/tokenizer.json is a link to \S+/tokenizer.json, which lies outside"),
    Case("filter: tokenizer= a directory whose tokenizer.json links outside", lambda w: (
        "filter", [str(w / "gen"), "--out", str(w / "out"), f"tokenizer={_linked_out(w, 'tokenizer.json')}"]),
        r"\S+/ckpt/tokenizer.json is a link to \S+/tokenizer.json, which lies outside"),
    Case("convert: config.json with fewer layers than the weights", lambda w: (
        "convert", [str(_edit_config(w, num_hidden_layers=1)), str(w / "dst")]),
        r"\S+/ckpt: config.json describes a model that does not use \d+ of the checkpoint's "
        r"tensors \(model.layers.1.\S+"),
    Case("convert: config.json with another width", lambda w: (
        "convert", [str(_edit_config(w, intermediate_size=80)), str(w / "dst")]),
        r"\S+/ckpt: tensor model.layers.0.mlp.\w+.weight has shape \[\d+, \d+\], expected"),
    Case("convert: only PyTorch pickle weights", lambda w: (
        "convert", [str(_pickle_only(w)), str(w / "dst")]),
        r"\S+/pt: no model.safetensors .* only PyTorch pickle weights .*convert once with transformers"),
    Case("convert: truncated safetensors", lambda w: (
        "convert", [str(_write(w / "ckpt" / "model.safetensors",
                               (w / "ckpt" / "model.safetensors").read_bytes()[:5000]).parent),
                    str(w / "dst")]),
        r"\S+/ckpt/model.safetensors: truncated \(5000 bytes where its header describes \d+\)"),
    Case("sample: weight index naming ../", lambda w: (
        "sample", ["--model", str(_index_pointing_at(w, "../outside.safetensors")),
                   "--prompt-ids", "1,2"]),
        r"weight_map names '../outside.safetensors', which lies outside the model directory"),
    # --- mix (the training data): every source and key checked before a batch is built
    Case("mix: a source path that matches nothing", lambda w: (
        "mix", [f"data.sources=[{{path: {w}/nothing*.jsonl}}]"]),
        r"data.sources\[0\].path: \S+/nothing\*.jsonl: no input files match"),
    Case("mix: weights that sum to 0", lambda w: (
        "mix", ["data.sources=[{path: champ, weight: 0}]"]),
        r"data.sources: the weights sum to 0; give a source a positive weight"),
    Case("mix: a negative weight", lambda w: (
        "mix", ["data.sources=[{path: champ, weight: -1}]"]),
        r"command line: data.sources.0.weight: Input should be greater than or equal to 0"),
    Case("mix: records without the text field", lambda w: (
        "mix", [f"data.sources=[{{path: {_corpus(w / 'corpus', [NO_TEXT])}}}]"]),
        r"data.sources\[0\] \(\S+/corpus.jsonl\): corpus.jsonl:1: missing text field 'text'"),
    Case("mix: a tokenizer that does not exist", lambda w: (
        "mix", [f"data.tokenizer={w}/no-tokenizer"]),
        r"data.tokenizer: \S+/no-tokenizer: tokenizer path does not exist"),
    Case("mix: a sequence length above the model's limit", lambda w: (
        "mix", [f"model.path={w / 'ckpt'}", "data.seq_len=4096"]),
        r"data.seq_len=4096: above the model's limit of 256 positions"),
    Case("mix: styles on a raw source", lambda w: (
        "mix", ["data.sources=[{path: champ, styles: [debate]}]"]),
        r"data.sources\[0\]: styles and select apply to conversation records"),
    Case("mix: a filter output used as raw text", lambda w: (
        "mix", [f"data.sources=[{{path: {w / 'filt'}, use: raw}}]"]),
        r"data.sources\[0\]: use=raw on the filter output \S+/filt would repeat each chunk"),
    Case("mix: a batch size of 0", lambda w: (
        "mix", ["batch_size=0"]),
        r"command line: batch_size: Input should be greater than or equal to 1"),
    # --- train: refused before anything compiles
    Case("train: a batch the mesh's batch axes do not divide", lambda w: (
        "train", [f"workdir={w / 'run'}", "batch_size=6", "mesh.axes={data: 4, fsdp: 2}"]),
        r"batch_size=6: 6 sequences per microbatch do not divide over the mesh's batch axes "
        r"\(dataxfsdp=8\)"),
    Case("train: a mesh that does not match the devices", lambda w: (
        "train", [f"workdir={w / 'run'}", "mesh.axes={data: 4}"]),
        r"mesh.axes: mesh \{'data': 4\} needs 4 devices but 8 are available"),
    Case("train: an init checkpoint that does not exist", lambda w: (
        "train", [f"workdir={w / 'run'}", f"model.path={w}/no-such-model"]),
        r"model.path=\S+/no-such-model: model directory does not exist"),
    Case("train: a key with a typo", lambda w: (
        "train", [f"workdir={w / 'run'}", "optimizer.learnig_rate=1e-4"]),
        r"command line: optimizer.learnig_rate: unknown key"),
    Case("train: a sequence length above the model's limit", lambda w: (
        "train", [f"workdir={w / 'run'}", f"model.path={w / 'ckpt'}", "data.seq_len=512"]),
        r"data.seq_len=512: above the model's limit of 256 positions"),
    Case("train: a workdir trained from another model", lambda w: (
        "train", [f"workdir={_trained(w)}", f"model.path={w / 'ckpt'}", "data.seq_len=64"]),
        r"workdir=\S+/run: written with other settings: .*model \('preset tiny, seed 0' -> "
        r"'ckpt, content [0-9a-f]+'\)"),
    Case("train: a workdir trained on other source weights", lambda w: (
        "train", [f"workdir={_trained(w)}", "data.seq_len=64", "steps=2",
                  "data.sources=[{path: champ, weight: 2}]"]),
        r"workdir=\S+/run: written with other settings: data.sources\[0\].weight \(1.0 -> 2.0\); "
        r"write to another"),
    Case("train: checkpoints with no run.json", lambda w: (
        "train", [f"workdir={_write(w / 'run' / 'checkpoints' / '3' / 'x', 'old')}".rsplit("/", 3)[0]]),
        r"workdir=\S+/run: holds 1 file\(s\) like this job's output \(checkpoints, ...\) but no "
        r"run.json"),
    Case("train: a TPU kernel asked for on CPU devices", lambda w: (
        "train", [f"workdir={w / 'run'}", "model.attention=tpu"]),
        r"model.attention=tpu: needs TPU devices but the mesh has cpu devices; use auto or xla"),
    # --- plan: refused before anything compiles
    Case("plan: an unknown topology", lambda w: (
        "plan", ["--config", str(_write(w / "t.yaml", "steps: 5\n")), "--topology", "v7-8"]),
        r"--topology v7-8: unknown TPU slice; known: v4-8, v4-16, .*, v6e-256$"),
    Case("plan: a mesh the topology's chips do not match", lambda w: (
        "plan", ["--config", str(_write(w / "t.yaml", "steps: 5\n")), "--topology", "v5e-4",
                 "mesh.axes={data: 1, fsdp: 8}", "mesh.rules=train"]),
        r"mesh.axes: mesh \{'data': 1, 'fsdp': 8\} needs 8 devices but 4 are available"),
    Case("plan: a checkpoint not on this machine and no --preset", lambda w: (
        "plan", ["--config", str(_write(w / "t.yaml", "steps: 5\n")), "--topology", "v5e-4",
                 "model.path=/ckpt/Llama-3.1-8B"]),
        r"model.path=/ckpt/Llama-3.1-8B: not on this machine; pass --preset NAME"),
    Case("plan: a config that is neither job's", lambda w: (
        "plan", ["--config", str(_write(w / "t.yaml", "model: {preset: tiny}\n")),
                 "--topology", "v5e-4"]),
        r"\S+/t.yaml: cannot tell a train config from a generate config by its keys; pass --job"),
]

_DOUBLED_WORD = re.compile(r"\b(\w+) \1\b", re.IGNORECASE)


def _snapshot(root: Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
          for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, built, tmp_path, capsys):
  w = tmp_path / "w"
  shutil.copytree(built, w, symlinks=True)
  job, argv = case.setup(w)
  before = _snapshot(w)
  capsys.readouterr()
  code = _main(job)(argv)
  err = capsys.readouterr().err
  assert "Traceback" not in err
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert code == case.code, err
  after = _snapshot(w)
  if case.code:
    [line] = errors  # one line: the whole message
    message = line.removeprefix("error: ")
    assert re.search(case.message, message), message
    assert not _DOUBLED_WORD.search(message) and "Value error" not in message, message
    assert not message.startswith("defaults:"), message
    assert after == before, "a refused run changed files"
  else:
    assert not errors, errors
    changed = {k for k in before if before[k] != after.get(k)}
    assert all(re.match(case.may_change, k) for k in changed), changed


def test_the_documented_count_is_current():
  text = (Path(__file__).parent.parent / "docs" / "bad-input.md").read_text()
  refused = sum(c.code != 0 for c in CASES)
  assert f"{len(CASES)} cases" in text and f"{refused} refusals" in text
