"""The one exception type users see from bad input."""


class MindJaxError(ValueError):
  """Bad input: a wrong file, key, shape or setting.

  The message is one line that names the file, key or tensor at fault, so a
  command-line tool can print it without a traceback.
  """


def run_cli(job) -> int:
  """Runs a command-line tool's job; bad input becomes one `error:` line and exit status 2.

  A job that returns an int sets the exit status itself.
  """
  import sys

  from mind_jax._devices import cpu_only_unless_accelerated
  cpu_only_unless_accelerated()
  try:
    result = job()
  except MindJaxError as e:
    # One line, always: a message that quotes another library's may carry its line breaks.
    print("error: " + " ".join(part.strip() for part in str(e).splitlines()), file=sys.stderr)
    return 2
  return result if isinstance(result, int) else 0
