"""The exception types users see: bad input, and storage that refuses a write."""

import re


class MindJaxError(ValueError):
  """Bad input: a wrong file, key, shape or setting.

  The message is one line that names the file, key or tensor at fault, so a
  command-line tool can print it without a traceback.
  """


class DiskFull(MindJaxError):
  """A write refused for space (or a read-only file system). The job ends with this one line
  and exit status 1; what it had completed stays on disk and a rerun resumes from it."""


# errno values of a write the storage refused: ENOSPC, EDQUOT, EROFS.
_FULL_ERRNOS = {28: "no space left on device", 122: "disk quota exceeded",
                30: "read-only file system"}
# The same, as tensorstore and gcsfs word them inside other exceptions.
_FULL_TEXT = re.compile(r"No space left on device|os_error_code='?(28|122|30)'?|Disk quota "
                        r"exceeded|Read-only file system|storage quota", re.IGNORECASE)
_WRITTEN = re.compile(r'(?:Failed writing|local file|Failed to open|file): "([^"]+)"')


def _existing(path: str) -> str:
  import os
  folder = os.path.abspath(os.fspath(path))
  while not os.path.exists(folder):
    folder = os.path.dirname(folder)
  return folder


def _size(n: float) -> str:
  return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.0f} KiB"


def check_space(path: str, need: int, key: str, what: str, kept: str) -> None:
  """Refuses, as `DiskFull`, to write `what` (about `need` bytes) under `path` where the disk
  has less free: one line before the write, instead of a failure inside it."""
  import shutil
  free = shutil.disk_usage(_existing(path)).free
  if free < need:
    raise DiskFull(f"{key}={path}: {_size(free)} free, but {what} needs about {_size(need)}; "
                   f"{kept}; free space and rerun the same command")


def disk_full(error: BaseException) -> DiskFull | None:
  """`error` (or what caused it) as one line if it is the storage refusing a write: the reason,
  the file, the space free where it was going, and that a rerun resumes from what was kept."""
  import os
  import shutil
  seen = error
  while seen is not None:
    if isinstance(seen, DiskFull):
      return seen
    reason = None
    if isinstance(seen, OSError) and seen.errno in _FULL_ERRNOS:
      reason, path = _FULL_ERRNOS[seen.errno], seen.filename
    elif _FULL_TEXT.search(str(seen)):
      text = str(seen)
      match = _WRITTEN.search(text)
      reason = "no space left on device"
      for errno_value, words in _FULL_ERRNOS.items():
        if words.lower() in text.lower() or f"os_error_code='{errno_value}'" in text:
          reason = words
      path = match.group(1) if match else None
    if reason:
      where = ""
      if path:
        free = shutil.disk_usage(_existing(os.path.dirname(os.fspath(path)))).free
        where = f" writing {path} ({_size(free)} free there)"
      return DiskFull(f"{reason}{where}; what was completed before is kept; free space and "
                      "rerun the same command")
    seen = seen.__cause__ or seen.__context__
  return None


def run_cli(job) -> int:
  """Runs a command-line tool's job; bad input becomes one `error:` line and exit status 2.

  A job that returns an int sets the exit status itself.
  """
  import sys

  from mind_jax._devices import cpu_only_unless_accelerated
  cpu_only_unless_accelerated()
  try:
    result = job()
  except Exception as e:  # noqa: BLE001  only a full disk is handled here; the rest re-raised
    full = disk_full(e)
    if full is None and not isinstance(e, MindJaxError):
      raise
    # One line, always: a message that quotes another library's may carry its line breaks.
    print("error: " + " ".join(part.strip() for part in str(full or e).splitlines()),
          file=sys.stderr)
    return 2 if full is None else 1
  return result if isinstance(result, int) else 0
