"""The host's record of the KV pool: free pages, reference counts, and cached prompt prefixes.

Plain Python, no JAX: every host of an engine runs the same calls in the same order and so
makes the same decisions. The pool is split into shards (one per way the decode slots split
over the mesh); a sequence takes pages from its slot's shard only, so its pages sit on the
chips that decode it.

A prefix (the first tokens of a prompt, shared by other requests) is remembered by its token
ids: its whole pages, and its last, partly filled page if any. A request with the same prefix
reads the whole pages in place and gets its own copy of the partial one (it writes its own
tokens after the prefix's there). The cache holds a reference on the pages it remembers; an
entry no sequence is using is dropped, least recently used first, as soon as pages are short
(one in use is kept: dropping it would free nothing and lose the prefix for its sharers).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class Prefix:
  """A cached prefix: `tokens` long, in `pages` (the last partly filled when tokens % page)."""

  tokens: int
  pages: tuple[int, ...]


def prefix_key(ids) -> bytes:
  return hashlib.sha256(np.asarray(ids, np.int32).tobytes()).digest()


class PagePool:
  """Pages `shard * per_shard ... (shard + 1) * per_shard - 1` belong to shard `shard`."""

  def __init__(self, per_shard: int, shards: int, page_size: int):
    self.per_shard, self.shards, self.page_size = per_shard, shards, page_size
    self.refs = np.zeros(per_shard * shards, np.int32)
    # Lowest ids first, so a run's page choices are easy to read in a test or a log.
    self._free = [collections.deque(range(s * per_shard, (s + 1) * per_shard))
                  for s in range(shards)]
    self._prefixes: list[collections.OrderedDict[bytes, Prefix]] = [
        collections.OrderedDict() for _ in range(shards)]

  def free(self, shard: int) -> int:
    return len(self._free[shard])

  def take(self, shard: int, count: int, keep=frozenset()) -> list[int] | None:
    """`count` fresh pages of `shard` (reference 1), dropping cached prefixes to make room;
    None (and nothing taken) if the shard cannot supply them. Prefixes in `keep` (those
    waiting requests will read) are dropped last."""
    # Only entries no sequence is using free pages when dropped; an entry in use stays, so the
    # requests sharing a running prefix still find it.
    unused = sorted((key for key, p in self._prefixes[shard].items()
                     if all(self.refs[page] == 1 for page in p.pages)),
                    key=lambda key: key in keep)  # stable: least recently used first
    unused = iter(unused)
    while len(self._free[shard]) < count:
      key = next(unused, None)
      if key is None:
        break
      self._forget(shard, key)
    if len(self._free[shard]) < count:
      return None
    pages = [self._free[shard].popleft() for _ in range(count)]
    self.refs[pages] = 1
    return pages

  def share(self, pages) -> None:
    for page in pages:
      self.refs[page] += 1

  def release(self, pages) -> None:
    for page in pages:
      self.refs[page] -= 1
      if self.refs[page] == 0:
        self._free[page // self.per_shard].append(page)
      assert self.refs[page] >= 0, page

  def lookup(self, shard: int, key: bytes) -> Prefix | None:
    entry = self._prefixes[shard].get(key)
    if entry is not None:
      self._prefixes[shard].move_to_end(key)
    return entry

  def shards_with(self, key: bytes) -> list[int]:
    return [s for s in range(self.shards) if key in self._prefixes[s]]

  def remember(self, shard: int, key: bytes, prefix: Prefix) -> None:
    if key in self._prefixes[shard]:
      return
    self.share(prefix.pages)
    self._prefixes[shard][key] = prefix

  def cached_pages(self) -> int:
    return sum(len(p.pages) for shard in self._prefixes for p in shard.values())

  def _forget(self, shard: int, key: bytes) -> None:
    self.release(self._prefixes[shard].pop(key).pages)
