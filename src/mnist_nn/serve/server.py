"""Running the app: load the checkpoint, bind the socket ourselves, hand both to uvicorn."""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys

from ..errors import UserError


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port; 0: any free port); a busy port or a bad host is a one-line UserError.

    Binding here rather than in uvicorn turns its log-and-exit on failure into our error, and
    leaves no window between checking the port and using it.
    """
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
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use; choose another with --port") from None
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def run(checkpoint: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu") -> None:
    """Serve ``checkpoint`` until Ctrl-C or SIGTERM. Only this path is ever loaded, never one a client sends.

    One process: requests are parsed on its event loop; small ones (a drawing, 28x28 JSON) are
    answered there too, larger images in a few worker threads (see app._is_small). (Several
    uvicorn worker processes were measured too: more throughput on 2 cores, but keep-alive clients
    spread unevenly over the processes and the p99 latency got 2-3x worse.)
    """
    import torch
    import uvicorn

    from ..predict import Predictor
    from .app import create_app

    if not 1 <= port <= 65535:
        raise UserError(f"--port must be from 1 to 65535, got {port}")
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    sock = bind(host, port)
    # One intra-op thread per request: large requests run side by side in worker threads (one per
    # core), and a 1x784 forward pass gains nothing from splitting, only synchronisation.
    torch.set_num_threads(int(os.environ.get("MNIST_NN_THREADS") or 1))
    app = create_app(predictor)
    shown = f"[{host}]" if ":" in host else host
    meta = predictor.metadata
    accuracy = f", test accuracy {100 * meta['test_accuracy']:.2f}%" if meta.get("test_accuracy") else ""
    print(
        f"serving {meta['model']} ({meta['dataset']}{accuracy}) at http://{shown}:{port}/ "
        f"(API docs: http://{shown}:{port}/docs); Ctrl-C to stop",
        file=sys.stderr,
        flush=True,
    )
    # Each malformed multipart body would otherwise log a warning: a client could flood the log.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
