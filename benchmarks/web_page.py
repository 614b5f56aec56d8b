"""The page that reads digits in the browser: per-digit time in Chromium, and what a first visit downloads.

    python benchmarks/web_page.py [--models robust tutorial] [--digits 200]

For each model, `mnist-nn export MODEL --format web` writes the static folder, `python -m http.server`
serves it, and headless Chromium (Debian's, driven by Playwright) opens the page and reads ``--digits``
MNIST test digits, each drawn as the pad would hold it (dark on white, 112x112): the page's own
preprocessing (static/preprocess.js) and ``window.mnistNN.predict``, timed together with
performance.now() (preprocessing included), as median and p95 milliseconds; the model alone too.
First-load bytes are the files the page fetched until ``window.mnistNN.ready`` resolved, as stored
and gzipped (level 6, what web servers commonly use); the page's threads are recorded too (several only
where it is cross-origin isolated, on 3 cores or more). Goal: median <= 5 ms for robust. Without the
MNIST files the digits are drawn strokes (benchmarks/load.py's) instead. Writes web-page.json.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, announce_host, default_data_dir, write_result
from load import STROKES, draw_digit, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]

# In the page: each drawing read as the pad's is, preprocessing and the model timed together.
TIME_DIGITS = """async (drawings) => {
  const { toMnist } = await import("./static/preprocess.js");
  await window.mnistNN.ready;
  const total = [], model = [], labels = [];
  for (const grey of drawings) {
    const start = performance.now();
    const pixels = toMnist(Uint8Array.from(grey), 112, 112);
    const middle = performance.now();
    const probabilities = await window.mnistNN.predict(pixels);
    const end = performance.now();
    total.push(end - start);
    model.push(end - middle);
    labels.push(probabilities.indexOf(Math.max(...probabilities)));
  }
  return { total, model, labels };
}"""


def drawings(count: int, data_dir: str | None) -> tuple[list[list[int]], list[int] | None]:
    """``count`` digits as the pad holds them (112x112 grey levels, dark on white), and their labels if known."""
    if data_dir is not None:
        from mnist_nn.data.datasets import load_dataset

        splits = load_dataset("mnist", data_dir, allow_download=False)
        images = splits.test_images[:count].numpy()
        pads = [
            255 - np.asarray(Image.fromarray(image).resize((112, 112), Image.Resampling.BILINEAR)) for image in images
        ]
        return [pad.ravel().tolist() for pad in pads], splits.test_labels[:count].tolist()
    labels = [label for _ in range(count) for label in STROKES][:count]
    return [np.asarray(draw_digit(label)).ravel().tolist() for label in labels], [int(label) for label in labels]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(model: str, pads: list[list[int]], labels: list[int] | None, folder: Path) -> dict:
    from playwright.sync_api import sync_playwright

    site = folder / model
    subprocess.run(
        [sys.executable, "-m", "mnist_nn", "export", model, "--format", "web", "--out", str(site)], check=True
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page()
            fetched: list[str] = []
            page.on("request", lambda request: fetched.append(urlparse(request.url).path))
            page.goto(url)
            # The first visit registers the folder's service worker and reloads once, isolated: wait for that.
            page.wait_for_function("() => window.mnistNN")
            page.evaluate("window.mnistNN.ready.then(() => true)")
            loaded = sorted(set(fetched))
            timings = page.evaluate(TIME_DIGITS, pads)
            timings["isolated"] = page.evaluate("self.crossOriginIsolated")
            timings["threads"] = page.evaluate("window.mnistNN.threads")
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    return _summary(model, site, loaded, timings, labels)


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _summary(model: str, site: Path, loaded: list[str], timings: dict, labels: list[int] | None) -> dict:
    files = [site / ("index.html" if path == "/" else path.lstrip("/")) for path in loaded]
    raw = sum(path.stat().st_size for path in files)
    zipped = sum(len(gzip.compress(path.read_bytes(), compresslevel=6)) for path in files)
    total, alone = timings["total"], timings["model"]
    right = None if labels is None else sum(int(a == b) for a, b in zip(timings["labels"], labels, strict=True))
    return {
        "model": model,
        "digits": len(total),
        "ms_per_digit": {"median": statistics.median(total), "p95": percentile(total, 95), "max": max(total)},
        "ms_model_alone": {"median": statistics.median(alone), "p95": percentile(alone, 95)},
        "first_load": {"files": loaded, "bytes": raw, "gzipped_bytes": zipped},
        "model_bytes": (site / "model.onnx").stat().st_size,
        "read_right": right,
        # ONNX Runtime Web's threads: several only in a cross-origin isolated page (the folder's service worker).
        "cross_origin_isolated": timings["isolated"],
        "threads": timings["threads"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["robust", "tutorial"], help="bundled models to measure")
    parser.add_argument("--digits", type=int, default=200, help="digits read per model (default 200)")
    parser.add_argument("--data-dir", default=default_data_dir(), help="the MNIST files (default: $MNIST_NN_DATA)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for web-page.json")
    args = parser.parse_args()
    announce_host()
    pads, labels = drawings(args.digits, args.data_dir)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models:
            result = measure(model, pads, labels, Path(folder))
            results.append(result)
            time_ = result["ms_per_digit"]
            load = result["first_load"]
            print(
                f"{model}: {time_['median']:.2f} ms per digit median, p95 {time_['p95']:.2f} ms (preprocessing "
                f"included; model alone {result['ms_model_alone']['median']:.2f} ms) over {result['digits']} digits; "
                f"first load {load['bytes'] / 1e6:.2f} MB, {load['gzipped_bytes'] / 1e6:.2f} MB gzipped"
                + ("" if result["read_right"] is None else f"; read right {result['read_right']}/{result['digits']}")
                + f"; {result['threads']} thread(s)",
                flush=True,
            )
    write_result("web-page", {"browser": "chromium (Debian), headless", "models": results}, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
