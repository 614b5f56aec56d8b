"""The one exception type for mistakes a user can cause and fix.

The CLI turns it into a single line on stderr and a non-zero exit; anything
else escaping is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, files or environment, explained in one line."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM; the message says how to resume.

    A KeyboardInterrupt, so code that lets Ctrl-C through lets this through too;
    the CLI exits with ``exit_code`` (128 + the signal number: 130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
