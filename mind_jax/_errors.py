"""The one exception type users see from bad input."""


class MindJaxError(ValueError):
  """Bad input: a wrong file, key, shape or setting.

  The message is one line that names the file, key or tensor at fault, so a
  command-line tool can print it without a traceback.
  """
