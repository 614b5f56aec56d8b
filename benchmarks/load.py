"""Load test of `mnist-nn serve`: concurrent clients on loopback, a bounded number of requests.

    python benchmarks/load.py CHECKPOINT [--clients 32] [--requests 2000] [--malformed 0.1] [--payload png|json]
                              [--workers N] [--repeats 3]
    python benchmarks/load.py --url http://127.0.0.1:8000 [...]      # a server already running on this machine

With CHECKPOINT it starts `mnist-nn serve` on a free loopback port (with its default number of
worker processes, or --workers), waits for /api/health, runs, and stops the server. Each client
sends its next request as soon as its previous one is answered (a closed loop), until the total
is reached. ``--malformed F`` makes that fraction of the requests broken in assorted ways (bad
JSON, wrong shape, values out of range, wrong content type, a text file as the image, a form
without a file): those must get a 4xx, every other one a 200. With ``--repeats R`` the same load
is sent R times to the same server: the figures reported are those of the run with the median
p99, every run's are kept under "runs", and errors are counted over all runs.

Prints throughput, latency percentiles and error counts, and writes them as JSON to
benchmarks/results/load[-json][-malformed].json. Exit status 1 when any
request got an unexpected answer or none.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlsplit
from urllib.request import urlopen

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Strokes of a few handwritten-looking digits on a 0-1 square, drawn the way the page draws them.
STROKES = {
    "1": [[(0.5, 0.12), (0.5, 0.88)]],
    "7": [[(0.22, 0.15), (0.78, 0.15), (0.42, 0.88)]],
    "4": [[(0.6, 0.88), (0.6, 0.12), (0.2, 0.62), (0.8, 0.62)]],
    "0": [[(0.5, 0.12), (0.75, 0.3), (0.75, 0.7), (0.5, 0.88), (0.25, 0.7), (0.25, 0.3), (0.5, 0.12)]],
    "2": [[(0.25, 0.3), (0.5, 0.12), (0.75, 0.3), (0.25, 0.85), (0.78, 0.85)]],
}


@dataclass
class Request:
    kind: str  # "valid" or the kind of malformation
    content: bytes
    headers: dict[str, str]


def draw_digit(label: str, size: int = 112) -> Image.Image:
    """Dark strokes on white, like the page's pad (which sends 112x112 PNGs)."""
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    for stroke in STROKES[label]:
        draw.line([(x * size, y * size) for x, y in stroke], fill=0, width=max(2, size // 15), joint="curve")
    return image


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, dict[str, str]]:
    boundary = "mnistnnloadboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def valid_requests(payload: str) -> list[Request]:
    requests = []
    for label in STROKES:
        image = draw_digit(label)
        if payload == "png":
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            body, headers = multipart("file", f"{label}.png", buffer.getvalue(), "image/png")
        else:
            pixels = (255 - np.asarray(image.resize((28, 28), Image.Resampling.BOX), dtype=np.int32)).tolist()
            body, headers = json.dumps({"pixels": pixels}).encode(), {"content-type": "application/json"}
        requests.append(Request("valid", body, headers))
    return requests


def malformed_requests() -> list[Request]:
    as_json = {"content-type": "application/json"}
    row = [0] * 28
    not_image, not_image_headers = multipart("file", "notes.png", b"a shopping list, not a picture", "image/png")
    no_file = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b--\r\n'
    return [
        Request("bad-json", b'{"pixels": [[0, 1, ', as_json),
        Request("wrong-shape", json.dumps({"pixels": [row] * 27}).encode(), as_json),
        Request("out-of-range", json.dumps({"pixels": [[300] * 28] * 28}).encode(), as_json),
        Request("wrong-content-type", b"0,0,0", {"content-type": "text/csv"}),
        Request("not-an-image", not_image, not_image_headers),
        Request("no-file", no_file, {"content-type": "multipart/form-data; boundary=b"}),
    ]


def plan(total: int, malformed: float, payload: str, seed: int) -> list[Request]:
    """Exactly round(total * malformed) broken requests, at seeded random places."""
    rng = random.Random(seed)
    valid, broken = valid_requests(payload), malformed_requests()
    bad = set(rng.sample(range(total), round(total * malformed)))
    return [broken[i % len(broken)] if i in bad else valid[i % len(valid)] for i in range(total)]


class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    A load generator should cost far less than the server it measures: on a small machine
    httpx spent about as much CPU per request as the server, and its queueing showed up in the
    latencies. This sends a prepared request and reads the status and a Content-Length (or
    chunked) body, reconnecting when the server closes the connection.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, request: Request) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(request.content)}"]
        head += [f"{name}: {value}" for name, value in request.headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + request.content)
        try:
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionError("connection closed before a response")
            status = int(status_line.split()[1])
            headers = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            if "content-length" in headers:
                await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding") == "chunked":
                while size := int((await self.reader.readline()).split(b";")[0], 16):
                    await self.reader.readexactly(size + 2)
                await self.reader.readline()
            if headers.get("connection") == "close":
                self.close()
            return status
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(url: str, requests: list[Request], clients: int, warmup: int) -> tuple[list[tuple], float]:
    """Send ``requests`` from ``clients`` concurrent connections; (kind, status, seconds) each, and wall time."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    connections = [Connection(host, port) for _ in range(clients)]
    warm = next(r for r in requests if r.kind == "valid") if warmup else None
    for i in range(warmup):
        await connections[i % clients].post("/api/predict", warm)
    queue = iter(requests)
    results: list[tuple] = []

    async def client(connection: Connection) -> None:
        for request in queue:  # a shared iterator: each request is taken by exactly one client
            start = time.perf_counter()
            try:
                status: int | str = await connection.post("/api/predict", request)
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                status = type(exc).__name__
            results.append((request.kind, status, time.perf_counter() - start))

    start = time.perf_counter()
    try:
        await asyncio.gather(*(client(c) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    return results, time.perf_counter() - start


def summarize(results: list[tuple], wall: float) -> dict:
    def percentiles(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        ms = np.asarray(values) * 1000
        return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 90, 99)} | {
            "max": round(float(ms.max()), 2),
            "mean": round(float(ms.mean()), 2),
        }

    valid = [r for r in results if r[0] == "valid"]
    broken = [r for r in results if r[0] != "valid"]
    valid_errors = sum(1 for _, status, _ in valid if status != 200)
    broken_not_4xx = sum(1 for _, status, _ in broken if not (isinstance(status, int) and 400 <= status < 500))
    return {
        "requests": len(results),
        "seconds": round(wall, 3),
        "throughput_rps": round(len(results) / wall, 1),
        "latency_ms": percentiles([r[2] for r in results]),
        "valid_latency_ms": percentiles([r[2] for r in valid]),
        "valid": len(valid),
        "malformed": len(broken),
        "status_counts": {str(k): v for k, v in sorted(Counter(str(r[1]) for r in results).items())},
        "malformed_status_counts": {
            kind: dict(Counter(str(r[1]) for r in broken if r[0] == kind)) for kind in sorted({r[0] for r in broken})
        },
        "errors": valid_errors + broken_not_4xx,
        "valid_not_200": valid_errors,
        "malformed_not_4xx": broken_not_4xx,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(checkpoint: str, workers: int | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "mnist_nn", "serve", checkpoint, "--host", "127.0.0.1", "--port", str(port)]
    if workers is not None:
        command += ["--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"load: the server did not start: {process.stderr.read().strip()}")
        try:
            with urlopen(f"{url}/api/health", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except (URLError, OSError):
            pass
        time.sleep(0.2)
    stop_server(process)
    raise SystemExit("load: the server did not answer /api/health within 120 s")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", help="start `mnist-nn serve CHECKPOINT` on a free loopback port")
    parser.add_argument("--url", help="use a server already running on this machine instead (loopback only)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default: 32)")
    parser.add_argument("--requests", type=int, default=2000, help="requests in all (default: 2000)")
    parser.add_argument("--malformed", type=float, default=0.0, help="fraction of broken requests, 0-1 (default: 0)")
    parser.add_argument(
        "--payload",
        choices=("png", "json"),
        default="png",
        help="valid requests: 112x112 PNG uploads as the page sends (default), or JSON 28x28 pixels",
    )
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests first (default: 20)")
    parser.add_argument(
        "--workers", type=int, help="server worker processes, with CHECKPOINT (default: `mnist-nn serve`'s own)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of the whole load; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON result")
    parser.add_argument(
        "--name", help="result file name (default: load[-json][-malformed], from --payload and --malformed)"
    )
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.url is None):
        parser.error("give a CHECKPOINT to serve, or --url of a running server (not both)")
    if args.clients < 1 or args.requests < 1 or args.repeats < 1 or not 0.0 <= args.malformed <= 1.0:
        parser.error("--clients, --requests and --repeats must be positive, --malformed from 0 to 1")
    if args.workers is not None and (args.url or args.workers < 1):
        parser.error("--workers must be a positive integer, and goes with CHECKPOINT (not --url)")
    if args.url and urlsplit(args.url).hostname not in LOOPBACK:
        parser.error(f"--url must be on this machine ({', '.join(sorted(LOOPBACK))}), got {args.url}")

    process = None
    workers = None
    if args.checkpoint:
        from mnist_nn.apps.serve.server import default_workers

        workers = args.workers or default_workers()
        process, url = start_server(args.checkpoint, args.workers)
    else:
        url = args.url.rstrip("/")
    runs = []
    try:
        with urlopen(f"{url}/api/model", timeout=10) as response:
            model = json.load(response)
        requests = plan(args.requests, args.malformed, args.payload, args.seed)
        for _ in range(args.repeats):
            runs.append(summarize(*asyncio.run(run_load(url, requests, args.clients, args.warmup))))
    finally:
        if process is not None:
            stop_server(process)

    summary = sorted(runs, key=lambda run: run["latency_ms"]["p99"])[len(runs) // 2]  # even: the worse middle
    data = {
        "model": model["name"],
        "clients": args.clients,
        "payload": args.payload,
        "malformed_fraction": args.malformed,
        **summary,
        "errors": sum(run["errors"] for run in runs),
        "repeats": args.repeats,
        "runs": [
            {key: run[key] for key in ("throughput_rps", "errors")}
            | {"p50": run["latency_ms"]["p50"], "p99": run["latency_ms"]["p99"]}
            for run in runs
        ],
        "server_workers": workers,
        "server_threads": os.environ.get("MNIST_NN_THREADS", "1"),
    }
    default = (
        "load" + ("" if args.payload == "png" else f"-{args.payload}") + ("-malformed" if args.malformed > 0 else "")
    )
    name = args.name or default
    path = write_result(name, data, args.results)
    served = f" on {workers} worker processes" if workers else ""
    for i, run in enumerate(runs, start=1):
        lat = run["latency_ms"]
        which = f"run {i}/{len(runs)}: " if len(runs) > 1 else ""
        print(
            f"{which}{run['requests']} requests ({run['valid']} valid, {run['malformed']} malformed) from "
            f"{args.clients} clients to {model['name']}{served} ({args.payload}): {run['throughput_rps']} requests/s; "
            f"latency p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, max {lat['max']} ms"
        )
        print(
            f"{which}statuses {run['status_counts']}; errors {run['errors']} (valid not 200: {run['valid_not_200']}, "
            f"malformed not 4xx: {run['malformed_not_4xx']})"
        )
    if len(runs) > 1:
        print(f"median run by p99: {summary['latency_ms']['p99']} ms, {summary['throughput_rps']} requests/s")
    print(f"wrote {path}")
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
