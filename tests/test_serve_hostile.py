"""`mnist-nn serve` against hostile and careless clients: real server processes on 127.0.0.1, raw sockets.

A client that goes away mid-body, one that trickles its headers or its body, too many connections, a
foreign Host (DNS rebinding), a page on another site (CORS), a request uvicorn's parser refuses: each
is answered in a few log lines at most, within the timeouts, with a JSON error and the security headers.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
MAX_CONNECTIONS = 6
FOREIGN = "http://evil.example"
FRIEND = "http://localhost:3000"


class Server:
    def __init__(self, checkpoint: Path, log: Path, *options: str) -> None:
        self.port = free_port()
        self.log = log
        command = [sys.executable, "-m", "mnist_nn", "serve", str(checkpoint), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, "--workers", "1", *options], stdout=subprocess.DEVNULL, stderr=log.open("w")
        )
        deadline = time.monotonic() + 120
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send ``request`` whole on a new connection; the answer's status, headers and body."""
        with self.connect() as sock:
            sock.sendall(request)
            return parse(read_all(sock))


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (every request here asks it to)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def request(method: str, path: str, host: str = "127.0.0.1", body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def pixels_body() -> bytes:
    return json.dumps({"pixels": [[0] * 28 for _ in range(28)]}).encode()


@pytest.fixture(scope="module")
def server(random_checkpoint, tmp_path_factory):
    options = ["--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT)]
    options += ["--max-connections", str(MAX_CONNECTIONS), "--allowed-host", "digits.example"]
    running = Server(random_checkpoint, tmp_path_factory.mktemp("serve") / "stderr.log", *options)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def cors_server(random_checkpoint, tmp_path_factory):
    running = Server(random_checkpoint, tmp_path_factory.mktemp("cors") / "stderr.log", "--cors-origin", FRIEND)
    yield running
    running.stop()


def wait_closed(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """(seconds until the server closed ``sock``, what it sent before); fails after ``limit`` seconds."""
    start = time.monotonic()
    sock.settimeout(limit)
    try:
        data = read_all(sock)
    except TimeoutError:
        pytest.fail(f"the server kept the connection open over {limit} s")
    return time.monotonic() - start, data


# --------------------------------------------------------------------------- clients that go away or dawdle


@pytest.mark.parametrize("kind", ["application/json", "multipart/form-data; boundary=xyz"])
def test_a_client_gone_mid_body_is_one_short_log_line(server, kind):
    before = len(server.log_lines())
    with server.connect() as sock:
        head = f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
        sock.sendall(head.encode() + b"Content-Length: 100000\r\n\r\n" + b"x" * 5000)
        time.sleep(0.3)
    time.sleep(0.7)
    added = server.log_lines()[before:]
    assert len(added) <= 2, added
    assert not any("Traceback" in line or "unhandled" in line for line in added), added
    assert server.exchange(request("GET", "/api/health"))[0] == 200  # and it serves on


def test_half_a_header_then_silence_is_closed_within_the_header_timeout(server):
    with server.connect() as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        elapsed, answer = wait_closed(sock, HEADER_TIMEOUT + 3)
    status, headers, body = parse(answer)
    assert status == 408 and "headers" in json.loads(body)["detail"]
    assert headers["x-content-type-options"] == "nosniff"
    assert elapsed >= HEADER_TIMEOUT - 0.1


def test_headers_trickled_byte_by_byte_are_cut_off_at_the_deadline(server):
    line = b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200
    with server.connect() as sock:
        start = time.monotonic()
        for byte in line:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            if time.monotonic() - start > HEADER_TIMEOUT + 3:
                pytest.fail("a trickling client was never cut off")
            time.sleep(0.02)
        wait_closed(sock, HEADER_TIMEOUT + 3)
    assert time.monotonic() - start < HEADER_TIMEOUT + 3


def test_a_body_that_never_arrives_is_closed_within_the_body_timeout(server):
    with server.connect() as sock:
        head = b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        sock.sendall(head + b"Content-Length: 5000\r\n\r\n{")
        elapsed, _answer = wait_closed(sock, BODY_TIMEOUT + 3)
    assert elapsed >= BODY_TIMEOUT - 0.1


def test_connections_beyond_the_cap_get_a_json_503(server):
    idle = [server.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        with server.connect() as extra:
            status, headers, body = parse(read_all(extra))
        assert status == 503 and headers["content-type"] == "application/json"
        assert "too many open connections" in json.loads(body)["detail"]
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert server.exchange(request("GET", "/api/health"))[0] == 200


# --------------------------------------------------------------------------- headers, Host, CORS, JSON errors


@pytest.mark.parametrize("path", ["/api/health", "/api/model", "/openapi.json", "/docs", "/nowhere", "/"])
def test_every_answer_carries_nosniff_and_a_csp(server, path):
    status, headers, _body = server.exchange(request("GET", path))
    assert status == (404 if path == "/nowhere" else 200)
    assert headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    if path.startswith("/api"):
        assert headers["content-security-policy"].startswith("default-src 'none'")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io"])
def test_a_foreign_host_is_refused_with_json(server, host):
    status, headers, body = server.exchange(request("GET", "/api/health", host=host))
    assert status == 421 and headers["content-type"] == "application/json"
    assert "--allowed-host" in json.loads(body)["detail"]
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST:{port}", "[::1]:{port}", "digits.example"])
def test_the_servers_own_names_and_allowed_hosts_are_answered(server, host):
    assert server.exchange(request("GET", "/api/health", host=host.format(port=server.port)))[0] == 200


def test_without_cors_origin_a_preflight_gets_no_allow_origin_and_a_foreign_post_is_refused(server):
    preflight = request("OPTIONS", "/api/predict", origin=FOREIGN, access_control_request_method="POST")
    status, headers, _body = server.exchange(preflight)
    assert "access-control-allow-origin" not in headers and status == 403
    post = request("POST", "/api/predict", body=pixels_body(), content_type="application/json", origin=FOREIGN)
    status, headers, body = server.exchange(post)
    assert status == 403 and "--cors-origin" in json.loads(body)["detail"]
    assert "access-control-allow-origin" not in headers
    # The server's own page posts with its own origin: answered.
    own = f"http://127.0.0.1:{server.port}"
    same = request("POST", "/api/predict", host=f"127.0.0.1:{server.port}", body=pixels_body(), origin=own)
    assert server.exchange(same.replace(b"Connection", b"Content-Type: application/json\r\nConnection"))[0] == 200


def test_with_cors_origin_that_origin_is_allowed_and_others_are_not(cors_server):
    preflight = request("OPTIONS", "/api/predict", origin=FRIEND, access_control_request_method="POST")
    status, headers, _body = cors_server.exchange(preflight)
    assert status == 204 and headers["access-control-allow-origin"] == FRIEND
    assert "POST" in headers["access-control-allow-methods"]
    post = request("POST", "/api/predict", body=pixels_body(), content_type="application/json", origin=FRIEND)
    status, headers, body = cors_server.exchange(post)
    assert status == 200 and headers["access-control-allow-origin"] == FRIEND
    assert json.loads(body)["status"] == "no digit found"
    status, headers, _body = cors_server.exchange(request("OPTIONS", "/api/predict", origin=FOREIGN))
    assert status == 403 and "access-control-allow-origin" not in headers


@pytest.mark.parametrize("length", ["abc", "-5", "1, 2"])
def test_a_bad_content_length_is_a_json_400(server, length):
    raw = b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    status, headers, body = server.exchange(raw + f"Content-Length: {length}\r\n\r\n{{}}".encode())
    assert status == 400 and headers["content-type"] == "application/json"
    assert "Content-Length" in json.loads(body)["detail"]
    assert headers["x-content-type-options"] == "nosniff"


def test_wrong_method_and_missing_file_are_json(server):
    for method, path, expected in (("DELETE", "/api/predict", 405), ("GET", "/static/nothing.js", 404)):
        status, headers, body = server.exchange(request(method, path))
        assert status == expected and headers["content-type"] == "application/json", (method, path)
        assert json.loads(body)["detail"]


def test_a_bad_cors_origin_or_timeout_is_a_one_line_error(capsys, random_checkpoint):
    from conftest import assert_one_line_error, run_main

    code, _out, err = run_main(capsys, "serve", random_checkpoint, "--cors-origin", "localhost:3000")
    assert_one_line_error(code, err, "--cors-origin")
    code, _out, err = run_main(capsys, "serve", random_checkpoint, "--header-timeout", "0")
    assert_one_line_error(code, err, "--header-timeout")
