"""The watch page's app: the page at ``/``, its files under ``/static``, the runs as JSON at ``/api/runs``.

The page polls ``/api/runs`` about once a second. Each answer carries an ETag, the version of
the runs' files (their inodes, sizes and modification times): while nothing changed, a poll is
answered 304 without reading or sending anything, and a poll after a change reads only what
changed: the bytes appended to a log, a small file rewritten (``runs.RunView``). The app serves
only the folders it was started with; no request names a file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.types import Message, Receive, Scope, Send

from mnist_nn.core.version import __version__

from .runs import Watcher

log = logging.getLogger("mnist_nn.watch")

STATIC = Path(__file__).resolve().parent / "static"
POLL_MS = 1000
# The page, its script, its styles and the vendored chart library come from this app only: no CDN.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {"content-security-policy": PAGE_CSP, "x-content-type-options": "nosniff"}


def create_app(run_dirs: Sequence[str | os.PathLike]) -> FastAPI:
    """The app watching ``run_dirs`` (checked by the caller: see ``runs.check_run_dir``)."""
    watcher = Watcher(run_dirs)
    app = FastAPIOffline(
        title="mnist-nn watch",
        version=__version__,
        description="Training runs' curves, progress and sample predictions, live: the page at `/`.",
    )
    cache: dict[str, bytes] = {}
    lock = threading.Lock()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @app.get("/api/runs", tags=["api"])
    def runs(request: Request) -> Response:
        """Every watched run: status, progress, curves, the latest sample predictions, the final figures.

        Answered 304 while the runs' files are unchanged since the ETag the client sends.
        """
        # A plain def: FastAPI runs it in a worker thread, so reading files never holds up the event loop.
        version = watcher.version()
        etag = f'"{version}"'
        headers = {"etag": etag, "cache-control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        with lock:  # two pages polling at once read the files once
            body = cache.get(version)
            if body is None:
                # Taken after the version: a file that changes while it is read is sent again at the next poll.
                snapshot = {"version": version, "poll_ms": POLL_MS, "runs": watcher.snapshot()}
                body = json.dumps(snapshot, allow_nan=False, separators=(",", ":")).encode()
                cache.clear()
                cache[version] = body
        return Response(body, media_type="application/json", headers=headers)

    app.mount("/static", _HeaderedStatic(directory=STATIC), name="static")
    return app


class _HeaderedStatic(StaticFiles):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw: Any = [(k.encode(), v.encode()) for k, v in PAGE_HEADERS.items()]
                message["headers"] = [*message.get("headers", []), *raw]
            await send(message)

        await super().__call__(scope, receive, with_headers)
