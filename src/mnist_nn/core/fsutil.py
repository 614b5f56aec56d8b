"""Atomic file writes: a reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mnist_nn.core.errors import UserError, option


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temp file in the target's folder, fsync it, then rename it into place.

    The rename is atomic on POSIX, so ``path`` holds either the old or the new
    content, never a mix; a failure leaves no temp file behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and prove a file can be written there, before any work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"cannot write to output folder {path}: {reason}") from None
    return path


def png_destination(out: str | os.PathLike, default: bool = False) -> Path:
    """Where a command writes its PNG: the ``--out`` a user named, checked before any work starts.

    A folder named in ``--out`` must exist, as ``export`` requires: a mistyped path is an error, not a
    tree of new folders. A default destination (``default=True``) may create its folder (``runs/``).
    """
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise UserError(f"{option('out')} names the PNG to write; {path} does not end in .png")
    if path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name to {option('out', metavar='FILE')}")
    if not default and not path.parent.exists():
        raise UserError(f"output folder {path.parent} does not exist; create it, or choose another {option('out')}")
    ensure_writable_dir(path.parent)
    return path
