"""python -m mind_jax.filter: each rule on crafted records, and the guarantees of the job.

Records name the smoke-test model, so tokens are counted with the byte
tokenizer: one token per UTF-8 byte, which makes "exactly 50 tokens" exact.
"""

import json
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest

from mind_jax import MindJaxError
from mind_jax.config import load_config
from mind_jax.curation import CONTAMINATION, SUMMARY, FilterConfig, clean, run_filter, split_turns
from mind_jax.filter import main as filter_main

from conftest import DIALOGUE, read_dir, record, write_parts


def filtered(tmp_path, records, *overrides, files=1, name="out"):
  src = write_parts(tmp_path / f"{name}-in", records, files)
  cfg = load_config(FilterConfig, None, [f"input={src}", f"out={tmp_path / name}", "workers=1",
                                         *overrides])
  summary = run_filter(cfg)
  return summary, read_dir(tmp_path / name / "kept"), read_dir(tmp_path / name / "rejected")


# --- the paper's rule, counted in generator tokens --------------------------------------------

def test_fifty_token_rule_edges(tmp_path):
  records = [record("exact50", "a" * 50), record("short49", "a" * 49),
             record("unicode50", "é" * 25),  # 25 characters, 50 byte tokens
             record("empty", ""), record("blank", " \n\t ")]
  summary, kept, rejected = filtered(tmp_path, records)
  assert set(kept) == {"exact50", "unicode50"}
  assert rejected["short49"]["reject_reasons"] == ["too_short"]
  assert "49 < 50" in rejected["short49"]["reject_detail"]
  assert rejected["empty"]["reject_reasons"] == rejected["blank"]["reject_reasons"] == ["empty"]
  assert kept["unicode50"]["conversation_tokens"] == 50
  assert summary["reasons"] == {"empty": 2, "too_short": 1}


def test_threshold_is_an_option(tmp_path):
  _, kept, _ = filtered(tmp_path, [record("r", "a" * 20)], "min_tokens=10")
  assert set(kept) == {"r"}


# --- cleanup ------------------------------------------------------------------------------------

PODCAST_STYLE = """styles:
  podcast:
    name: Podcast
    instruction: Turn the context above into a podcast episode with two hosts.
"""


