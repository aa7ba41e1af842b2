"""The exception types users see: bad input, storage that refuses a write, and a run that
stopped for a reason of its own (a diverged loss)."""

import re


class MindJaxError(ValueError):
  """Bad input: a wrong file, key, shape or setting.

  The message is one line that names the file, key or tensor at fault, so a
  command-line tool can print it without a traceback.
  """


class DiskFull(MindJaxError):
  """A write refused for space (or a read-only file system). The job ends with this one line
  and exit status 1; what it had completed stays on disk and a rerun resumes from it."""


class Diverged(RuntimeError):
  """Training produced a loss that is not finite. Not the user's typo: the job ends with one
  line naming the step and the last good checkpoint, exit status 1."""


# errno values of a write the storage refused: ENOSPC, EDQUOT, EROFS.
REFUSED_WRITE_ERRNOS = {28: "no space left on device", 122: "disk quota exceeded",
                        30: "read-only file system"}
_READ_ONLY, _DENIED = 30, 13
# The same refusals as tensorstore, gcsfs and the Cloud Storage client word them inside other
# exceptions; a bucket that denies writes (HTTP 403 on storage.objects.create) is one of them.
_REFUSAL_TEXT = [
    (30, "read-only file system", re.compile(r"Read-only file system|os_error_code='?30\b")),
    (122, "disk quota exceeded", re.compile(r"Disk quota exceeded|os_error_code='?122\b")),
    (28, "no space left on device",
     re.compile(r"No space left on device|os_error_code='?28\b|storage quota|exceeded .*quota",
                re.IGNORECASE)),
    (_DENIED, "the bucket refused the write (no storage.objects.create permission)",
     re.compile(r"storage\.objects\.(create|delete)")),
]
_WRITTEN = re.compile(r'(?:Failed writing|local file|Failed to open|file):? "([^"]+)"|'
                      r'(gs://[^\s"\']+)')


def remedy(errno_value: int | None) -> str:
  """What the user does about a refused write, by its errno."""
  return {_READ_ONLY: "make it writable and rerun the same command",
          _DENIED: "grant write access to the bucket and rerun the same command"}.get(
              errno_value, "free space and rerun the same command")


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
    if isinstance(seen, MindJaxError):  # ours already names the key and file; never reworded
      return seen if isinstance(seen, DiskFull) else _ours_refused(seen)
    if isinstance(seen, OSError) and seen.errno in REFUSED_WRITE_ERRNOS:
      code, path = seen.errno, seen.filename
      reason = REFUSED_WRITE_ERRNOS[code]
    else:
      text = str(seen)
      for code, reason, pattern in _REFUSAL_TEXT:
        if pattern.search(text):
          match = _WRITTEN.search(text)
          path = match and (match.group(1) or match.group(2))
          break
      else:
        reason = None
    if reason:
      where = ""
      if path and (code in (_READ_ONLY, _DENIED) or "://" in os.fspath(path)):
        where = f" writing {path}"  # free space says nothing here (or an object store has none)
      elif path:
        free = shutil.disk_usage(_existing(os.path.dirname(os.fspath(path)))).free
        where = f" writing {path} ({_size(free)} free there)"
      return DiskFull(f"{reason}{where}; what was completed before is kept; {remedy(code)}")
    seen = seen.__cause__ or seen.__context__
  return None


def _ours_refused(error: MindJaxError) -> DiskFull | None:
  """Our own message, when what caused it was the storage refusing a write, with what to do."""
  cause = error.__cause__
  while cause is not None:
    if isinstance(cause, OSError) and cause.errno in REFUSED_WRITE_ERRNOS:
      return DiskFull(f"{error}; what was completed before is kept; {remedy(cause.errno)}")
    cause = cause.__cause__ or cause.__context__
  return None


def run_cli(job) -> int:
  """Runs a command-line tool's job; bad input becomes one `error:` line and exit status 2, a
  refused write or a diverged run one line and exit status 1.

  A job that returns an int sets the exit status itself.
  """
  import sys

  from mind_jax._devices import cpu_only_unless_accelerated
  cpu_only_unless_accelerated()
  try:
    result = job()
  except Exception as e:  # noqa: BLE001  only a full disk is handled here; the rest re-raised
    stopped = e if isinstance(e, Diverged) else disk_full(e)
    if stopped is None and not isinstance(e, MindJaxError):
      raise
    # One line, always: a message that quotes another library's may carry its line breaks.
    print("error: " + " ".join(part.strip() for part in str(stopped or e).splitlines()),
          file=sys.stderr)
    return 2 if stopped is None else 1
  return result if isinstance(result, int) else 0
