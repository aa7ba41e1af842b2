"""python -m mind_jax.generate: records, styles, exactly-once resume, shards, bad input."""

import gzip
import os
import signal
import subprocess
import sys

import pytest

from mind_jax import MindJaxError, config
from mind_jax.data import chunk_text, read_documents
from mind_jax.mind import GenerateConfig, format_prompt, load_styles, part_files, read_records, run
from mind_jax.testing import byte_tokenizer

RECORD_KEYS = {"id", "doc_id", "chunk_index", "style", "style_name", "source", "conversation",
               "prompt_tokens", "output_tokens", "finish_reason", "error", "model",
               "temperature", "top_p", "top_k", "max_new_tokens", "seed"}
KILLED_AFTER_PARTS = os.path.join(os.path.dirname(__file__), "helpers",
                                  "generate_killed_after_parts.py")
FAST = ["sampling.max_new_tokens=6", "engine.slots=8", "engine.steps_per_call=4",
        "output.records_per_part=5"]


def make_config(out_dir, *overrides):
  return config.load_config(GenerateConfig, None, [f"output.dir={out_dir}", *FAST, *overrides])


def all_records(out_dir):
  return sorted((r for p in part_files(str(out_dir)) for r in read_records(p)),
                key=lambda r: r["id"])


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("default")
  summary = run(make_config(out, "input.limit=2"))
  return out, summary


def test_every_style_and_the_record_schema(default_run):
  out, summary = default_run
  records = all_records(out)
  styles = set(load_styles())
  assert len(styles) == 7 and {r["style"] for r in records} == styles
  assert len(records) == summary["units"] == summary["chunks"] * 7
  assert len({r["id"] for r in records}) == len(records)
  for record in records:
    assert set(record) == RECORD_KEYS
    assert record["model"] == "smoke-test:tiny-random-seed0"
    assert record["finish_reason"] in ("eos", "length") and 1 <= record["output_tokens"] <= 6
    assert record["id"] == f"{record['doc_id']}#{record['chunk_index']}#{record['style']}"
  # Chunks of one document rebuild it exactly.
  docs = {d.id: d.text for d in read_documents("champ", limit=2)}
  for doc_id, text in docs.items():
    chunks = sorted({(r["chunk_index"], r["source"]) for r in records if r["doc_id"] == doc_id})
    assert "".join(c for _, c in chunks) == text


def test_chat_formatting_puts_the_chunk_before_the_instruction():
  tok = byte_tokenizer()
  style = load_styles()["debate"]
  from mind_jax.mind import prompt_text
  text = prompt_text("x + 1 = 2, so x = 1.", style)
  assert text.startswith("x + 1 = 2, so x = 1.\n\nTurn the context above")
  assert "do not add information" in text  # the faithfulness clause ends every style
  ids = format_prompt(tok, text)
  decoded = tok.decode(ids, skip_special_tokens=False)
  assert decoded.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx + 1")
  assert decoded.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
  assert format_prompt(tok, text, "raw") == [tok.bos_id] + list(text.encode())


def test_a_chunks_styles_share_their_prompt_prefix_and_it_is_prefilled_once(default_run, tmp_path):
  """The seven prompts of a chunk start with the same tokens (the template's header and the
  chunk, up to the instruction); the engine prefills them once per chunk, and the records
  equal a run that prefills every prompt whole. (One slot shard: the default run's 8-device
  mesh splits its 8 slots into 8 shards of one slot, each with its own pages.)"""
  from mind_jax.data import ReadStats
  from mind_jax.mind import plan_units
  from mind_jax.mind._pipeline import common_prefix_len
  out, summary = default_run
  cfg = make_config(out, "input.limit=2")
  units = list(plan_units(cfg, byte_tokenizer(), list(load_styles().values()), ReadStats()))
  shared = 0
  for start in range(0, len(units), 7):
    chunk = units[start:start + 7]
    assert len({u.chunk for u in chunk}) == 1 and len({u.prefix_len for u in chunk}) == 1
    n = chunk[0].prefix_len
    assert len({tuple(u.prompt_ids[:n]) for u in chunk}) == 1
    assert len({u.prompt_ids[n] for u in chunk}) > 1  # the first token after it differs
    assert n > len(chunk[0].chunk)  # the chunk's bytes and the template's header
    shared += n
  assert common_prefix_len([[1, 2, 3], [1, 2], [1, 2, 4]]) == 2
  one_shard = ["input.limit=2", "mesh.axes.data=1", "mesh.axes.fsdp=8"]
  shared_run = run(make_config(tmp_path / "shared", *one_shard))
  # Six of every seven copies of the shared prefix are read from pages, not prefilled again.
  assert shared_run["prefix_tokens_reused"] == 6 * shared
  prompt_tokens = sum(len(u.prompt_ids) for u in units)
  assert shared_run["prefill_tokens"] == prompt_tokens - 6 * shared
  whole = run(make_config(tmp_path / "whole", *one_shard, "engine.share_prefixes=false"))
  assert whole["prefix_tokens_reused"] == 0 and whole["prefill_tokens"] == prompt_tokens
  assert all_records(tmp_path / "whole") == all_records(tmp_path / "shared") == all_records(out)


