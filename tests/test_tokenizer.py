"""One tokenizer interface over HF tokenizer.json and SentencePiece models."""

import pytest
import sentencepiece as spm

from mind_jax import MindJaxError, load_tokenizer
from mind_jax.testing import byte_tokenizer
from mind_jax.text import LONG_TEXT
from mind_jax.text._tokenizer import WINDOW_OVERLAP

MATH = ["The derivative of x^2 is 2x.", "Let n be an odd integer; then n^2 is odd.",
        "A triangle with sides 3, 4 and 5 is right-angled.", "The sum 1 + 2 + ... + n is n(n+1)/2."]


def test_byte_tokenizer_round_trips_unicode_and_has_chat_template(tmp_path):
  tok = byte_tokenizer()
  text = "∫ x² dx = x³/3 + C"
  ids = tok.encode(text, add_bos=True)
  assert ids[0] == tok.bos_id == 256
  assert ids[1:] == list(text.encode("utf-8"))
  assert tok.decode(ids) == text
  chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
  assert chat.count(tok.bos_id) == 1
  assert tok.decode(chat, skip_special_tokens=False).endswith(
      "<|start_header_id|>assistant<|end_header_id|>\n\n")
  tok.save(str(tmp_path))
  again = load_tokenizer(str(tmp_path))
  assert again.encode(text) == tok.encode(text) and again.has_chat_template


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
  prefix = str(tmp_path_factory.mktemp("spm") / "math")
  spm.SentencePieceTrainer.train(sentence_iterator=iter(MATH * 20), model_prefix=prefix,
                                 vocab_size=80, model_type="bpe", bos_id=1, eos_id=2, unk_id=0,
                                 minloglevel=2)
  return prefix + ".model"


def test_sentencepiece_encode_decode_and_save(spm_model, tmp_path):
  tok = load_tokenizer(spm_model)
  ids = tok.encode(MATH[1], add_bos=True)
  assert ids[0] == tok.bos_id == 1 and tok.eos_ids == (2,)
  assert tok.decode(ids) == MATH[1]
  assert not tok.has_chat_template
  with pytest.raises(MindJaxError, match="no chat template"):
    tok.apply_chat_template([{"role": "user", "content": "hi"}])
  tok.save(str(tmp_path))
  assert load_tokenizer(str(tmp_path)).encode(MATH[0]) == tok.encode(MATH[0])


def test_bad_tokenizer_paths(tmp_path):
  with pytest.raises(MindJaxError, match="does not exist"):
    load_tokenizer(str(tmp_path / "nope"))
  with pytest.raises(MindJaxError, match="no tokenizer.json"):
    load_tokenizer(str(tmp_path))
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(MindJaxError, match="not a SentencePiece model"):
    load_tokenizer(str(tmp_path / "junk.model"))


def _bpe_with_regex(tmp_path):
  """A byte-level BPE with the GPT-2 pre-tokenizer regex (Llama 3's kind), trained here."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  core = Tokenizer(models.BPE())
  core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  core.decoder = decoders.ByteLevel()
  core.train_from_iterator(MATH * 50, trainers.BpeTrainer(
      vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  PreTrainedTokenizerFast(tokenizer_object=core).save_pretrained(str(tmp_path))
  return load_tokenizer(str(tmp_path))


def test_a_text_longer_than_a_window_gets_the_ids_of_whole_text_encoding(tmp_path):
  """Texts over LONG_TEXT characters are encoded in overlapping windows (memory follows the
  window): the ids equal the UTF-8 bytes (byte tokenizer) and the BPE's own encoding of the
  whole text, across every window boundary."""
  import numpy as np
  from mind_jax.text import LONG_TEXT
  rs = np.random.RandomState(0)
  words = ["the", "sum", "x²", "∫", "n(n+1)/2", "odd", "\n\n", "  ", "3,", "4"]
  text = " ".join(rs.choice(words) for _ in range(3 * LONG_TEXT // 3))
  assert len(text) > 2 * LONG_TEXT
  byte = byte_tokenizer()
  assert byte.encode(text) == list(text.encode("utf-8"))
  assert np.array_equal(byte.encode_batch(["short", text])[1], list(text.encode("utf-8")))
  assert byte.count_tokens(["short", text]) == [5, len(text.encode("utf-8"))]
  bpe = _bpe_with_regex(tmp_path)
  whole = bpe.hf.backend_tokenizer.encode(text, add_special_tokens=False).ids
  assert bpe.encode(text) == whole
  assert np.array_equal(bpe.encode_batch([text])[0], whole)
  # A reader cutting pieces, and a count, take the ids a window at a time.
  windows = list(bpe.encode_windows(text))
  assert len(windows) > 2 and np.concatenate(windows).tolist() == whole
  assert bpe.count_tokens([text, "odd"]) == [len(whole), len(bpe.encode("odd"))]


@pytest.mark.parametrize("extra", [1, WINDOW_OVERLAP // 4, WINDOW_OVERLAP, WINDOW_OVERLAP + 1])
def test_a_text_ending_just_past_a_window_is_encoded_whole(extra):
  """The last window may hold only a few characters past the one before it."""
  text = ("a sum of odd numbers " * (2 * LONG_TEXT // 20))[:2 * LONG_TEXT + extra]
  assert byte_tokenizer().encode(text) == list(text.encode("utf-8"))
