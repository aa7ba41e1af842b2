"""Reading a generated conversation: its turns, the generator's chatter around it, its n-grams.

The generator picks its own layout ("Teacher:", "**Student:**", "Prof. Lee:",
"Q:"), so turns are found by a speaker label at the start of a line. Words are
lowercased runs of letters and digits; n-grams are hashed with CRC-32 so the
hashes are the same in every process and every run (Python's `hash` is not).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import zlib

import numpy as np

_WORD = re.compile(r"\w+")

# A speaker label opens a line: optional list/quote/heading marks, bold or italics or
# brackets, a name of up to four words, an optional "(aside)", a colon, then whitespace.
_EMPHASIS = r"(?:\*{1,2}|_{1,2})?"
_SPEAKER = re.compile(
    r"^[ \t]*(?:[-*#>]+[ \t]*)?" + _EMPHASIS + r"\[?"
    r"(?P<name>[^\W\d_][\w.'’-]*(?:[ \t][\w.'’-]+){0,3}?)"
    r"\]?" + _EMPHASIS + r"[ \t]*(?:\([^)\n]{0,40}\))?[ \t]*" + _EMPHASIS + ":" + _EMPHASIS + r"(?=\s|$)",
    re.MULTILINE)

# Labels that open a line of content, not a speaker.
_NOT_SPEAKERS = frozenset("""
    note notes step example examples solution answer question problem hint hints definition
    theorem lemma proof case part therefore thus so given where let source context summary
    conclusion title topic result results formula equation remark reminder key point points
    explanation recall recap tip warning exercise method approach final output input
    conversation dialogue discussion debate interview transcript scene setting characters
    participants chapter section lesson unit module day week round turn exchange line rule
    property claim fact observation attempt trial test version level phase stage option
    scenario figure table page item task activity
    """.split())

# What a generator calls its output in the chatter around it; the styles in use add theirs
# ("This podcast episode..."), so a new style's notes are stripped as the built-in ones are.
GENRES = ("conversation", "dialogue", "discussion", "debate", "interview", "exchange",
          "transcript")


@functools.lru_cache(maxsize=16)
def _chatter(genres: tuple[str, ...]) -> tuple[re.Pattern, re.Pattern, re.Pattern]:
  """(preamble, a lead-in about the output, trailer) patterns for these genre words."""
  named = "|".join(sorted({re.escape(g.lower()) for g in (*GENRES, *genres) if g}, key=len,
                          reverse=True))
  preamble = re.compile(
      r"^\W*(?:(?:sure|certainly|of course|okay|ok|absolutely|great|alright)\b[\s!,.]*)?"
      r"(?:here(?:'s|’s| is| are)|below (?:is|are)|the following|i have (?:written|created)|"
      rf"i've (?:written|created)|let me|this is an? (?:{named}))\b", re.IGNORECASE)
  about = re.compile(rf"\b(?:{named}|rewrite|rewritten)\b", re.IGNORECASE)
  trailer = re.compile(
      r"^[\s*_(\[]*(?:[-*_=]{3,}\s*$|notes?\b|n\.b\.|(?:this|the above|in this|in the above|"
      rf"that|the) (?:{named})\b|i hope\b|hope this\b|let me know\b|feel free\b|"
      rf"end of (?:the )?(?:{named})\b|\[?end\b)", re.IGNORECASE)
  return preamble, about, trailer


PREAMBLE_MAX_WORDS = 80


def words(text: str) -> list[str]:
  return _WORD.findall(text.lower())


_HASHES: dict[str, int] = {}
_HASHES_MAX = 2_000_000


def word_hashes(tokens: list[str]) -> np.ndarray:
  # Word frequencies are Zipfian: a dictionary lookup is several times cheaper than hashing.
  try:
    return np.array([_HASHES[w] for w in tokens], dtype=np.uint64)
  except KeyError:
    if len(_HASHES) > _HASHES_MAX:
      _HASHES.clear()
    for w in tokens:
      if w not in _HASHES:
        _HASHES[w] = zlib.crc32(w.encode())
    return np.array([_HASHES[w] for w in tokens], dtype=np.uint64)


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
  """One 64-bit hash per run of `n` consecutive word hashes (empty if fewer than n words)."""
  count = len(hashes) - n + 1
  if count <= 0:
    return np.zeros(0, dtype=np.uint64)
  out = np.zeros(count, dtype=np.uint64)
  with np.errstate(over="ignore"):
    for j in range(n):  # polynomial in an odd 64-bit multiplier; wraps modulo 2**64
      out = out * np.uint64(0x9E3779B97F4A7C15) + hashes[j:j + count] + np.uint64(1)
  return out


@dataclasses.dataclass(frozen=True)
class Turns:
  count: int
  speakers: tuple[str, ...]


def speaker_of(line: str) -> str | None:
  match = _SPEAKER.match(line)
  if not match:
    return None
  label = match.group("name").split()
  # A number may end a label ("Student 1", "Speaker 2"); "Step 1" and "Case 2" are stopped by
  # their first word below.
  named = label[:-1] if len(label) > 1 and label[-1].isdigit() and len(label[-1]) <= 2 else label
  # Names are capitalised ("Prof. Lee", "Student A"); "Here is the idea:" is prose.
  if not all(word[0].isupper() for word in named) or any(ch.isdigit() for ch in "".join(named)):
    return None
  name = " ".join(" ".join(label).lower().replace("’", "'").strip(".'-_").split())
  if not name or name.split()[0] in _NOT_SPEAKERS:
    return None
  return name


def split_turns(text: str) -> Turns:
  """Turns (lines opening with a speaker label) and the distinct speakers, in order of
  appearance."""
  speakers, count = [], 0
  for line in text.splitlines():
    name = speaker_of(line)
    if name is not None:
      count += 1
      if name not in speakers:
        speakers.append(name)
  return Turns(count, tuple(speakers))


@dataclasses.dataclass(frozen=True)
class Cleaned:
  """`raw == preamble + text + trailer`, exactly."""

  text: str
  preamble: str
  trailer: str


def clean(raw: str, genres: tuple[str, ...] = ()) -> Cleaned:
  """Strips generator chatter: a short lead-in before the first turn that announces the
  conversation ("Sure! Here is a debate about..."), and notes after the last turn ("Note: this
  dialogue...", "I hope this helps"); `genres` adds words the output is called by besides
  `GENRES`. Text without speaker turns is left alone: there is no telling where a
  conversation would start."""
  preamble, about, trailer = _chatter(genres)
  lines = raw.splitlines(keepends=True)
  turn_lines = [i for i, line in enumerate(lines) if speaker_of(line) is not None]
  if not turn_lines:
    return _trimmed(raw, 0, len(raw))
  offsets = np.cumsum([0] + [len(line) for line in lines]).tolist()
  start = 0
  lead = "".join(lines[:turn_lines[0]])
  if lead.strip() and len(words(lead)) <= PREAMBLE_MAX_WORDS and (
      preamble.search(lead.strip()) or about.search(lead)):
    start = offsets[turn_lines[0]]
  end = len(raw)
  # The last turn runs to the first blank-line-separated paragraph that reads as a note.
  after = turn_lines[-1] + 1
  previous_blank = False
  for i in range(after, len(lines)):
    line = lines[i]
    if not line.strip():
      previous_blank = True
      continue
    if (previous_blank or re.match(r"^\s*[-*_=]{3,}\s*$", line)) and trailer.match(line):
      end = offsets[i]
      break
    previous_blank = False
  return _trimmed(raw, start, end)


def _trimmed(raw: str, start: int, end: int) -> Cleaned:
  body = raw[start:end]
  left = len(body) - len(body.lstrip())
  right = len(body.rstrip())
  return Cleaned(text=body[left:right], preamble=raw[:start + left], trailer=raw[start + right:])
