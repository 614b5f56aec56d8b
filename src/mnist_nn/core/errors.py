"""The one exception type for mistakes a user can cause and fix, and how its messages name options.

The CLI turns a UserError into a single line on stderr and a non-zero exit; anything
else escaping is a bug and keeps its traceback.

Naming an option in a message
-----------------------------
The library is called from Python (``mnist_nn.train(recipe, batch_size=0)``) and from the
command line (``mnist-nn train --batch-size 0``), and a message should speak the caller's
language. So library code never writes a flag into a message; it names the option by its
Python name through ``option()``::

    raise UserError(f"{option('top_k')} must be a positive integer, got {top_k}")
    raise UserError(f"pass {option('data_dir', metavar='DIR')} or set MNIST_NN_DATA=DIR")
    raise UserError(f"{option('device', 'cuda')} was asked for, but PyTorch sees no CUDA GPU")

``str(error)`` (what a Python caller sees) renders these as ``top_k``, ``data_dir=DIR`` and
``device='cuda'``; the CLI renders them as ``--top-k``, ``--data-dir DIR`` and ``--device cuda``
through ``error.render(flags)``, where ``flags`` maps the few Python names whose flag is not
simply ``--`` plus the name with dashes (``fmt`` -> ``--format``). To apply it to another module,
replace each literal ``--flag`` in its UserError messages by ``option("python_name")`` (with
the value or metavar the message shows); code that re-raises a UserError with a prefix keeps
the marks by building on ``error.template``, not ``str(error)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Marks an option inside a message: GS name RS cli-value RS python-value GS. Control characters
# that no path, name or number in a message contains, so the marks cannot be confused with text.
_MARK, _SEP = "\x1d", "\x1e"
_MARKED = re.compile(f"{_MARK}([A-Za-z_][A-Za-z0-9_]*){_SEP}([^{_MARK}]*){_SEP}([^{_MARK}]*){_MARK}")


def option(name: str, value: Any = None, *, metavar: str | None = None) -> str:
    """An option named in a UserError message, by its Python name; see the module's docstring.

    ``value``: a value it was given (``--device cuda`` / ``device='cuda'``); ``metavar``: a
    placeholder for one (``--data-dir DIR`` / ``data_dir=DIR``).
    """
    if not name.isidentifier():
        raise ValueError(f"option names are Python identifiers, got {name!r}")
    if value is not None:
        cli, python = str(value), repr(value)
    elif metavar is not None:
        cli = python = metavar
    else:
        cli = python = ""
    return f"{_MARK}{name}{_SEP}{cli}{_SEP}{python}{_MARK}"


def cli_flag(name: str, flags: Mapping[str, str] | None = None) -> str:
    """The command-line flag of a Python option name: ``flags[name]``, else ``--`` + the name with dashes."""
    return (flags or {}).get(name) or "--" + name.replace("_", "-")


class UserError(Exception):
    """A problem with the user's input, files or environment, explained in one line."""

    exit_code = 2

    @property
    def template(self) -> str:
        """The message with its options still marked: build on this to re-raise with a prefix."""
        return str(self.args[0]) if self.args else ""

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """The message for the command line: each option as its flag (see ``cli_flag``)."""

        def as_flag(match: re.Match[str]) -> str:
            flag = cli_flag(match[1], flags)
            return f"{flag} {match[2]}" if match[2] else flag

        return _MARKED.sub(as_flag, self.template)

    def __str__(self) -> str:
        # For Python callers: each option as the keyword they pass.
        return _MARKED.sub(lambda m: f"{m[1]}={m[3]}" if m[3] else m[1], self.template)


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM; the message says how to resume.

    A KeyboardInterrupt, so code that lets Ctrl-C through lets this through too;
    the CLI exits with ``exit_code`` (128 + the signal number: 130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
