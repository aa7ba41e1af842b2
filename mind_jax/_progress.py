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


def setup_logging(verbose: bool = False) -> None:
  # force: importing grain or orbax already gave the root logger a handler at WARNING, which
  # would otherwise keep this configuration (and every INFO line of the job) out.
  logging.basicConfig(
      level=logging.DEBUG if verbose else logging.INFO, force=True,
      format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
  # absl and jax are chatty at INFO about compilation and backends.
  for noisy in ("jax", "absl", "orbax", "httpx", "urllib3"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
