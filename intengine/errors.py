"""User-facing errors: one line, naming the problem; the CLI prints them without a traceback."""


class IntengineError(Exception):
    """An error caused by the user's input (file, shape, value, option), not by a bug."""
