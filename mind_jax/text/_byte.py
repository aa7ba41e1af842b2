"""The byte-level tokenizer: built here, never downloaded, found by `load_tokenizer("byte")`.

Ids 0-255 are the bytes, with Llama-3-style special tokens and a chat template. With a
randomly initialised model it makes a complete generator (the smoke-test model) whose outputs
are meaningless but whose every code path is real.
"""

from __future__ import annotations

from mind_jax.text._tokenizer import HFTokenizer

# The name that stands for this tokenizer wherever a tokenizer directory is asked for.
BYTE_TOKENIZER = "byte"

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"]

# Llama 3's turn layout, in a template of our own.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def _byte_alphabet() -> list[str]:
  """Printable stand-ins for the 256 byte values (the byte-level BPE convention)."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
      list(range(ord("®"), ord("ÿ") + 1))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return [chars[b] for b in range(256)]


def byte_tokenizer() -> HFTokenizer:
  """Byte-level tokenizer: id == byte value; specials from 256 (BOS 256, EOS 257, EOT 260).

  `load_tokenizer("byte")` returns it: the smoke-test model's tokenizer, named in the run
  records of its outputs like any other generator's."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
  core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
  core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  core.decoder = decoders.ByteLevel()
  core.add_special_tokens(SPECIAL_TOKENS)
  fast = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|begin_of_text|>",
                                 eos_token="<|end_of_text|>", chat_template=CHAT_TEMPLATE)
  return HFTokenizer(fast, source=BYTE_TOKENIZER)
