"""The one exception type for mistakes a user can cause and fix.

The CLI turns it into a single line on stderr and a non-zero exit; anything
else escaping is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, files or environment, explained in one line."""

    exit_code = 2
