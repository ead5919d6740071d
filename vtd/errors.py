"""Errors that mean "the input or config is wrong" (reported in one line, no traceback)."""


class UserError(ValueError):
  """A problem with the config, the data or the command line; the message names it."""
