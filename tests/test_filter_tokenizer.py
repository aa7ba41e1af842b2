"""The filter counts tokens with the generator's tokenizer, not with bytes.

The other filter tests count with the byte tokenizer (one token per UTF-8 byte), which is
also the filter's fallback: there a filter that always counted bytes would pass. Here the
generator's tokenizer is word-level (one token per whitespace-separated word), so its counts
are about a sixth of the byte counts, and every decision below goes the other way if bytes
are counted.
"""

import pytest

from mind_jax.config import load_config
from mind_jax.curation import FilterConfig, run_filter
from mind_jax.text import load_tokenizer

from conftest import read_dir, record, write_parts

WORDS = ["prime", "sumsq", "lemma", "proof", "field", "group", "basis", "orbit", "ideal", "torus"]


def words(n):
  """n words of 5 letters: n tokens for the word-level tokenizer, 6n - 1 bytes."""
  return " ".join(WORDS[i % len(WORDS)] for i in range(n))


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
  """A generator's tokenizer directory (tokenizer.json), as save_pretrained writes it."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]"] + WORDS)},
                                    unk_token="[UNK]"))
  core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  path = tmp_path_factory.mktemp("word-tokenizer")
  PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]").save_pretrained(str(path))
  return str(path)


def test_the_word_tokenizer_counts_words_not_bytes(word_tokenizer):
  assert load_tokenizer(word_tokenizer).count_tokens([words(60), words(40)]) == [60, 40]
  assert len(words(60).encode()) == 359 and len(words(40).encode()) == 239


def filtered(tmp_path, records, *overrides, run_record_tokenizer=None):
  src = write_parts(tmp_path / "in", records, tokenizer=run_record_tokenizer)
  cfg = load_config(FilterConfig, None, [f"input={src}", f"out={tmp_path / 'out'}", "workers=1",
                                         *overrides])
  run_filter(cfg)
  return read_dir(tmp_path / "out" / "kept"), read_dir(tmp_path / "out" / "rejected")


@pytest.mark.parametrize("named_by", ["run-record", "record-model", "tokenizer-option"])
@pytest.mark.parametrize("min_tokens", [50, 61])
def test_min_tokens_counts_the_generators_tokens(tmp_path, word_tokenizer, named_by, min_tokens):
  # Three ways the generator's tokenizer is named: the run record generate writes beside its
  # parts, else the directory each record's `model` field names, or tokenizer=DIR.
  records = [record("sixty", words(60)), record("forty", words(40))]
  for r in records:
    r["model"] = word_tokenizer if named_by == "record-model" else "smoke-test:tiny-random-seed0"
  kept, rejected = filtered(
      tmp_path, records, f"min_tokens={min_tokens}",
      *([f"tokenizer={word_tokenizer}"] if named_by == "tokenizer-option" else []),
      run_record_tokenizer=word_tokenizer if named_by == "run-record" else None)
  # 60 and 40 word tokens (359 and 239 bytes: counted in bytes, both would pass both limits).
  assert "40 < %d tokens" % min_tokens in rejected["forty"]["reject_detail"]
  assert rejected["forty"]["reject_reasons"] == ["too_short"]
  if min_tokens == 50:
    assert set(kept) == {"sixty"}
    assert kept["sixty"]["conversation_tokens"] == 60
  else:
    assert set(rejected) == {"sixty", "forty"}
    assert "60 < 61 tokens" in rejected["sixty"]["reject_detail"]
