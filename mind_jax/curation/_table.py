"""What the filter's first pass learned about the records of one file, as columns.

The decision pass holds every record of the output at once (duplicates and the
longest conversation per chunk are global questions), so records are kept as
array rows, not as a Python object per record: about 90 bytes per record with
24-character ids (measured over 20,000 records; one object per record took 625
bytes, and 1,237 with its MinHash signature). Signatures, the one wide column,
are written to a scratch file per input file and read back through memory maps.
Only records that a per-record rule rejected carry Python objects: their
reasons and details.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pyarrow as pa

from mind_jax._atomic import atomic_open
from mind_jax.curation._decontam import Match
from mind_jax.curation._rules import Facts

EXACT_KEY_BYTES = 12
CHUNK_KEY_BYTES = 16


@dataclasses.dataclass
class FileFacts:
  """One input file's records, row i being the file's i-th record."""

  path: str
  ids: pa.Array                  # record ids (strings)
  styles: list[str]              # the file's style names; `style` indexes them
  style: np.ndarray              # uint16
  chunk: np.ndarray              # S16 key of (doc_id, chunk_index)
  tokens: np.ndarray             # int32: tokens of the cleaned conversation
  turns: np.ndarray              # int32
  speakers: np.ndarray           # int32
  truncated: np.ndarray          # bool
  exact: np.ndarray              # S12 exact-duplicate key (empty where a rule rejected)
  rejected: dict[int, tuple[list[str], list[str]]]  # row -> (reasons, details)
  matches: dict[int, list[Match]]                   # row -> evaluation questions it contains
  # One MinHash row per record (zeros where rejected): a scratch .npy file, or the array itself
  # when pass 1 was given no file.
  signatures: str | np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.tokens)


def chunk_key(doc_id: str, chunk_index: int) -> bytes:
  return hashlib.blake2b(f"{doc_id}\0{chunk_index}".encode(), digest_size=CHUNK_KEY_BYTES).digest()


class FileFactsBuilder:
  """Collects one file's rows as pass 1 judges them."""

  def __init__(self, path: str, num_perm: int | None):
    self.path, self.num_perm = path, num_perm
    self.ids, self.style, self.chunk, self.exact = [], [], [], []
    self.numbers: list[tuple[int, int, int, bool]] = []
    self.styles: dict[str, int] = {}
    self.rejected, self.matches = {}, {}
    self.signatures: list[np.ndarray] = []

  def add(self, facts: Facts, exact: bytes | None, signature: np.ndarray | None,
          matches: list[Match]) -> None:
    row = len(self.ids)
    self.ids.append(facts.id)
    self.style.append(self.styles.setdefault(facts.style, len(self.styles)))
    self.chunk.append(chunk_key(*facts.chunk))
    self.numbers.append((facts.tokens, facts.turns, facts.speakers, facts.truncated))
    self.exact.append(exact or b"")
    if facts.reasons:
      self.rejected[row] = (facts.reasons, facts.detail)
    if matches:
      self.matches[row] = matches
    if self.num_perm is not None:
      self.signatures.append(signature if signature is not None
                             else np.zeros(self.num_perm, dtype=np.uint32))

  def build(self, signature_file: str | None) -> FileFacts:
    numbers = np.array(self.numbers, dtype=np.int64).reshape(-1, 4)
    signatures = None
    if self.num_perm is not None:
      signatures = (np.stack(self.signatures) if self.signatures
                    else np.zeros((0, self.num_perm), dtype=np.uint32))
      if signature_file:
        with atomic_open(signature_file, "wb") as f:
          np.save(f, signatures)
        signatures = signature_file
    return FileFacts(
        path=self.path, ids=pa.array(self.ids, type=pa.string()), styles=list(self.styles),
        style=np.array(self.style, dtype=np.uint16),
        chunk=np.array(self.chunk, dtype=f"S{CHUNK_KEY_BYTES}"),
        tokens=numbers[:, 0].astype(np.int32), turns=numbers[:, 1].astype(np.int32),
        speakers=numbers[:, 2].astype(np.int32), truncated=numbers[:, 3].astype(bool),
        exact=np.array(self.exact, dtype=f"S{EXACT_KEY_BYTES}"), rejected=self.rejected,
        matches=self.matches, signatures=signatures)
