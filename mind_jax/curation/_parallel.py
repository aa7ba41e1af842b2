"""Work on part files in parallel processes, results in file order."""

from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing

from mind_jax._progress import progress_bar


class FileMapper:
  """`workers` spawn processes (none for one worker), kept for several passes over the files.

  Spawn, not fork: the parent may hold JAX's threads. Each call's arguments are built as work
  is handed out, two per worker ahead, so the parent never holds every file's payload at once.
  """

  def __init__(self, workers: int):
    self.workers = workers
    self.pool = None

  def __enter__(self):
    if self.workers > 1:
      self.pool = concurrent.futures.ProcessPoolExecutor(
          self.workers, mp_context=multiprocessing.get_context("spawn"))
    return self

  def __exit__(self, *exc):
    if self.pool is not None:
      self.pool.shutdown(cancel_futures=True)
    return False

  def map(self, fn, items: list, desc: str, arguments) -> list:
    """[fn(*arguments(*item)) for item in items], with a progress bar over the files."""
    results = [None] * len(items)
    with progress_bar(len(items), desc, unit="file") as bar:
      if self.pool is None:
        for i, item in enumerate(items):
          results[i] = fn(*arguments(*item))
          bar.update(1)
        return results
      pending, queue = {}, iter(enumerate(items))
      while True:
        for i, item in itertools.islice(queue, max(2 * self.workers - len(pending), 0)):
          pending[self.pool.submit(fn, *arguments(*item))] = i
        if not pending:
          return results
        done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
          results[pending.pop(future)] = future.result()
          bar.update(1)
