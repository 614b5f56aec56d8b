"""Running the app: load the checkpoint, bind the socket(s) ourselves, hand them to uvicorn.

With ``workers`` above 1 the loaded app is forked into that many processes, each with its own
listening socket on the same port (SO_REUSEPORT): the kernel spreads new connections evenly over
the sockets. (One socket shared by all processes was measured too: whichever process wakes first
accepts a whole burst of connections, and the p99 latency got 2-3x worse than with one process.)
The parent only supervises: it replaces a worker that dies and stops them all on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from typing import Any

from mnist_nn.apps.serve.policy import Policy, server_policy
from mnist_nn.apps.serve.protocol import KEEP_ALIVE_S, Limits, guarded_protocol
from mnist_nn.core.errors import UserError
from mnist_nn.models.bundled import model_title

MAX_DEFAULT_WORKERS = 4
# A worker that dies this soon after it started is failing, not unlucky: stop rather than loop.
QUICK_DEATH_S = 5.0
QUICK_DEATHS_ALLOWED = 3
STOP_GRACE_S = 10.0


def multiprocess_supported() -> bool:
    """Several workers need fork and a kernel that balances SO_REUSEPORT sockets (Linux)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and hasattr(socket, "SO_REUSEPORT")


def default_workers(device: str = "cpu") -> int:
    """One worker per usable CPU core, at most 4, on the CPU under Linux; 1 otherwise (a GPU is not forked)."""
    if device != "cpu" or not multiprocess_supported():
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


def bind(host: str, port: int, copies: int = 1) -> list[socket.socket]:
    """``copies`` listening TCP sockets on (host, port; 0: any free port), all on the same port.

    A busy port or a bad host is a one-line UserError. Binding here rather than in uvicorn turns
    its log-and-exit on failure into our error, and leaves no window between checking the port
    and using it. Several copies share the port through SO_REUSEPORT; the port is first bound
    without it, so that a port held by anyone (even another server of ours) is refused, not shared.
    """
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on host {host!r}: {exc.strerror}") from None
    probe = _bind_one(family, kind, proto, address, host, port, reuse_port=False, listen=copies == 1)
    if copies == 1:
        return [probe]
    address = (address[0], probe.getsockname()[1], *address[2:])  # the port chosen for port 0
    probe.close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(copies):
            sockets.append(_bind_one(family, kind, proto, address, host, address[1], reuse_port=True))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_one(
    family: int, kind: int, proto: int, address: Any, host: str, port: int, *, reuse_port: bool, listen: bool = True
) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop (TIME_WAIT)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
        if listen:
            sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use; choose another with --port") from None
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def run(
    checkpoint: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    workers: int | None = None,
    *,
    allowed_hosts: Iterable[str] = (),
    cors_origins: Iterable[str] = (),
    limits: Limits | None = None,
    engine: str = "auto",
) -> None:
    """Serve ``checkpoint`` until Ctrl-C or SIGTERM. Only this path is ever loaded, never one a client sends.

    Each worker process parses requests on its event loop; small ones (a drawing, 28x28 JSON)
    are answered there too, larger images in a few worker threads (see app._is_small).
    ``workers``: processes sharing the port (default: ``default_workers(device)``). ``allowed_hosts``: Host
    names answered besides ``host`` and loopback's; ``cors_origins``: other origins whose pages may call the
    API (policy.py). ``limits``: timeouts and the connection cap (protocol.py). ``engine``: what runs the
    model (inference/engine.py: auto, torch or onnx).
    """
    from mnist_nn.core.device import resolve_device
    from mnist_nn.inference.predictor import Predictor

    from .app import create_app

    if not 1 <= port <= 65535:
        raise UserError(f"--port must be from 1 to 65535, got {port}")
    if device == "auto":
        device = resolve_device(device).type  # on a machine without a GPU: the CPU, and several workers
    workers = _checked_workers(default_workers(device) if workers is None else workers, device)
    policy = _policy(host, allowed_hosts, cors_origins)
    limits = _checked(limits or Limits())
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    sockets = bind(host, port, copies=workers)
    _ready(predictor, engine, device, workers)
    app = create_app(predictor, policy=policy)
    shown = f"[{host}]" if ":" in host else host
    meta = predictor.metadata
    accuracy = f", test accuracy {100 * meta['test_accuracy']:.2f}%" if meta.get("test_accuracy") else ""
    processes = f"{workers} worker processes, " if workers > 1 else ""
    processes += f"{predictor.engine.name if predictor.engine else 'PyTorch'}, "
    print(
        f"serving {model_title(checkpoint, meta['model'])} ({meta['dataset']}{accuracy}) at http://{shown}:{port}/ "
        f"(API docs: http://{shown}:{port}/docs); {processes}Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    # Each malformed multipart body would otherwise log a warning: a client could flood the log.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    try:
        if workers == 1:
            _serve(app, sockets[0], limits)
        else:
            Supervisor(app, sockets, limits).run()
    finally:
        for sock in sockets:
            sock.close()


def _ready(predictor: Any, engine: str, device: str, workers: int) -> None:
    """Give ``predictor`` its threads and engine, and warm it up, before the workers are forked."""
    import torch

    from mnist_nn.inference.engine import choose_engine

    from .app import warm_up

    # One intra-op thread per request: large requests run side by side in worker threads (one per
    # core), and a 1x784 forward pass gains nothing from splitting, only synchronisation.
    torch.set_num_threads(int(os.environ.get("MNIST_NN_THREADS") or 1))
    predictor.engine = choose_engine(predictor, engine, device)
    warm_up(predictor)
    if predictor.engine is not None and workers > 1:
        predictor.engine.close()  # each worker builds its own session after the fork (engine.OnnxEngine)


def _checked_workers(workers: int, device: str) -> int:
    if workers < 1:
        raise UserError(f"--workers must be a positive integer, got {workers}")
    if workers > 1 and not multiprocess_supported():
        raise UserError("--workers above 1 needs Linux (processes sharing a port through SO_REUSEPORT)")
    if workers > 1 and device != "cpu":
        raise UserError(f"--workers above 1 works with --device cpu only (a {device} context cannot be forked)")
    return workers


def _policy(host: str, allowed_hosts: Iterable[str], cors_origins: Iterable[str]) -> Policy:
    """The server's HTTP policy; a --cors-origin that is no origin is a one-line UserError."""
    try:
        return server_policy(host, allowed_hosts, cors_origins)
    except ValueError as exc:
        raise UserError(f"--cors-origin: {exc}; for example http://localhost:3000") from None


def _checked(limits: Limits) -> Limits:
    for name in ("header_timeout", "body_timeout", "max_connections"):
        if not getattr(limits, name) > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(limits, name)}")
    return limits