def test_a_new_styles_closing_note_is_stripped_by_the_genre_its_run_notes(tmp_path):
  """A style added by prompt.styles_file writes "podcast"s: generate notes the genre in its
  run record, and the filter strips a closing note naming it as it does for a debate."""
  from mind_jax.mind import load_styles
  (tmp_path / "styles.yaml").write_text(PODCAST_STYLE)
  assert load_styles(str(tmp_path / "styles.yaml"))["podcast"].genre == "podcast"
  out = tmp_path / "gen"
  done = subprocess.run([sys.executable, "-m", "mind_jax.generate", "input.limit=1",
                         "sampling.max_new_tokens=4", f"output.dir={out}",
                         f"prompt.styles_file={tmp_path / 'styles.yaml'}"],
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  assert json.loads((out / "run.json").read_text())["notes"]["genres"] == ["podcast"]

  note = "This podcast episode walked through the lemma one square at a time.\n"
  conversation = DIALOGUE + "\n" + note
  src = write_parts(tmp_path / "in", [record("d#0#podcast", conversation, style="podcast")])
  run_json = json.loads((src / "run.json").read_text())
  run_json["notes"]["genres"] = ["podcast"]
  (src / "run.json").write_text(json.dumps(run_json))
  for overrides, kept_text in (([], DIALOGUE.strip()), (["genres=[]"], conversation.strip())):
    out = tmp_path / f"f{len(overrides)}"
    cfg = load_config(FilterConfig, None, [f"input={src}", f"out={out}", "workers=1",
                                           "min_tokens=0", *overrides])
    run_filter(cfg)
    (kept,) = read_dir(out / "kept").values()
    assert kept["conversation"] == kept_text


def test_preamble_and_trailing_notes_are_removed_and_kept_aside():
  raw = ("Sure! Here is a conversation between two students about the lemma:\n\n" + DIALOGUE +
         "\nNote: this conversation stays faithful to the context.\nI hope it helps!\n")
  cleaned = clean(raw)
  assert cleaned.text == DIALOGUE.strip()
  assert cleaned.preamble + cleaned.text + cleaned.trailer == raw
  assert cleaned.trailer.lstrip().startswith("Note:")


@pytest.mark.parametrize("lead", ["## A debate on primes\n\n", "**Conversation:**\n",
                                  "Below is the dialogue you asked for.\n\n"])
def test_announcing_titles_are_preamble(lead):
  assert clean(lead + DIALOGUE).text == DIALOGUE.strip()


def test_content_is_never_taken_for_chatter():
  # A lead that is content, a note inside a turn, text without turns: all kept.
  content = "Primes of the form 4k+1 are sums of two squares; 4k+3 primes are not.\n\n"
  assert clean(content + DIALOGUE).text == (content + DIALOGUE).strip()
  inside = DIALOGUE + "Alex: Note: the descent argument needs care.\n"
  assert clean(inside).text == inside.strip()
  prose = "Here is the idea: write p as a sum of two squares.\n\nNote: p is prime."
  assert clean(prose).text == prose


def test_turns_and_speakers():
  text = ("**Teacher:** Let us begin.\n**Student:** Sure.\nStep 1: compute 2+2.\n"
          "Prof. Lee (smiling): Good.\nNote: not a speaker.\nQ: Why?\nA: Because.\n"
          "Teacher: Again.\n")
  turns = split_turns(text)
  assert turns.speakers == ("teacher", "student", "prof. lee", "q", "a")
  assert turns.count == 6
  assert split_turns("x = 3: the root").count == 0


@pytest.mark.parametrize("a, b, speakers", [
    ("Student 1:", "Student 2:", ("student 1", "student 2")),  # numbered, as in Two Students
    ("**Professor 1:**", "**Professor 2:**", ("professor 1", "professor 2")),
    ("*Teacher:*", "*Student:*", ("teacher", "student")),
    ("_Teacher_:", "_Student_:", ("teacher", "student")),
    ("[Interviewer]:", "[Expert]:", ("interviewer", "expert")),
    ("**Layman**:", "**Know-All**:", ("layman", "know-all")),
])
def test_label_layouts_generators_use(a, b, speakers):
  turns = split_turns(f"{a} Why is 7 prime?\n{b} No smaller number divides it.\n{a} I see.\n")
  assert turns.speakers == speakers and turns.count == 3


def test_numbered_and_bracketed_content_is_not_a_speaker():
  text = ("Step 1: add.\nCase 2: odd n.\nChapter 3: primes.\nTurn 1: begin.\nQ1: why?\n"
          "In 2019: a result.\nSection 2.1: more.\n[1]: https://example.org\n*Note:* aside.\n"
          "Student 123: too long a number.\n")
  assert split_turns(text).count == 0


def test_truncated_records_are_flagged_or_dropped(tmp_path):
  records = [record("cut", finish_reason="length"), record("done#1", DIALOGUE + "Alex: Thanks.\n")]
  _, kept, _ = filtered(tmp_path, records)
  assert kept["cut"]["truncated"] is True and kept["done#1"]["truncated"] is False
  _, kept, rejected = filtered(tmp_path, records, "truncated=drop", name="drop")
  assert rejected["cut"]["reject_reasons"] == ["truncated"] and set(kept) == {"done#1"}


def test_generation_errors_are_rejected(tmp_path):
  bad = record("err", "", finish_reason="error")
  bad["error"] = "prompt longer than the context limit"
  _, _, rejected = filtered(tmp_path, [bad])
  assert rejected["err"]["reject_reasons"] == ["generation_error", "empty"]
  assert "context limit" in rejected["err"]["reject_detail"]


# --- stricter rules -----------------------------------------------------------------------------

def test_a_conversation_repeating_one_line_is_rejected(tmp_path):
  loop = "Alex: I think the answer is four, because two and two make four.\n" * 6
  summary, kept, rejected = filtered(tmp_path, [record("loop", loop), record("ok", DIALOGUE)],
                                     "repetition.enabled=true", "turns.enabled=true")
  assert set(kept) == {"ok"}
  reasons = rejected["loop"]["reject_reasons"]
  assert {"repeated_lines", "duplicate_ngrams", "too_few_speakers"} <= set(reasons)


def test_speakers_and_turns_minimums(tmp_path):
  monologue = "Alex: " + "primes are sums of two squares when they are one mod four. " * 3
  _, kept, rejected = filtered(tmp_path, [record("mono", monologue), record("ok", DIALOGUE)],
                               "turns.enabled=true")
  assert set(kept) == {"ok"}
  assert rejected["mono"]["reject_reasons"] == ["too_few_speakers", "too_few_turns"]


def test_copying_the_source_verbatim_is_rejected(tmp_path):
  source = ("Fermat's theorem on sums of two squares states that an odd prime p can be written "
            "as a sum of two squares exactly when p leaves remainder one on division by four, "
            "and the representation is unique up to order and sign of the squares.")
  copy = "Teacher: " + source + "\nStudent: I see.\n"
  _, kept, rejected = filtered(tmp_path, [record("copy", copy, source=source),
                                          record("own", DIALOGUE, source=source)],
                               "copy_source.enabled=true")
  assert set(kept) == {"own"} and rejected["copy"]["reject_reasons"] == ["copies_source"]


# --- duplicates ---------------------------------------------------------------------------------

def _essay(seed, n=300):
  rng = random.Random(seed)
  vocab = [f"w{i}" for i in range(2000)]
  return "A: " + " ".join(rng.choice(vocab) for _ in range(n)) + "\nB: fine.\n"


def test_exact_and_near_duplicates(tmp_path):
  base = _essay(1)
  near = base.replace(base.split()[40], "changed", 1)  # one word differs out of 300
  records = [record("a", base), record("b", base.upper()),  # same normalised words
             record("c", near), record("d", _essay(2)), record("e", _essay(3))]
  summary, kept, rejected = filtered(tmp_path, records, "dedup.near=true")
  assert set(kept) == {"a", "d", "e"}
  assert rejected["b"]["reject_reasons"] == ["exact_duplicate"]
  assert rejected["b"]["reject_detail"] == "exact_duplicate of a"
  assert rejected["c"]["reject_reasons"] == ["near_duplicate"]
  assert rejected["c"]["reject_detail"].startswith("near_duplicate of a")
  _, kept_without, _ = filtered(tmp_path, records, name="exact-only")
  assert set(kept_without) == {"a", "c", "d", "e"}


def test_bloom_index_for_very_large_outputs(tmp_path):
  base = _essay(1)
  records = [record("a", base), record("c", base.replace(base.split()[40], "changed", 1)),
             record("d", _essay(2)), record("e", _essay(3))]
  _, kept, rejected = filtered(tmp_path, records, "dedup.near=true", "dedup.index=bloom")
  assert set(kept) == {"a", "d", "e"}
  assert rejected["c"]["reject_reasons"] == ["near_duplicate"]
  assert "Bloom index" in rejected["c"]["reject_detail"]


def test_result_does_not_depend_on_files_or_workers(tmp_path):
  base = _essay(5)
  records = [record(f"r{i:02d}", _essay(i) if i % 3 else base.replace("w", "w" * (i % 2 + 1), 1))
             for i in range(30)]
  random.Random(0).shuffle(records)
  one = filtered(tmp_path, records, "dedup.near=true", files=1, name="one")
  three = filtered(tmp_path, records, "dedup.near=true", "workers=2", files=3, name="three")
  assert one[1] == three[1] and one[2] == three[2]
  assert one[0]["reasons"] == three[0]["reasons"] and one[0]["reasons"]


def test_signatures_wait_on_scratch_disk_and_are_removed(tmp_path, monkeypatch):
  """Near-duplicate removal reads the MinHash signatures through a memory map in `scratch`,
  so a run over hundreds of millions of records needs disk for them, not memory."""
  from mind_jax.curation import _filter
  seen = []

  def spy(signatures, *args):
    seen.append((type(signatures), str(getattr(signatures, "filename", ""))))
    return near_duplicates(signatures, *args)

  near_duplicates = _filter.near_duplicates
  monkeypatch.setattr(_filter, "near_duplicates", spy)
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  base = _essay(1)
  records = [record("a", base), record("c", base.replace(base.split()[40], "changed", 1)),
             record("d", _essay(2))]
  _, kept, _ = filtered(tmp_path, records, "dedup.near=true", f"scratch={scratch}", files=2)
  assert set(kept) == {"a", "d"}
  assert seen[0][0] is np.memmap and seen[0][1].startswith(str(scratch))
  assert list(scratch.iterdir()) == []


def test_the_decision_pass_holds_columns_not_objects(tmp_path):
  """What pass 1 hands to the decision pass, per record: about a hundred bytes (ids of ~30
  characters), where one Python object per record took 600 and its signature 600 more."""
  from mind_jax.curation._filter import inspect_file
  records = [record(f"doc{i:05d}#0#teacher_student", _essay(i, n=60)) for i in range(400)]
  src = write_parts(tmp_path / "in", records)
  cfg = load_config(FilterConfig, None, [f"input={src}", "out=unused", "dedup.near=true"])
  table = inspect_file(str(src / "part-00000-000000.jsonl"), cfg, "byte", str(tmp_path / "s.npy"))
  assert len(table) == 400 and not table.rejected
  assert len(pickle.dumps(table)) / 400 < 120
  assert np.load(tmp_path / "s.npy").shape == (400, 128)


def test_the_passes_run_in_memory_when_given_no_scratch_file(tmp_path):
  from mind_jax.curation._filter import decide, inspect_file
  base = _essay(1)
  src = write_parts(tmp_path / "in", [record("a", base), record("d", _essay(2)),
                                      record("c", base.replace(base.split()[40], "changed", 1))])
  cfg = load_config(FilterConfig, None, [f"input={src}", "out=unused", "dedup.near=true"])
  table = inspect_file(str(src / "part-00000-000000.jsonl"), cfg, "byte")
  assert table.signatures.shape == (3, 128)
  decisions = decide([table], cfg)
  assert decisions.detail(2).startswith("near_duplicate of a (jaccard ~")


def test_a_record_id_seen_twice_stops_the_run_before_writing(tmp_path):
  records = [record("a"), record("b"), record("a", _essay(1))]
  # Both places are named, file and line.
  with pytest.raises(MindJaxError, match=r"^\S+/part-00000-000000.jsonl:2: record id 'a' appears "
                     r"again \(first at \S+/part-00000-000000.jsonl:1\)$"):
    filtered(tmp_path, records, files=2)
  assert not (tmp_path / "out").exists()


def test_a_file_changed_between_passes_is_named(tmp_path):
  from mind_jax.curation._filter import decide, inspect_file, write_file
  src = write_parts(tmp_path / "in", [record("a"), record("b")])
  part = str(src / "part-00000-000000.jsonl")
  cfg = load_config(FilterConfig, None, [f"input={src}", f"out={tmp_path / 'out'}"])
  table = inspect_file(part, cfg, "byte")
  decisions = decide([table], cfg)
  write_parts(tmp_path / "in", [record("b"), record("a")])  # rewritten by someone else meanwhile
  (tmp_path / "out" / "kept").mkdir(parents=True)
  (tmp_path / "out" / "rejected").mkdir()
  with pytest.raises(MindJaxError, match=r"part-00000-000000.jsonl:1: the file changed while"):
    write_file(decisions.verdicts(0, table), cfg)
  assert list((tmp_path / "out" / "kept").iterdir()) == []  # no partial part left behind


# --- decontamination ----------------------------------------------------------------------------

def test_planted_benchmark_question_is_found_and_listed(tmp_path):
  question = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
              "clips in May. How many clips did Natalia sell altogether in April and May?")
  evals = tmp_path / "gsm8k_test.jsonl"
  evals.write_text(json.dumps({"question": "What is 2 + 2 here?", "answer": "4"}) + "\n" +
                   json.dumps({"question": question, "answer": "72"}) + "\n")
  leak = DIALOGUE + "Alex: Now try this one: " + question.lower() + "\nSam: 72.\n"
  near_miss = DIALOGUE + "Alex: " + " ".join(question.split()[:12]) + " pencils.\n"
  summary, kept, rejected = filtered(
      tmp_path, [record("leak", leak), record("miss", near_miss), record("ok", DIALOGUE)],
      f"decontaminate.files=[{evals}]")
  assert set(kept) == {"miss", "ok"}
  assert rejected["leak"]["reject_reasons"] == ["contaminated"]
  listed = [json.loads(line) for line in (tmp_path / "out" / CONTAMINATION).read_text().splitlines()]
  assert len(listed) == 1 and listed[0]["id"] == "leak"
  assert listed[0]["question"] == f"{evals}:2"  # file and line of the question
  assert listed[0]["ngram"] in question.lower().replace("?", "").replace(",", "").replace(".", "")
  assert summary["contaminated"] == 1


