"""The HTTP connection, guarded against slow and greedy clients: uvicorn's httptools protocol, with limits.

uvicorn (0.55) times out only an idle keep-alive connection: a client that sends half a request line
or header and then waits, or a body a byte at a time, holds its connection (and a file descriptor)
for ever, and any number of them may be open. Each connection here therefore has

- a header deadline: the request line and headers must have arrived ``header_timeout`` seconds after
  the request's first byte (after the connection opened, for its first request); else 408, closed;
- a body deadline: the whole body ``body_timeout`` seconds after the headers; else the connection is
  closed (the app sees the client gone, and logs one line);
- a cap: a connection beyond ``max_connections`` open in this process is answered 503 at once, closed.

uvicorn answers a request its parser cannot read (a Content-Length that is not a number, a malformed
request line) itself, in plain text; here that 400 is JSON with the security headers, like the API's
own errors. The class extends uvicorn's ``HttpToolsProtocol`` (httptools is a dependency of the serve
extra), the protocol uvicorn would choose itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from mnist_nn.apps.serve.policy import API_CSP

log = logging.getLogger("mnist_nn.serve")

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 256
KEEP_ALIVE_S = 5
BAD_REQUEST = (
    "invalid HTTP request: a malformed request line or header (a Content-Length that is not a number, for one)"
)


@dataclass(frozen=True)
class Limits:
    """Per connection: seconds to send the headers and the body; per process: connections open at once."""

    header_timeout: float = HEADER_TIMEOUT_S
    body_timeout: float = BODY_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS


def raw_json(status: int, reason: str, detail: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.1 error answer {"detail": ...}, with the security headers, that closes the connection."""
    body = json.dumps({"detail": detail}).encode()
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("x-content-type-options", "nosniff"),
        ("content-security-policy", API_CSP),
        ("connection", "close"),
        *extra,
    ]
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode("latin-1") + b"\r\n" + body


class _Guarded:
    """The limits, mixed into uvicorn's protocol class by guarded_protocol; each method calls uvicorn's own."""

    limits: Limits
    _timer: asyncio.TimerHandle | None = None
    _started = False  # a byte of the current request has arrived

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            busy = "too many open connections; try again shortly"
            self._answer_and_close(raw_json(503, "Service Unavailable", busy, (("retry-after", "1"),)))
            return
        self._arm(self.limits.header_timeout, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._started = True
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:  # the next request on a kept-alive connection
            self._arm(self.limits.header_timeout, self._headers_late)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._arm(self.limits.body_timeout, self._body_late)

    def on_message_complete(self) -> None:
        self._disarm()
        self._started = False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(raw_json(400, "Bad Request", BAD_REQUEST))

    def _arm(self, seconds: float, handler: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, handler)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        answering = self.cycle is not None and not self.cycle.response_complete
        if not self._started or answering:  # an idle spare connection, or one still being answered
            self.transport.close()
            return
        detail = f"request headers not received within {self.limits.header_timeout:g} s"
        self._answer_and_close(raw_json(408, "Request Timeout", detail))

    def _body_late(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            why = "request body not received within %g s"
            log.warning("closed the connection of %s: " + why, client, self.limits.body_timeout)
            self.transport.close()

    def _answer_and_close(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()


def guarded_protocol(limits: Limits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol class with ``limits`` (see the module), for ``uvicorn.Config(http=...)``."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return type("GuardedProtocol", (_Guarded, HttpToolsProtocol), {"limits": limits})