def test_engine_paging_keys_take_effect_or_fail_in_one_line(tmp_path):
  from mind_jax.mind import engine_config
  from mind_jax.mind._pipeline import run_settings
  cfg = make_config(tmp_path, "engine.page_size=32", "engine.kv_pages=96", "engine.kv_memory=1.5GiB",
                    "engine.kv_dtype=int8")
  engine = engine_config(cfg)
  assert (engine.page, engine.kv_pages, engine.kv_memory) == (32, 96, 3 * 2**29)
  assert engine.cache_dtype == "int8" and run_settings(cfg, [], "m")["kv_dtype"] == "int8"
  assert "kv_dtype" not in run_settings(make_config(tmp_path), [], "m")  # older runs resume
  for key, message in [("engine.page_size=48", "does not divide the context limit 4096; use 128"),
                       ("engine.kv_dtype=int4", "engine.kv_dtype: Input should be 'int8'"),
                       ("engine.page_size=12", "a page must hold a multiple of 8 tokens"),
                       ("engine.kv_memory=lots", "invalid size 'lots'")]:
    with pytest.raises(MindJaxError, match=message) as error:
      make_config(tmp_path, key)
    assert "\n" not in str(error.value)


def test_output_is_readable_by_pyarrow_and_parquet_output(default_run, tmp_path):
  import pyarrow.json as pj
  out, _ = default_run
  table = pj.read_json(part_files(str(out))[0])
  assert set(table.column_names) == RECORD_KEYS
  run(make_config(tmp_path, "input.limit=1", "output.format=parquet", "prompt.styles=[debate]"))
  import pyarrow.parquet as pq
  [path] = part_files(str(tmp_path))
  assert path.endswith(".parquet") and pq.read_table(path).num_rows >= 1


def test_output_loads_with_datasets_and_pandas(default_run):
  import datasets
  import pandas as pd
  out, summary = default_run
  files = part_files(str(out))
  loaded = datasets.load_dataset("json", data_files=files, split="train")
  assert loaded.num_rows == summary["units"] and set(loaded.column_names) == RECORD_KEYS
  frame = pd.concat(pd.read_json(f, lines=True) for f in files)
  assert sorted(frame["id"]) == sorted(loaded["id"])


def test_datasets_directory_as_input(tmp_path):
  import datasets
  rows = {"id": ["a", "b"], "body": ["Two is even.", "Three is odd."]}
  datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "d"))
  docs = list(read_documents(str(tmp_path / "d"), text_field="body", split="test"))
  assert [(d.id, d.text) for d in docs] == [("a", "Two is even."), ("b", "Three is odd.")]
  with pytest.raises(MindJaxError, match="no split 'train' \\(has test\\)"):
    list(read_documents(str(tmp_path / "d"), text_field="body"))