def uvicorn_config(app: Any, limits: Limits | None = None) -> Any:
    """uvicorn's configuration for ``app``: quiet, no Server header, and the guarded protocol (protocol.py)."""
    import uvicorn

    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        server_header=False,
        http=guarded_protocol(limits or Limits()),
        timeout_keep_alive=KEEP_ALIVE_S,
    )


def _serve(app: Any, sock: socket.socket, limits: Limits, parent: int | None = None) -> None:
    """Run uvicorn on ``sock`` until a signal (or, given ``parent``, until that process is gone)."""
    import uvicorn

    config = uvicorn_config(app, limits)
    server = uvicorn.Server(config)
    if parent is not None:
        # A worker outliving a killed supervisor would keep answering on the port: leave with it.
        def watch_parent() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            server.should_exit = True

        threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()
    server.run(sockets=[sock])


class Supervisor:
    """Forks one worker per socket, replaces workers that die, and stops them all on SIGINT or SIGTERM.

    The parent forks before any event loop or thread exists in it, and it never starts one, so
    every fork (the first ones and replacements alike) copies a single-threaded process.
    """

    def __init__(self, app: Any, sockets: list[socket.socket], limits: Limits) -> None:
        self.app = app
        self.sockets = sockets
        self.limits = limits
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (socket index, start time)
        self.stopping = False
        self.quick_deaths = 0

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for index in range(len(self.sockets)):
                self._start(index)
            while self.workers:
                try:
                    pid, status = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                index, started = self.workers.pop(pid, (None, 0.0))
                if index is None or self.stopping:
                    continue
                code = os.waitstatus_to_exitcode(status)
                how = f"signal {-code}" if code < 0 else f"exit status {code}"
                if time.monotonic() - started < QUICK_DEATH_S:
                    self.quick_deaths += 1
                if self.quick_deaths > QUICK_DEATHS_ALLOWED:
                    self._stop(None, None)
                    raise UserError(f"server worker {index} keeps dying ({how}); stopped")
                print(
                    f"server worker {index} (pid {pid}) ended ({how}); starting a new one", file=sys.stderr, flush=True
                )
                self._start(index)
        finally:
            self._stop(None, None)
            self._reap(STOP_GRACE_S)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _start(self, index: int) -> None:
        parent = os.getpid()
        stops = {signal.SIGINT, signal.SIGTERM}
        # Blocked across the fork, so that the worker never runs the parent's handler (it would stop the others).
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        pid = os.fork()
        if pid == 0:  # the worker: serve one socket, then leave without running the parent's cleanup
            code = 0
            try:
                for sig in stops:
                    signal.signal(sig, signal.SIG_DFL)  # uvicorn installs its own
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
                for i, sock in enumerate(self.sockets):
                    if i != index:
                        sock.close()
                _serve(self.app, self.sockets[index], self.limits, parent=parent)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        self.workers[pid] = (index, time.monotonic())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)

    def _stop(self, signum: int | None, _frame: object) -> None:
        # Workers started from a terminal get Ctrl-C's SIGINT themselves too; SIGTERM covers the rest.
        self.stopping = True
        _signal(self.workers, signal.SIGTERM)

    def _reap(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        while self.workers:
            for pid in list(self.workers):
                try:
                    done, _status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    self.workers.pop(pid)
            if self.workers and time.monotonic() > deadline:
                _signal(self.workers, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.05)


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in list(pids):
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, sig)
