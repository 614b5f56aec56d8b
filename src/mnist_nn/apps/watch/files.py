"""Reading a run directory's files as an untrusted source: only regular files inside the folder, bounded reads.

Anything can sit where a run's file should be: a named pipe (opening it for reading waits for a
writer, for ever), a device (``/dev/zero`` reports a size of 0 and never ends), a link to a file
elsewhere on the machine. So a file is stat'ed before it is opened and refused unless it is a
regular file whose real path is inside the run directory; it is opened without following links
and without blocking, checked again on the open descriptor, and read in chunks up to a cap on
the bytes actually read, never on the size the file reports.

JSON-lines files are tailed (``JsonLinesTail``): each poll reads only the bytes appended since the
last, and starts again from the top when the file was replaced or truncated (a resumed run).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK_BYTES = 1 << 20
# A JSON-lines file is parsed a block at a time: the memory a poll takes does not grow with the file.
BLOCK_BYTES = 4 << 20
# A line this long is no row a run writes: it is skipped rather than buffered while it grows.
MAX_LINE_BYTES = 1 << 20
# Compared on each poll: a file rewritten in place under the same name starts with other bytes.
HEAD_BYTES = 256
_DECODER = json.JSONDecoder()
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class Refused(ValueError):
    """A file that is not read at all: not a regular file, or a link out of the run directory."""


def _inside(folder: Path, name: str) -> str:
    """The real path of ``folder/name``; Refused when a link takes it out of the folder."""
    root = os.path.realpath(folder)
    real = os.path.realpath(os.path.join(root, name))
    if os.path.dirname(real) != root and not real.startswith(root + os.sep):
        raise Refused("a link out of the run directory: not read")
    return real


def safe_stat(folder: Path, name: str) -> os.stat_result | None:
    """The stat of a run's file that may be read; None when it is missing. Never opens anything."""
    real = _inside(folder, name)
    try:
        info = os.stat(real)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise Refused("not a regular file: not read")
    return info


def open_regular(folder: Path, name: str) -> tuple[int, os.stat_result] | None:
    """An open descriptor on a run's regular file, and its stat; None when it is missing."""
    if safe_stat(folder, name) is None:
        return None
    try:
        fd = os.open(_inside(folder, name), _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # swapped between the stat and the open
        os.close(fd)
        raise Refused("not a regular file: not read")
    return fd, info


def read_upto(fd: int, limit: int, offset: int = 0) -> bytes:
    """The bytes from ``offset`` to the end of the file, or the first ``limit`` of them: counted as read."""
    chunks, total = [], 0
    while total < limit:
        chunk = os.pread(fd, min(CHUNK_BYTES, limit - total), offset + total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_capped(fd: int, cap: int, offset: int = 0) -> bytes:
    """The bytes from ``offset`` to the end; ValueError once more than ``cap`` bytes were actually read."""
    data = read_upto(fd, cap + 1, offset)
    if len(data) > cap:
        raise ValueError(f"more than {cap:,} bytes, more than a run writes: not read")
    return data


def read_document(folder: Path, name: str, cap: int) -> tuple[tuple[int, int, int], bytes] | None:
    """A whole small file (config.json, samples.json ...) and its stamp; None when it is missing."""
    opened = open_regular(folder, name)
    if opened is None:
        return None
    fd, info = opened
    try:
        return stamp_of(info), read_capped(fd, cap)
    finally:
        os.close(fd)


def stamp_of(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_ino, info.st_size, info.st_mtime_ns)


class JsonLinesTail:
    """A JSON-lines file read incrementally: each ``poll`` hands over the rows of the lines completed since the last.

    ``restart()`` is called first when the rows handed over before no longer stand (the file was
    replaced, truncated or removed): the caller drops what it built from them. The rows then
    go to ``take(rows)`` a block at a time, so a large file is never held whole in memory.
    ``not_json`` counts the complete lines that were not JSON (a line longer than
    ``MAX_LINE_BYTES`` among them) since the last restart; ``last_read`` is how many bytes the
    last poll read from the file; ``capped`` says the file goes on past ``cap`` bytes, unread.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._clear()
        self.last_read = 0

    def _clear(self) -> None:
        self.identity: tuple[int, int] | None = None
        self.offset = 0  # bytes consumed, the partial last line among them
        self.head = b""
        self.pending = b""
        self.dropping = False  # inside an over-long line: skip to its newline
        self.not_json = 0
        self.capped = False

    def poll(self, folder: Path, name: str, take: Callable[[list[Any]], None], restart: Callable[[], None]) -> None:
        """Read what was appended to ``folder/name``. Raises OSError or ValueError (Refused) after a restart."""
        self.last_read = 0
        try:
            opened = open_regular(folder, name)
        except (OSError, ValueError):
            self._clear()
            restart()
            raise
        if opened is None:
            if self.identity is not None:
                self._clear()
                restart()
            return
        fd, info = opened
        try:
            if self._replaced(fd, info):
                self._clear()
                restart()
                self.identity = (info.st_dev, info.st_ino)
            self._read_new(fd, take)
        finally:
            os.close(fd)

    def _replaced(self, fd: int, info: os.stat_result) -> bool:
        if self.identity != (info.st_dev, info.st_ino) or info.st_size < self.offset:
            return True
        return bool(self.head) and os.pread(fd, len(self.head), 0) != self.head

    def _read_new(self, fd: int, take: Callable[[list[Any]], None]) -> None:
        while self.offset < self.cap:
            data = read_upto(fd, min(BLOCK_BYTES, self.cap - self.offset), self.offset)
            if not data:
                break
            self.last_read += len(data)
            if len(self.head) < HEAD_BYTES:
                self.head += data[: HEAD_BYTES - len(self.head)]
            self.offset += len(data)
            take(self._lines(data))
        self.capped = self.offset >= self.cap and bool(os.pread(fd, 1, self.offset))

    def _lines(self, data: bytes) -> list[Any]:
        """The rows of the lines that ``data`` completes; the text after the last newline waits for the next poll."""
        data = self.pending + data
        end = data.rfind(b"\n") + 1
        complete, self.pending = data[:end], data[end:]
        if self.dropping and end:
            complete, self.dropping = complete[complete.index(b"\n") + 1 :], False  # the over-long line's rest
        if len(self.pending) > MAX_LINE_BYTES:
            self.not_json += 0 if self.dropping else 1
            self.pending, self.dropping = b"", True
        return self._parse(complete)

    def _parse(self, complete: bytes) -> list[Any]:
        # One decode of the chunk, then the C scanner on each line: json.loads per line costs twice as much.
        # Bytes that are not UTF-8 fail no chunk: they stay in their line as lone surrogates.
        rows, decode = [], _DECODER.raw_decode
        for line in complete.decode("utf-8", "surrogateescape").split("\n"):
            line = line.strip()
            if not line:
                continue
            try:
                value, end = decode(line)
            except (ValueError, RecursionError):
                self.not_json += 1
                continue
            if end == len(line):
                rows.append(value)
            else:
                self.not_json += 1
        return rows