def test_tfds_data_source_as_input_without_tensorflow(tmp_path):
  import tensorflow_datasets as tfds

  class MathNotes(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"id": tfds.features.Text(), "text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(3), "test": self._generate_examples(2)}

    def _generate_examples(self, n):
      for i in range(n):
        yield i, {"id": f"n{i}", "text": f"Note {i}: {i} + {i} = {2 * i}."}

  MathNotes(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  docs = list(read_documents("tfds:math_notes:test", data_dir=str(tmp_path)))
  # TFDS stores examples in its own (hashed) order, which stays fixed.
  assert sorted((d.id, d.text) for d in docs) == [("n0", "Note 0: 0 + 0 = 0."),
                                                  ("n1", "Note 1: 1 + 1 = 2.")]
  assert len(list(read_documents("tfds:math_notes", data_dir=str(tmp_path)))) == 3
  with pytest.raises(MindJaxError, match="tfds:nope: cannot open the TFDS data source"):
    list(read_documents("tfds:nope", data_dir=str(tmp_path)))


def test_rerun_skips_everything_done(default_run):
  out, summary = default_run
  again = run(make_config(out, "input.limit=2"))
  assert again["already_done"] == summary["units"] and again["units_written"] == 0
  assert len(all_records(out)) == summary["units"]


def test_shards_cover_every_unit_exactly_once(default_run, tmp_path):
  out, _ = default_run
  for index in range(3):
    run(make_config(tmp_path, "input.limit=2", "num_shards=3", f"shard_index={index}"))
  sharded, single = all_records(tmp_path), all_records(out)
  assert [r["id"] for r in sharded] == [r["id"] for r in single]
  # A unit's random key depends only on the seed and its id, so shards reproduce it exactly.
  assert [r["conversation"] for r in sharded] == [r["conversation"] for r in single]


def test_hosts_of_a_slice_split_each_job_shard_exactly():
  from mind_jax.mind._pipeline import EngineGroup, host_shard
  cfgs = [make_config("/tmp/x", "num_shards=3", f"shard_index={i}") for i in range(3)]
  # 3 jobs x 4 hosts: 12 disjoint shards that cover every document index once.
  shards = [host_shard(cfg, EngineGroup.of(cfg, host, 4)) for cfg in cfgs for host in range(4)]
  assert sorted(index for index, _ in shards) == list(range(12))
  assert {count for _, count in shards} == {12}
  assert host_shard(cfgs[1], EngineGroup.of(cfgs[1], 0, 1)) == (1, 3)  # one host: the job's own
  # Engines of 2 hosts: both hosts of an engine take its shard; 3 jobs x 2 engines.
  paired = [make_config("/tmp/x", "num_shards=3", f"shard_index={i}", "engine.hosts=2")
            for i in range(3)]
  shards = [host_shard(cfg, EngineGroup.of(cfg, host, 4)) for cfg in paired for host in range(4)]
  assert shards[0] == shards[1] and shards[2] == shards[3] and shards[0] != shards[2]
  assert sorted({index for index, _ in shards}) == list(range(6))
  assert [EngineGroup.of(paired[0], host, 4).rank for host in range(4)] == [0, 1, 0, 1]
  with pytest.raises(MindJaxError, match=r"engine.hosts=3: does not divide the slice's 4 host"):
    EngineGroup.of(make_config("/tmp/x", "engine.hosts=3"), 0, 4)


@pytest.mark.slow
def test_sigkill_then_restart_gives_the_uninterrupted_dataset(default_run, tmp_path):
  out, _ = default_run
  args = [f"output.dir={tmp_path}", "input.limit=2", *FAST[:-1], "output.records_per_part=2"]
  killed = subprocess.run([sys.executable, KILLED_AFTER_PARTS, "3", *args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  assert killed.returncode == -signal.SIGKILL
  partial = len(all_records(tmp_path))
  assert 0 < partial < len(all_records(out)), "the kill must land mid-run"
  subprocess.run([sys.executable, "-m", "mind_jax.generate", *args], check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  assert all_records(tmp_path) == all_records(out)
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


# --- bad input -------------------------------------------------------------------------------


def write(path, data: bytes):
  path.write_bytes(data)
  return str(path)


def test_malformed_json_line_is_named_or_skipped(tmp_path):
  src = write(tmp_path / "in.jsonl",
              b'{"id": "a", "text": "One plus one is two."}\n{"id": "b", "text": \n'
              b'{"id": "c", "text": "Two plus two is four."}\n')
  with pytest.raises(MindJaxError, match=r"in.jsonl:2: malformed JSON"):
    run(make_config(tmp_path / "out", f"input.source={src}"))
  summary = run(make_config(tmp_path / "out", f"input.source={src}", "input.on_bad_record=skip",
                            "prompt.styles=[interview]"))
  assert summary["bad_records"] == 1 and summary["units_written"] == 2


def test_missing_text_field_and_non_utf8(tmp_path):
  src = write(tmp_path / "in.jsonl", b'{"id": "a", "body": "no text here"}\n')
  with pytest.raises(MindJaxError, match=r"in.jsonl:1: missing text field 'text'"):
    list(read_documents(src))
  assert [d.text for d in read_documents(src, text_field="body")] == ["no text here"]
  bad = write(tmp_path / "latin1.jsonl.gz", gzip.compress(
      b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n'))
  with pytest.raises(MindJaxError, match=r"latin1.jsonl.gz:2: not valid UTF-8"):
    list(read_documents(bad))
  from mind_jax.data import ReadStats
  stats = ReadStats()
  assert [d.id for d in read_documents(bad, on_bad_record="skip", stats=stats)] == ["a"]
  assert stats["bad_records"] == 1


def test_empty_file_long_document_and_unreadable_path(tmp_path):
  empty = write(tmp_path / "empty.jsonl", b"")
  # An input with no documents is a mistake (a wrong glob, an empty export): said, not exit 0.
  with pytest.raises(MindJaxError, match=r"empty.jsonl: no documents to generate from"):
    run(make_config(tmp_path / "out", f"input.source={empty}"))
  assert not (tmp_path / "out").exists()
  tok = byte_tokenizer()
  long_text = " ".join(f"Step {i}: multiply both sides by {i}." for i in range(400))
  chunks = chunk_text(long_text, lambda s: len(tok.encode(s)), 200, 20)
  assert "".join(chunks) == long_text and len(chunks) > 5
  assert all(len(tok.encode(c)) <= 220 for c in chunks)
  with pytest.raises(MindJaxError, match="input file does not exist"):
    list(read_documents(str(tmp_path / "nope.jsonl")))


def test_bad_input_loses_nothing_already_written(default_run, tmp_path):
  out, _ = default_run
  import shutil
  shutil.copytree(out, tmp_path / "out")
  before = all_records(tmp_path / "out")
  src = write(tmp_path / "bad.jsonl", b'{"id": 1, "text": 5}\n')
  with pytest.raises(MindJaxError, match="bad.jsonl:1: text field 'text' is int"):
    run(make_config(tmp_path / "out", f"input.source={src}"))
  assert all_records(tmp_path / "out") == before


def test_dry_run_prints_the_plan(tmp_path, capsys):
  from mind_jax import generate
  assert generate.main([f"output.dir={tmp_path}", "--dry-run", "--limit", "2"]) == 0
  out = capsys.readouterr().out
  assert "dry run" in out and "estimated_output_tokens" in out
  assert not part_files(str(tmp_path))


def test_repository_generate_configs_validate():
  import glob
  root = os.path.join(os.path.dirname(__file__), "..", "configs")
  files = sorted(glob.glob(os.path.join(root, "generate*.yaml")))
  assert len(files) == 3
  for path in files:
    config.load_config(GenerateConfig, path)
  assert config.load_config(GenerateConfig, os.path.join(root, "generate.yaml")) == GenerateConfig()


def test_default_ids_keep_folders_apart(tmp_path):
  for folder in ("a", "b"):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "x.jsonl").write_text('{"text": "1 + 1 = 2"}\n')
  assert [d.id for d in read_documents(str(tmp_path), id_field=None)] == ["a/x.jsonl:1",
                                                                          "b/x.jsonl:1"]
  assert [d.id for d in read_documents(str(tmp_path / "*" / "x.jsonl"))] == ["a/x.jsonl:1",
                                                                             "b/x.jsonl:1"]
  assert [d.id for d in read_documents(str(tmp_path / "a" / "x.jsonl"))] == ["x.jsonl:1"]


def test_directories_and_globs_expand_to_data_files(tmp_path):
  from mind_jax.data import expand
  (tmp_path / "a" / "b").mkdir(parents=True)
  for name in ["x.jsonl", "a/y.jsonl.gz", "a/b/z.parquet", "a/b/notes.txt"]:
    (tmp_path / name).write_bytes(b"")
  assert expand(str(tmp_path)) == [str(tmp_path / n) for n in ["a/b/z.parquet", "a/y.jsonl.gz",
                                                                "x.jsonl"]]
  assert expand(str(tmp_path / "**" / "*.jsonl*")) == [str(tmp_path / "a/y.jsonl.gz"),
                                                        str(tmp_path / "x.jsonl")]
  with pytest.raises(MindJaxError, match="no input files match"):
    expand(str(tmp_path / "*.csv"))
  with pytest.raises(MindJaxError, match="notes.txt: unknown input format"):
    expand(str(tmp_path / "a" / "b" / "notes.txt"))


def test_output_on_gcs_and_resume(fake_gcs):
  cfg = make_config("gs://bucket/mind", "input.limit=1", "prompt.styles=[debate,interview]")
  first = run(cfg)
  written = all_records(fake_gcs / "bucket" / "mind")
  assert first["units_written"] == len(written) > 0
  assert (fake_gcs / "bucket" / "mind" / "manifest-00000.json").exists()
  again = run(cfg)  # resume reads the gs:// parts back and finds nothing to do
  assert again["already_done"] == len(written) and again["units_written"] == 0


def test_a_corrupt_part_in_the_output_stops_the_resume_naming_it(tmp_path):
  from mind_jax.mind import done_ids
  (tmp_path / "part-00000-000000.jsonl").write_text('{"id": "a"}\n{"id": \n')
  with pytest.raises(MindJaxError, match=r"^\S+/part-00000-000000.jsonl:2: malformed JSON .*; a "
                     r"damaged part file of the output: move it aside"):
    done_ids(str(tmp_path))
