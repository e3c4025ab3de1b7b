"""The one exception type for problems a user can fix.

The CLI catches :class:`UserError` and prints its message as one line, with no
traceback; every other exception is an internal bug and stays loud.
"""


class UserError(Exception):
    """A problem the user can fix: printed as one line by the CLI, never with a traceback."""
