"""Progress bars and log set-up shared by the command-line tools."""

from __future__ import annotations

import contextlib
import logging
import sys

from tqdm.auto import tqdm


@contextlib.contextmanager
def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True):
  """A tqdm bar with rate and ETA; bytes are shown scaled (MB/s)."""
  scale = unit == "B"
  bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
             disable=not enabled, dynamic_ncols=True, file=sys.stderr)
  try:
    yield bar
  finally:
    bar.close()


class _CurrentStderr(logging.StreamHandler):
  """Writes to whatever sys.stderr is when a line is logged: notebooks and tests swap it, and
  a handler holding the first one would write to a closed stream."""

  def __init__(self):
    super().__init__(sys.stderr)

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value


def setup_logging(verbose: bool = False) -> None:
  """INFO (DEBUG with `verbose`) lines of mind_jax's own loggers on stderr, timestamped.

  Only mind_jax's loggers: importing grain or orbax already gives the root logger a handler
  at WARNING (so configuring the root would do nothing), and other libraries are chatty at
  INFO about compilation and backends."""
  log = logging.getLogger("mind_jax")
  log.setLevel(logging.DEBUG if verbose else logging.INFO)
  log.propagate = False  # the root's handlers (a library's) would print each line twice
  if not any(isinstance(h, _CurrentStderr) for h in log.handlers):
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    log.addHandler(handler)
