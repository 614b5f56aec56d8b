"""Serving speed, all the figures at once: an older server against today's, the bundled model, preprocessing.

    python benchmarks/serve_speed.py --baseline-src OLD/src [--checkpoint TUTORIAL.pt] [--rounds 3]

- Preprocessing: the median time to preprocess a clean 28x28 MNIST test digit (the fast path, target
  <= 1 ms) and a drawing as the page sends it (112x112 PNG, decoded first, untimed).
- Old against today: `mnist-nn serve CHECKPOINT` from ``--baseline-src`` (a checkout's src folder, e.g.
  of commit ff70448: ``git worktree add /tmp/ff70448 ff70448``) and from this checkout, alternated
  ``--rounds`` times (old, today, today, old, ...), each run 32 clients posting JSON 28x28 pixels
  (benchmarks/load.py's load); the ratio of today's median throughput and p99 to the old server's.
- The bundled default model (`mnist-nn serve` with no checkpoint): JSON and PNG, 32 clients.
- Then benchmarks/load.py itself re-measures load-json.json (today's server, the checkpoint, JSON).

Without ``--checkpoint`` a tutorial checkpoint is trained first (3 epochs, needs MNIST). Figures depend
on the machine and on what else runs on it: run it on a quiet one. Writes serve-speed.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, announce_host, default_data_dir, write_result
from load import draw_digit, free_port, plan, run_load, stop_server, summarize

SRC = Path(__file__).resolve().parents[1] / "src"


def preprocessing_ms(data_dir: str | None, count: int = 1000) -> dict[str, float | None]:
    """Median milliseconds to preprocess a clean MNIST digit (28x28) and a page-sized drawing (112x112)."""
    from mnist_nn.inference.preprocess import load_grayscale, preprocess_image

    def median_ms(images: list[np.ndarray]) -> float:
        for image in images[:20]:
            preprocess_image(image)  # first calls: imports, caches
        times = []
        for image in images:
            start = time.perf_counter()
            preprocess_image(image)
            times.append(time.perf_counter() - start)
        return round(1000 * statistics.median(times), 3)

    drawings = []
    for label in "17402" * 20:
        buffer = io.BytesIO()
        draw_digit(label).save(buffer, format="PNG")
        drawings.append(load_grayscale(buffer.getvalue()))
    clean = None
    if data_dir:
        from mnist_nn.data.datasets import load_dataset

        digits = load_dataset("mnist", data_dir, allow_download=False).test_images[:count].numpy()
        clean = median_ms([digit.astype(np.float32) for digit in digits])
    return {"clean_28x28_ms": clean, "drawing_112x112_ms": median_ms(drawings)}


def start(src: Path, checkpoint: str | None) -> tuple[subprocess.Popen, str]:
    """`mnist-nn serve [CHECKPOINT]` from the package in ``src`` on a free loopback port, once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "mnist_nn", "serve", *([checkpoint] if checkpoint else [])]
    env = {**os.environ, "PYTHONPATH": str(src)}
    process = subprocess.Popen(
        [*command, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve_speed: the server from {src} did not start: {process.stderr.read().strip()}")
        try:
            with urlopen(f"{url}/api/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.2)
    stop_server(process)
    raise SystemExit(f"serve_speed: the server from {src} did not answer within 180 s")


def measure(src: Path, checkpoint: str | None, payload: str, requests: int, clients: int) -> dict:
    """One load run against a fresh server: throughput, p50, p99 and errors."""
    process, url = start(src, checkpoint)
    try:
        results, wall = asyncio.run(run_load(url, plan(requests, 0.0, payload, 0), clients, warmup=50))
    finally:
        stop_server(process)
    run = summarize(results, wall)
    print(
        f"  {src.parent.name or src} {payload}: {run['throughput_rps']} requests/s, p50 {run['latency_ms']['p50']} ms, "
        f"p99 {run['latency_ms']['p99']} ms, errors {run['errors']}",
        flush=True,
    )
    return {"throughput_rps": run["throughput_rps"], **run["latency_ms"], "errors": run["errors"]}


def medians(runs: list[dict]) -> dict:
    return {key: round(statistics.median(run[key] for run in runs), 2) for key in ("throughput_rps", "p50", "p99")}


def tutorial_checkpoint(data_dir: str | None, folder: Path) -> str:
    if not data_dir:
        raise SystemExit("serve_speed: give --checkpoint, or MNIST data to train a tutorial checkpoint on")
    command = [
        sys.executable,
        "-m",
        "mnist_nn",
        "train",
        "--recipe",
        "tutorial",
        "--epochs",
        "3",
        "--out",
        str(folder / "run"),
    ]
    subprocess.run([*command, "--data-dir", data_dir], check=True, stdout=subprocess.DEVNULL)
    return str(folder / "run" / "model.pt")


def compare(args: argparse.Namespace, checkpoint: str) -> dict:
    """Old and today's server alternated on ``checkpoint``, JSON: each one's median run and today's ratios."""
    runs: dict[str, list[dict]] = {"baseline": [], "today": []}
    sources = {"baseline": args.baseline_src, "today": SRC}
    for round_ in range(args.rounds):
        order = ["baseline", "today"] if round_ % 2 == 0 else ["today", "baseline"]
        for which in order:
            runs[which].append(measure(sources[which], checkpoint, "json", args.requests, args.clients))
    old, new = medians(runs["baseline"]), medians(runs["today"])
    return {
        "baseline_src": str(args.baseline_src),
        "baseline": old | {"runs": runs["baseline"]},
        "today": new | {"runs": runs["today"]},
        "throughput_ratio": round(new["throughput_rps"] / old["throughput_rps"], 3),
        "p99_ratio": round(new["p99"] / old["p99"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True, help="the src folder of the server to compare")
    parser.add_argument("--checkpoint", help="a tutorial checkpoint (default: train one, 3 epochs)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated runs of each server (default: 3)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per run (default: 2000)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default: 32)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON results")
    parser.add_argument("--skip-load-json", action="store_true", help="do not re-measure load-json.json")
    args = parser.parse_args(argv)
    if not (args.baseline_src / "mnist_nn").is_dir():
        parser.error(f"--baseline-src must be a src folder holding mnist_nn, got {args.baseline_src}")
    host = announce_host()
    data_dir = default_data_dir()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or tutorial_checkpoint(data_dir, Path(tmp))
        data: dict = {"preprocess": preprocessing_ms(data_dir)}
        print(f"preprocessing: {data['preprocess']}", flush=True)
        print(f"{args.baseline_src} against today ({checkpoint}, JSON, {args.clients} clients):", flush=True)
        data["tutorial_json"] = compare(args, checkpoint)
        print("bundled default model:", flush=True)
        for payload in ("json", "png"):
            runs = [measure(SRC, None, payload, args.requests, args.clients) for _ in range(args.rounds)]
            data[f"bundled_{payload}"] = medians(runs) | {"runs": runs}
        if not args.skip_load_json:
            load = [sys.executable, str(Path(__file__).with_name("load.py")), checkpoint, "--payload", "json"]
            subprocess.run([*load, "--repeats", "3", "--results", str(args.results)], check=True)
    data |= {"clients": args.clients, "requests_per_run": args.requests, "rounds": args.rounds}
    path = write_result("serve-speed", data, args.results)
    t = data["tutorial_json"]
    print(
        f"today / baseline (tutorial, JSON): throughput x{t['throughput_ratio']}, p99 x{t['p99_ratio']}; bundled: "
        f"JSON {data['bundled_json']['throughput_rps']} requests/s (p99 {data['bundled_json']['p99']} ms), "
        f"PNG {data['bundled_png']['throughput_rps']} requests/s (p99 {data['bundled_png']['p99']} ms); "
        f"host {host['cpu_model']}, {host['cores']} cores; wrote {path}"
    )
    return 1 if any(run["errors"] for part in ("bundled_json", "bundled_png") for run in data[part]["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
