"""Serving the watch page: ``mnist-nn watch RUN_DIR...`` and ``mnist-nn train --watch``.

uvicorn runs in a thread of its own, in both cases: beside the training loop for ``train
--watch``, and beside a main thread that only waits for Ctrl-C for ``watch``. The page's work
(reading a few small files once a second) is far too light to slow training down.

The socket is bound here, before anything else starts, so that a port in use is a one-line
error (naming the option that chooses another) rather than uvicorn's log-and-exit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

from mnist_nn.core.errors import UserError, option

from .runs import check_run_dir

DEFAULT_PORT = 8001
START_TIMEOUT_S = 30.0


def bind(host: str, port: int, port_option: str = "port") -> socket.socket:
    """A listening TCP socket on (host, port; 0: any free port); a busy port names ``port_option``."""
    if not 0 <= port <= 65535:
        raise UserError(f"{option(port_option)} must be from 1 to 65535 (or 0: any free port), got {port}")
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on host {host!r}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop (TIME_WAIT)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is already in use; choose another with {option(port_option, metavar='PORT')}"
            ) from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or type(exc).__name__}") from None
    return sock


class WatchServer:
    """The watch app served by uvicorn in a daemon thread, on a socket bound beforehand."""

    def __init__(self, run_dirs: Sequence[str | os.PathLike], sock: socket.socket) -> None:
        import uvicorn

        from .app import create_app

        self.sock = sock
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        config = uvicorn.Config(create_app(run_dirs), log_level="warning", access_log=False, server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True, name="watch")

    def start(self) -> WatchServer:
        """Start serving; returns once the server answers (or raises if it could not start)."""
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise UserError(f"the watch page could not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(10)
        self.sock.close()

    def serve_until_stopped(self) -> None:
        """Keep serving until Ctrl-C or SIGTERM (each a normal end: the server stops and this returns)."""
        previous = signal.getsignal(signal.SIGTERM) if _main_thread() else None
        if _main_thread():
            signal.signal(signal.SIGTERM, _interrupt)
        try:
            while self.thread.is_alive():
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            if _main_thread():
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            self.stop()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def run(run_dirs: Sequence[str | os.PathLike], host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """``mnist-nn watch``: check the folders, serve their page until Ctrl-C."""
    folders = [check_run_dir(path) for path in run_dirs]
    server = WatchServer(folders, bind(host, port)).start()
    what = f"{folders[0]}" if len(folders) == 1 else f"{len(folders)} runs"
    print(f"watching {what} at {server.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    server.serve_until_stopped()


@contextlib.contextmanager
def beside_training(run_dir: str | os.PathLike, port: int = DEFAULT_PORT) -> Iterator[WatchServer]:
    """``mnist-nn train --watch``: the page for ``run_dir`` while the block trains, and after it until Ctrl-C.

    The folder need not exist yet: the page waits for the run to start. If training fails or is
    interrupted the server stops with it; after a run that ends well the page stays, with the
    final figures, until Ctrl-C (which then ends the command normally).
    """
    server = WatchServer([Path(run_dir)], bind("127.0.0.1", port, port_option="watch_port")).start()
    print(f"watch the run at {server.url} (the page stays after training, until Ctrl-C)", file=sys.stderr, flush=True)
    try:
        yield server
    except BaseException:
        server.stop()
        raise
    print(f"training is over; its page is still at {server.url}: Ctrl-C to stop", file=sys.stderr, flush=True)
    server.serve_until_stopped()
