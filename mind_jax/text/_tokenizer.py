"""One tokenizer interface over HF tokenizers (tokenizer.json) and SentencePiece models."""

from __future__ import annotations

import abc
import logging
import os
import shutil
from collections.abc import Iterator, Sequence

import numpy as np

from mind_jax._errors import MindJaxError

# Without torch, importing transformers prints "PyTorch was not found..." once per process,
# so once per data-loader or filter worker: noise about models we never ask it for. This is
# transformers' own switch for such advisory lines. It is read when transformers is imported,
# so it is set at this module's import (ahead of the tokenizer loads that import transformers),
# and in os.environ so that spawned workers inherit it. setdefault leaves a user's choice alone.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

log = logging.getLogger(__name__)

# Characters: a text longer than this is encoded in overlapping windows of this size
# (`Tokenizer._windows`), shorter ones whole.
LONG_TEXT = 100_000
WINDOW_OVERLAP = 2_000

Message = dict[str, str]


class Tokenizer(abc.ABC):
  """encode / decode / special ids / chat formatting, whatever the file format."""

  bos_id: int | None
  eos_ids: tuple[int, ...]
  pad_id: int | None

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    ...

  @abc.abstractmethod
  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    ...

  @abc.abstractmethod
  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    ...

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Ids of many texts (no special tokens added), on several cores where the backend can."""
    return [self.encode(text) for text in texts]

  def _encode_with_starts(self, text: str) -> tuple[list[int], list[int]]:
    """Ids of `text` and the character where each token starts (see `_windows`)."""
    raise NotImplementedError

  def encode_windows(self, text: str) -> Iterator[np.ndarray]:
    """The ids of `text` (no special tokens) as consecutive int32 arrays whose concatenation
    is `encode(text)`: window by window for a text over `LONG_TEXT` characters where the
    tokenizer can (`_windows`), so a reader cutting them into pieces holds one window's ids,
    not the text's; otherwise in one array."""
    yield np.asarray(self.encode(text), np.int32)

  def _encode_long(self, text: str) -> np.ndarray:
    """The ids of a text longer than `LONG_TEXT` characters, encoded window by window (see
    `_windows`), so memory follows the window, not the text (a byte-level BPE over one 5 MB
    line took 24 GB)."""
    return np.concatenate(list(self._windows(text)))

  def _windows(self, text: str) -> Iterator[np.ndarray]:
    """The ids of `text` as int32 arrays, one per window, in order.

    Windows of `LONG_TEXT` characters overlap by `WINDOW_OVERLAP`; within each overlap the
    cut goes where both windows' tokens start at the same character and agree over the rest
    of the overlap's first half, so the ids equal whole-text encoding wherever the two
    windows' tokenizations meet again inside the overlap (pre-tokenized BPE and byte-level
    tokenizers always do: tokens never cross a space before a word). Where they never meet,
    the cut is at a shared token start and the ids near it may differ: logged once.
    """
    step, overlap = LONG_TEXT, WINDOW_OVERLAP
    cut = 0
    ids, starts = self._encode_with_starts(text[:step + overlap])
    begin = 0  # where the current window starts in `text`
    while begin + step + overlap < len(text):  # else this window already reaches the end
      nxt = begin + step
      next_ids, next_starts = self._encode_with_starts(text[nxt:nxt + step + overlap])
      here = {begin + s: i for i, s in enumerate(starts)}
      there = [nxt + s for s in next_starts]
      chosen = None
      for j, at in enumerate(there):
        if at < nxt + overlap // 4 or at not in here:
          continue
        if chosen is None:
          chosen = (here[at], j, False)  # a shared start, unchecked
        i, end = here[at], nxt + overlap // 2
        a = [(begin + s, t) for s, t in zip(starts[i:], ids[i:]) if begin + s < end]
        b = [(nxt + s, t) for s, t in zip(next_starts[j:], next_ids[j:]) if nxt + s < end]
        if a == b:
          chosen = (i, j, True)
          break
      if chosen is None:
        raise MindJaxError(f"{self.source}: no token starts in a {overlap}-character stretch "
                           f"of a {len(text)}-character text: cannot encode it in windows")
      i, j, agreed = chosen
      if not agreed:
        log.warning("%s: a %d-character text encoded in windows; its ids near character %d "
                    "may differ from encoding it whole", self.source, len(text), nxt + j)
      yield np.asarray(ids[cut:i], np.int32)
      ids, starts, cut, begin = next_ids, next_starts, j, nxt
    yield np.asarray(ids[cut:], np.int32)

  def count_tokens(self, texts: Sequence[str]) -> list[int]:
    """Token counts of many texts (no special tokens added); a long one's counted window by
    window (`encode_windows`), so memory follows the window, not its token count."""
    texts = list(texts)
    long = {i for i, text in enumerate(texts) if len(text) > LONG_TEXT}
    short = iter(self.encode_batch([text for i, text in enumerate(texts) if i not in long]))
    return [sum(map(len, self.encode_windows(text))) if i in long else len(next(short))
            for i, text in enumerate(texts)]

  @property
  def has_chat_template(self) -> bool:
    return False

  def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
    raise MindJaxError(f"{self.source}: this tokenizer has no chat template")

  @abc.abstractmethod
  def save(self, out_dir: str) -> None:
    ...

  source: str = "<tokenizer>"