def test_short_questions_match_whole_and_parquet_eval_sets(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  evals = tmp_path / "math_test.parquet"
  pq.write_table(pa.Table.from_pylist([{"problem": "Find the remainder of 2^100 mod 7 please."}]),
                 evals)
  hit = DIALOGUE + "Alex: find the remainder of 2^100 mod 7, please!\n"
  _, kept, rejected = filtered(tmp_path, [record("hit", hit), record("ok", DIALOGUE)],
                               f"decontaminate.files=[{evals}]")
  assert set(kept) == {"ok"} and set(rejected) == {"hit"}


# --- selection ----------------------------------------------------------------------------------

def test_longest_conversation_per_chunk_and_style_selection(tmp_path):
  records = [record("d#0#two_students", DIALOGUE, "two_students", "d", 0),
             record("d#0#debate", DIALOGUE + "Alex: One more point.\n", "debate", "d", 0),
             record("d#1#two_students", DIALOGUE, "two_students", "d", 1),
             record("d#1#debate", DIALOGUE, "debate", "d", 1)]  # a tie: the smaller id wins
  _, kept, rejected = filtered(tmp_path, records, "select.mode=longest", "dedup.exact=false")
  assert set(kept) == {"d#0#debate", "d#1#debate"}
  assert rejected["d#0#two_students"]["reject_reasons"] == ["not_longest_in_chunk"]
  _, kept, rejected = filtered(tmp_path, records, "select.styles=[two_students]",
                               "dedup.exact=false", name="styles")
  assert set(kept) == {"d#0#two_students", "d#1#two_students"}
  assert {r["reject_reasons"][0] for r in rejected.values()} == {"style_not_selected"}


# --- the job's guarantees -----------------------------------------------------------------------

def _mixed_records():
  chatter = "Here is a conversation between two students:\n\n" + DIALOGUE + "\nNote: faithful.\n"
  return [record("a", chatter), record("b", "too short"), record("c", DIALOGUE),
          record("d", DIALOGUE, finish_reason="length"), record("e", "x" * 80),
          record("f", "Ünïcödé talk: " + "ζ" * 40)]


def test_nothing_disappears_and_ids_are_preserved(tmp_path):
  records = _mixed_records()
  summary, kept, rejected = filtered(tmp_path, records, files=2)
  assert not set(kept) & set(rejected)
  assert set(kept) | set(rejected) == {r["id"] for r in records}
  assert summary["input_records"] == len(records) == summary["kept"] + summary["rejected"]
  by_id = {r["id"]: r for r in records}
  for rid, r in rejected.items():  # rejected records are untouched
    assert r["conversation"] == by_id[rid]["conversation"] and r["reject_reasons"]
  for rid, r in kept.items():  # kept ones lose only the chatter, which is kept aside
    assert r["removed_preamble"] + r["conversation"] + r["removed_trailer"] == by_id[rid]["conversation"]
  assert kept["a"]["conversation"] == DIALOGUE.strip()
  for counts in summary["styles"].values():
    assert counts["input"] == counts["kept"] + counts["rejected"]


def test_reruns_are_idempotent(tmp_path):
  records = _mixed_records()
  filtered(tmp_path, records)
  out = tmp_path / "out"
  before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  filtered(tmp_path, records)
  assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
  # Filtering the kept output again keeps all of it, unchanged.
  cfg = load_config(FilterConfig, None, [f"input={out / 'kept'}", f"out={tmp_path / 'again'}"])
  again = run_filter(cfg)
  assert again["rejected"] == 0
  assert read_dir(tmp_path / "again" / "kept") == read_dir(out / "kept")


def test_parquet_in_and_out(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  src = tmp_path / "gen"
  src.mkdir()
  pq.write_table(pa.Table.from_pylist(_mixed_records()), src / "part-00000-000000.parquet")
  cfg = load_config(FilterConfig, None, [f"input={src}", f"out={tmp_path / 'out'}", "tokenizer=byte"])
  summary = run_filter(cfg)
  kept = pq.read_table(tmp_path / "out" / "kept" / "part-00000-000000.parquet").to_pylist()
  assert len(kept) == summary["kept"] > 0
  # Another format is another output: refused, or with overwrite the Parquet parts it wrote go.
  cfg = load_config(FilterConfig, None, [f"input={src}", f"out={tmp_path / 'out'}", "format=jsonl",
                                         "tokenizer=byte"])
  with pytest.raises(MindJaxError, match=r"written with other settings: format \('same' -> 'jsonl'\)"):
    run_filter(cfg)
  run_filter(cfg.model_copy(update={"overwrite": True}))
  assert sorted(p.name for p in (tmp_path / "out" / "kept").iterdir()) == ["part-00000-000000.jsonl"]


def test_tokenizer_comes_from_the_run_record_else_the_records_model_directory(tmp_path):
  from mind_jax.testing import byte_tokenizer
  model_dir = tmp_path / "model"
  byte_tokenizer().save(str(model_dir))
  r = record("r", "a" * 60)
  # The generator's run.json names its tokenizer: that wins over the records.
  src = write_parts(tmp_path / "noted", [r], tokenizer=str(model_dir))
  cfg = load_config(FilterConfig, None, [f"input={src}", f"out={tmp_path / 'noted-out'}", "workers=1"])
  assert run_filter(cfg)["tokenizer"] == str(model_dir)
  # Without a run record (another tool's output), the records' model directory.
  r["model"] = str(model_dir)
  src = write_parts(tmp_path / "bare", [r], tokenizer=None)
  cfg = load_config(FilterConfig, None, [f"input={src}", f"out={tmp_path / 'bare-out'}", "workers=1"])
  assert run_filter(cfg)["tokenizer"] == str(model_dir)
  r["model"] = "meta-llama/Llama-3.1-70B-Instruct"
  src = write_parts(tmp_path / "hub", [r], tokenizer=None)
  cfg = load_config(FilterConfig, None, [f"input={src}", f"out={tmp_path / 'hub-out'}", "workers=1"])
  with pytest.raises(MindJaxError, match="no run.json names the generator's tokenizer; pass "
                     "tokenizer=DIR"):
    run_filter(cfg)


# --- bad input ----------------------------------------------------------------------------------

def test_missing_directory_and_no_parts(tmp_path):
  with pytest.raises(MindJaxError, match="input directory does not exist"):
    run_filter(load_config(FilterConfig, None, [f"input={tmp_path / 'nope'}", "out=x"]))
  (tmp_path / "empty").mkdir()
  with pytest.raises(MindJaxError, match="no part-"):
    run_filter(load_config(FilterConfig, None, [f"input={tmp_path / 'empty'}", "out=x"]))


def test_corrupt_shard_and_missing_fields_lose_nothing(tmp_path):
  records = _mixed_records()
  filtered(tmp_path, records)
  out = tmp_path / "out"
  before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  src = tmp_path / "out-in"
  part = src / "part-00000-000000.jsonl"
  good = part.read_text()
  part.write_text(good + '{"id": "broken", "conversation": \n')
  with pytest.raises(MindJaxError, match=r"part-00000-000000.jsonl:7: malformed JSON"):
    run_filter(load_config(FilterConfig, None, [f"input={src}", f"out={out}"]))
  incomplete = dict(records[0], id="z")
  del incomplete["style"]
  part.write_text(good + json.dumps(incomplete) + "\n")
  with pytest.raises(MindJaxError, match=r":7: missing field 'style'"):
    run_filter(load_config(FilterConfig, None, [f"input={src}", f"out={out}"]))
  part.write_text(good)
  assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_corrupt_parquet_shard_is_named(tmp_path):
  src = write_parts(tmp_path / "gen", _mixed_records())
  (src / "part-00001-000000.parquet").write_bytes(b"PAR1 this is not parquet")
  with pytest.raises(MindJaxError, match=r"part-00001-000000.parquet: not a readable Parquet"):
    run_filter(load_config(FilterConfig, None, [f"input={src}", f"out={tmp_path / 'out'}"]))
  assert not (tmp_path / "out" / "kept").exists()


def test_bad_evaluation_file_fails_before_work(tmp_path):
  evals = tmp_path / "mmlu.jsonl"
  evals.write_text(json.dumps({"choices": ["a", "b"]}) + "\n")
  with pytest.raises(MindJaxError, match=r"mmlu.jsonl:1: no question field"):
    filtered(tmp_path, [record("r")], f"decontaminate.files=[{evals}]")
  assert not (tmp_path / "out" / "kept").exists()


# --- command line -------------------------------------------------------------------------------

def test_command_line(tmp_path, capsys):
  src = write_parts(tmp_path / "gen", _mixed_records())
  status = filter_main([str(src), "--out", str(tmp_path / "out"), "--strict", "--near-dup",
                        "--select", "longest", "--min-tokens", "40", "--workers", "1"])
  assert status == 0
  summary = json.loads((tmp_path / "out" / SUMMARY).read_text())
  assert summary["config"]["turns"]["enabled"] and summary["config"]["dedup"]["near"]
  assert summary["config"]["min_tokens"] == 40 and summary["config"]["select"]["mode"] == "longest"
  assert "kept" in capsys.readouterr().out
  assert filter_main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
  assert "input directory does not exist" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    filter_main(["--help"])
  assert "dedup.threshold" in capsys.readouterr().out


def test_the_filter_and_report_start_without_jax():
  """Their worker processes import only what reading and counting need (JAX would cost each
  worker ~0.15 GB and a second); `import mind_jax` loads its model names on first use."""
  code = ("import sys, mind_jax, mind_jax.filter, mind_jax.report\n"
          "from mind_jax.curation import _filter, _report\n"
          "_filter.load_tokenizer('byte')\n"
          "assert 'jax' not in sys.modules and 'flax' not in sys.modules, 'JAX imported'\n"
          "assert mind_jax.preset('tiny').hidden_size == 64 and 'jax' in sys.modules\n")
  subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_repository_filter_configs_validate():
  import pathlib
  for path in sorted(pathlib.Path(__file__).parent.parent.glob("configs/filter*.yaml")):
    cfg = load_config(FilterConfig, str(path))
    assert cfg.min_tokens == 50


def test_input_and_output_on_gcs(fake_gcs):
  write_parts(fake_gcs / "bucket" / "mind", _mixed_records(), files=2)
  cfg = load_config(FilterConfig, None, ["input=gs://bucket/mind", "out=gs://bucket/filtered",
                                         "workers=1"])
  summary = run_filter(cfg)
  kept = read_dir(fake_gcs / "bucket" / "filtered" / "kept")
  assert summary["kept"] == len(kept) > 0
  assert (fake_gcs / "bucket" / "filtered" / SUMMARY).exists()
  assert not list((fake_gcs / "bucket" / "filtered").rglob("*.tmp"))
