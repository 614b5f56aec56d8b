"""Who may talk to the server, and the headers every answer carries: the HTTP policy, one ASGI middleware.

A server on localhost is reachable by any page the machine's browser opens, in two ways this refuses:

- DNS rebinding: a name an attacker controls is made to resolve to 127.0.0.1, and the attacker's page,
  now "same origin" with the server, reads its answers. The request still names the attacker's host
  in ``Host``, so a request whose Host is not one of the server's own names is refused (421).
- Cross-origin requests: a page on another site posts to the server (a multipart form needs no
  preflight). A request whose ``Origin`` is not the server's own is refused (403) unless that origin
  was allowed (``--cors-origin``); a preflight from an allowed origin is answered, one from any other
  gets no ``Access-Control-Allow-Origin``.

Every answer, the API's JSON and /docs included, carries ``X-Content-Type-Options: nosniff`` and a
Content-Security-Policy: the page's own where it set one, a page-like one for /docs (its offline
Swagger UI starts from an inline script), and "nothing at all" for everything else (JSON loads nothing).
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# JSON and every other answer that is not a page: it may load nothing, and no page may frame it.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# /docs and /redoc: Swagger UI and ReDoc from this server only (fastapi-offline), started by an inline script.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/redoc", "/static-offline-docs")
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
CORS_METHODS = "GET, POST"
CORS_MAX_AGE_S = 600


@dataclass(frozen=True)
class Policy:
    """Which Host names the server answers to and which other origins may call it.

    ``hosts`` None: any Host (the app built for tests, served by no socket); names are lower-case,
    IPv6 addresses without brackets. ``any_ip``: also any IP address as the Host (a server bound to
    every interface is reached by its addresses; an address is no name, so it cannot be rebound).
    """

    hosts: frozenset[str] | None = None
    any_ip: bool = False
    cors_origins: frozenset[str] = field(default_factory=frozenset)


def server_policy(bound: str, allowed_hosts: Iterable[str] = (), cors_origins: Iterable[str] = ()) -> Policy:
    """The policy of a server bound to ``bound``: its own name, this machine's loopback names, and ``allowed_hosts``."""
    hosts = {name.lower() for name in LOCAL_NAMES}
    wildcard = bound.strip("[]") in WILDCARD_HOSTS
    if not wildcard:
        hosts.add(bound.strip("[]").lower())
    hosts.update(host_name(name) for name in allowed_hosts)
    return Policy(frozenset(hosts), any_ip=wildcard, cors_origins=frozenset(map(origin_of, cors_origins)))


def host_name(value: str) -> str:
    """A Host header or --allowed-host value without its port, lower-case: 'Example.org:80' -> 'example.org'."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":")[0]
    return value


def origin_of(value: str) -> str:
    """A --cors-origin value as browsers send Origin ('http://Example.org:8080/' -> 'http://example.org:8080').

    ValueError for anything that is not scheme://host[:port].
    """
    parts = urllib.parse.urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"not an origin (scheme://host[:port]): {value!r}")
    if parts.query or parts.fragment or parts.username:
        raise ValueError(f"not an origin (scheme://host[:port]): {value!r}")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class PolicyMiddleware:
    """The Host check, the CORS policy and the security headers, around the whole app (see the module)."""

    def __init__(self, app: ASGIApp, policy: Policy, page_csp: str) -> None:
        self.app = app
        self.policy = policy
        self.page_csp = page_csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        csp = self._csp(scope["path"])
        refusal = self._refusal(headers)
        if refusal is not None:
            status, detail = refusal
            await send_json(send, status, detail, csp)
            return
        origin = headers.get("origin")
        allowed = origin if origin is not None and origin_of_header(origin) in self.policy.cors_origins else None
        if allowed is not None and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await _send_preflight(send, allowed, csp)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _with_headers(message.get("headers", []), csp, allowed)
            await send(message)

        await self.app(scope, receive, with_headers)

    def _csp(self, path: str) -> str:
        if path.startswith(DOCS_PATHS):
            return DOCS_CSP
        if path == "/" or path.startswith("/static/"):
            return self.page_csp
        return API_CSP

    def _refusal(self, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, detail) when the request is refused: a foreign Host (421) or a foreign Origin (403)."""
        host = headers.get("host", "")
        if self.policy.hosts is not None:
            name = host_name(host)
            if name not in self.policy.hosts and not (self.policy.any_ip and _is_ip(name)):
                known = ", ".join(sorted(self.policy.hosts))
                return 421, (
                    f"this server does not answer to the Host {host!r}: it answers to {known}; "
                    "start it with --allowed-host NAME to add a name"
                )
        origin = headers.get("origin")
        if origin is None:  # not a browser's cross-origin call (curl, a script, a same-origin GET)
            return None
        if origin_of_header(origin) in self.policy.cors_origins or _same_origin(origin, host):
            return None
        return 403, (
            f"cross-origin request from {origin!r} refused: this server allows no other origin; "
            "start it with --cors-origin ORIGIN to allow one"
        )


def origin_of_header(origin: str) -> str:
    """An Origin header, normalised as origin_of normalises --cors-origin; '' when it is none ('null')."""
    try:
        return origin_of(origin)
    except ValueError:
        return ""


def _same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` names this server as the client reached it (its Host header, port included)."""
    parts = urllib.parse.urlsplit(origin.strip().lower())
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host.strip().lower()


def _with_headers(headers: list, csp: str, allowed: str | None) -> list:
    """The response's headers, plus nosniff, the CSP (unless it set one) and, for an allowed origin, CORS's."""
    present = {name.lower() for name, _ in headers}
    extra = [(b"x-content-type-options", b"nosniff")] if b"x-content-type-options" not in present else []
    if b"content-security-policy" not in present:
        extra.append((b"content-security-policy", csp.encode()))
    if allowed is not None:
        extra += [(b"access-control-allow-origin", allowed.encode("latin-1")), (b"vary", b"Origin")]
    return [*headers, *extra]


async def _send_preflight(send: Send, origin: str, csp: str) -> None:
    headers = [
        *_with_headers([], csp, origin),
        (b"access-control-allow-methods", CORS_METHODS.encode()),
        (b"access-control-allow-headers", b"content-type"),
        (b"access-control-max-age", str(CORS_MAX_AGE_S).encode()),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def send_json(send: Send, status: int, detail: str, csp: str = API_CSP) -> None:
    """An error answer {"detail": ...} with the security headers, sent straight to the ASGI server."""
    body = json.dumps({"detail": detail}).encode()
    headers = _with_headers(
        [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], csp, None
    )
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