class HFTokenizer(Tokenizer):
  """Wraps a transformers tokenizer loaded from local files only."""

  def __init__(self, tokenizer, source: str = "<memory>"):
    self.hf = tokenizer
    self.source = source
    self.bos_id = tokenizer.bos_token_id
    self.eos_ids = (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
    self.pad_id = tokenizer.pad_token_id

  @classmethod
  def from_dir(cls, path: str) -> HFTokenizer:
    # With a tokenizer.json the fast class loads it directly; AutoTokenizer would
    # first import torch (about a second) to resolve the class.
    if os.path.exists(os.path.join(path, "tokenizer.json")):
      from transformers import PreTrainedTokenizerFast as loader
    else:
      from transformers import AutoTokenizer as loader
    try:
      tok = loader.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises many types; the message is what matters
      raise MindJaxError(f"{path}: cannot load tokenizer ({str(e).splitlines()[0]})") from e
    return cls(tok, source=path)

  @property
  def vocab_size(self) -> int:
    return len(self.hf)

  def encode(self, text, add_bos=False):
    if len(text) > LONG_TEXT and getattr(self.hf, "backend_tokenizer", None) is not None:
      ids = self._encode_long(text).tolist()
    else:
      ids = self.hf.encode(text, add_special_tokens=False)
    return [self.bos_id] + ids if add_bos and self.bos_id is not None else ids

  def encode_windows(self, text):
    if len(text) > LONG_TEXT and getattr(self.hf, "backend_tokenizer", None) is not None:
      yield from self._windows(text)
    else:
      yield np.asarray(self.hf.encode(text, add_special_tokens=False), np.int32)

  def _encode_with_starts(self, text):
    encoding = self.hf.backend_tokenizer.encode(text, add_special_tokens=False)
    return encoding.ids, [start for start, _ in encoding.offsets]

  def decode(self, ids, skip_special_tokens=True):
    return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def encode_batch(self, texts):
    backend = getattr(self.hf, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer
      return super().encode_batch(texts)
    # The Rust tokenizer encodes a batch on all cores; without character offsets (which
    # nothing here reads) when it can, about 40% faster.
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    texts = list(texts)
    short = [i for i, t in enumerate(texts) if len(t) <= LONG_TEXT]
    out = [None] * len(texts)
    for i, e in zip(short, encode([texts[i] for i in short], add_special_tokens=False)):
      out[i] = e.ids
    for i in set(range(len(texts))) - set(short):
      out[i] = self._encode_long(texts[i])  # int32 array: a list of ids would be 8x the size
    return out

  @property
  def has_chat_template(self):
    return bool(getattr(self.hf, "chat_template", None))

  def apply_chat_template(self, messages, add_generation_prompt=True):
    if not self.has_chat_template:
      return super().apply_chat_template(messages, add_generation_prompt)
    text = self.hf.apply_chat_template(list(messages), tokenize=False,
                                       add_generation_prompt=add_generation_prompt)
    # The template writes the BOS text itself; encoding without special tokens keeps one BOS.
    return self.hf.encode(text, add_special_tokens=False)

  def save(self, out_dir):
    self.hf.save_pretrained(out_dir)


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece `.model` file (Llama 2 style tokenizer.model)."""

  def __init__(self, model_file: str):
    import sentencepiece as spm
    self.source = model_file
    self.sp = spm.SentencePieceProcessor()
    try:
      self.sp.Load(model_file)
    except (OSError, RuntimeError) as e:
      raise MindJaxError(
          f"{model_file}: not a SentencePiece model ({str(e).splitlines()[0]})") from e
    self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
    self.eos_ids = (self.sp.eos_id(),) if self.sp.eos_id() >= 0 else ()
    self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else None

  @property
  def vocab_size(self):
    return self.sp.GetPieceSize()

  def encode(self, text, add_bos=False):
    ids = self.sp.EncodeAsIds(text)
    return [self.bos_id] + ids if add_bos and self.bos_id is not None else ids

  def encode_batch(self, texts):
    return self.sp.Encode(list(texts), num_threads=os.cpu_count() or 1)

  def decode(self, ids, skip_special_tokens=True):
    ids = [int(i) for i in ids]
    if skip_special_tokens:
      ids = [i for i in ids if not self.sp.IsControl(i)]
    return self.sp.DecodeIds(ids)

  def save(self, out_dir):
    shutil.copyfile(self.source, os.path.join(out_dir, "tokenizer.model"))


def load_tokenizer(path: str) -> Tokenizer:
  """Loads from a model directory (tokenizer.json / tokenizer_config.json / tokenizer.model)
  or from a SentencePiece `.model` file; "byte" is the built-in byte-level tokenizer (a
  directory of that name is `./byte`). Never downloads."""
  from mind_jax.text._byte import BYTE_TOKENIZER, byte_tokenizer
  if path == BYTE_TOKENIZER:
    return byte_tokenizer()
  if os.path.isfile(path):
    return SentencePieceTokenizer(path)
  if not os.path.isdir(path):
    raise MindJaxError(f"{path}: tokenizer path does not exist")
  from mind_jax._paths import check_confined
  check_confined(path)
  if os.path.exists(os.path.join(path, "tokenizer.json")) or os.path.exists(
      os.path.join(path, "tokenizer_config.json")):
    return HFTokenizer.from_dir(path)
  if os.path.exists(os.path.join(path, "tokenizer.model")):
    return SentencePieceTokenizer(os.path.join(path, "tokenizer.model"))
  raise MindJaxError(f"{path}: no tokenizer.json, tokenizer_config.json or tokenizer.model")


def has_tokenizer_files(path: str) -> bool:
  return any(os.path.exists(os.path.join(path, f))
             for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
