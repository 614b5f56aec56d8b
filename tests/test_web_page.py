"""The page that reads digits in the browser: `mnist-nn export --format web`, and `serve`'s page.

An exported folder is served by `python -m http.server` (no mnist-nn process behind it) and driven
in Debian's Chromium by Playwright (skipped without them, failing where MNIST_NN_REQUIRE_BROWSER=1).
The page's answers are held to `mnist-nn predict`'s, its 28x28 to the server's preprocessing of the
same drawing, and every request it makes to its own origin.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (
    CHROMIUM,
    assert_one_line_error,
    free_port,
    require_browser,
    run_main,
    trained_if_possible,
)

RUNTIME_VERSION = "1.30.0"
VENDOR = Path(__file__).resolve().parents[1] / "src/mnist_nn/apps/serve/static/vendor/onnxruntime-web"
ROBUST = Path(__file__).resolve().parents[1] / "src/mnist_nn/models/pretrained/robust.pt"


@pytest.fixture(scope="module")
def checkpoint(request, random_checkpoint) -> tuple[Path, bool]:
    return trained_if_possible(request, random_checkpoint)


@pytest.fixture(scope="module")
def site(checkpoint, tmp_path_factory) -> Path:
    from mnist_nn.apps.serve.web_export import export_web

    out = tmp_path_factory.mktemp("web") / "site"
    export_web(checkpoint[0], out)
    return out


def _static_server(folder: Path):
    """`python -m http.server` in ``folder`` on a free port: (process, base URL) once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=2).close()
            return process, url
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("python -m http.server did not start") from None
            time.sleep(0.1)


@pytest.fixture(scope="module")
def static_url(site):
    process, url = _static_server(site)
    yield url
    process.terminate()
    process.wait(10)


class Watched:
    """A page with its console errors and every request whose origin is not the page's own."""

    def __init__(self, browser, origin: str, init_script: str | None = None, **options) -> None:
        self.page = browser.new_page(**options)
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.requests: list[str] = []
        if init_script:
            self.page.add_init_script(init_script)
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", self._request)
        self.origin = origin

    def _request(self, request) -> None:
        self.requests.append(request.url)
        if not (request.url == self.origin or request.url.startswith(self.origin + "/")):
            self.foreign.append(request.url)

    def open(self, path: str = "/") -> None:
        self.page.goto(self.origin + path)
        # A static folder's first visit registers its service worker and reloads once (cross-origin isolated).
        self.page.wait_for_function("() => window.mnistNN")

    def check_clean(self) -> None:
        assert self.requests and self.foreign == [] and self.errors == []


# --------------------------------------------------------------------------- the export


def test_export_writes_a_folder_that_needs_no_server(site, checkpoint):
    import onnxruntime

    from mnist_nn.inference.predictor import Predictor

    page = (site / "index.html").read_text()
    assert 'data-mode="static"' in page and 'src="static/app.js"' in page and "http" not in page.split("<body")[0]
    for name in ("app.js", "model.js", "layers.js", "preprocess.js", "isolation.js", "style.css"):
        assert (site / "static" / name).is_file()
    assert (site / "isolation-worker.js").is_file() and not (site / "static/isolation-worker.js").exists()
    for name in ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm", "LICENSE"):
        assert (site / "static/vendor/onnxruntime-web" / name).read_bytes() == (VENDOR / name).read_bytes()
    assert RUNTIME_VERSION in (VENDOR / "README.md").read_text()
    assert f"ONNX Runtime Web v{RUNTIME_VERSION}" in (VENDOR / "ort.wasm.min.mjs").read_text()[:200]
    # The model describes itself to the page, and answers as PyTorch does.
    session = onnxruntime.InferenceSession(str(site / "model.onnx"), providers=["CPUExecutionProvider"])
    description = json.loads(session.get_modelmeta().custom_metadata_map["mnist_nn.web"])
    assert [layer["title"] for layer in description["layers"]] == [
        "dense 1, ReLU",
        "dense 2, ReLU",
        "dense 3, ReLU",
        "dense 4, ReLU",
    ]
    assert [layer["shape"] for layer in description["layers"]] == [[128], [256], [128], [64]]
    assert description["weights"]["shape"] == [128, 784] and description["labels"] == list("0123456789")
    pixels = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.float32)
    names = ["probabilities", description["weights"]["output"], *(layer["output"] for layer in description["layers"])]
    probabilities, weights, first, *_ = session.run(names, {"pixels": pixels})
    predictor = Predictor.from_checkpoint(checkpoint[0])
    assert np.abs(probabilities - predictor.probabilities(pixels).numpy()).max() < 1e-5
    linear = next(m for m in predictor.pixel_model.model.modules() if isinstance(m, torch.nn.Linear))
    weights = weights.T if description["weights"]["transposed"] else weights
    assert np.array_equal(weights, linear.weight.detach().numpy())
    assert first.shape == (5, 128) and first.min() >= 0


def test_export_web_of_the_bundled_cnn_and_its_errors(tmp_path, capsys):
    code, out, err = run_main(capsys, "export", "cnn-fast", "--format", "web", "--out", tmp_path / "cnn")
    assert code == 0 and "checked against PyTorch" in out, err
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "cnn/model.onnx"), providers=["CPUExecutionProvider"])
    description = json.loads(session.get_modelmeta().custom_metadata_map["mnist_nn.web"])
    assert [(layer["kind"], layer["shape"]) for layer in description["layers"]] == [
        ("maps", [32, 14, 14]),
        ("maps", [64, 7, 7]),
    ]
    assert description["weights"]["kind"] == "conv" and description["weights"]["shape"] == [32, 1, 5, 5]
    # Again into the same folder: an earlier export is replaced; anything else is never overwritten.
    assert run_main(capsys, "export", "cnn-fast", "--format", "web", "--out", tmp_path / "cnn")[0] == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = run_main(capsys, "export", "cnn-fast", "--format", "web", "--out", tmp_path / "mine")
    assert_one_line_error(code, err, "not empty")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    code, _, err = run_main(capsys, "export", "cnn-fast", "--format", "web")
    assert_one_line_error(code, err, "--out DIR")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn", "mine"]  # no staging folder left behind


# --------------------------------------------------------------------------- the page's answers


def _predict_cli(capsys, checkpoint: Path, images: np.ndarray, folder: Path) -> np.ndarray:
    """`mnist-nn predict CHECKPOINT --no-preprocess --top-k 10 --json` on the images, as PNG files: [N, 10]."""
    folder.mkdir()
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    code, out, err = run_main(capsys, "predict", checkpoint, *paths, "--no-preprocess", "--top-k", "10", "--json")
    assert code == 0, err
    table = np.zeros((len(images), 10))
    for i, result in enumerate(json.loads(out)):
        for entry in result["top"]:
            table[i, int(entry["label"])] = entry["probability"]
    return table


def _page_probabilities(browser, url: str, images: np.ndarray) -> np.ndarray:
    watched = Watched(browser, url)
    watched.open()
    watched.page.evaluate("window.mnistNN.ready.then(() => true)")
    rows = watched.page.evaluate(
        "async (images) => { const out = [];"
        " for (const p of images) out.push(await window.mnistNN.predict(p)); return out; }",
        images.reshape(len(images), -1).tolist(),
    )
    watched.check_clean()
    watched.page.close()
    return np.asarray(rows)


def test_predict_in_the_browser_matches_the_cli_on_200_mnist_digits(
    browser, checkpoint, site, static_url, capsys, tmp_path, mnist_dir
):
    from mnist_nn.data.datasets import load_dataset

    images = load_dataset("mnist", mnist_dir, allow_download=False).test_images[:200].numpy()
    expected = _predict_cli(capsys, checkpoint[0], images, tmp_path / "digits")
    got = _page_probabilities(browser, static_url, images)
    assert got.shape == (200, 10)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 1e-4
    # The bundled robust model reads each digit as it is and zoomed in and out (as `predict` does): the page too.
    robust_site = tmp_path / "robust"
    assert run_main(capsys, "export", "robust", "--format", "web", "--out", robust_site)[0] == 0
    expected = _predict_cli(capsys, ROBUST, images[:50], tmp_path / "robust-digits")
    process, url = _static_server(robust_site)
    try:
        got = _page_probabilities(browser, url, images[:50])
    finally:
        process.terminate()
        process.wait(10)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 1e-4


# --------------------------------------------------------------------------- threads: cross-origin isolation


def _cores(count: int) -> str:
    """An init script: the page sees ``count`` cores (navigator.hardwareConcurrency)."""
    return f"Object.defineProperty(Navigator.prototype, 'hardwareConcurrency', {{ get: () => {count} }});"


def _threads(page) -> dict:
    return page.evaluate(
        "window.mnistNN.ready.then(() => ({isolated: self.crossOriginIsolated, threads: window.mnistNN.threads,"
        " controlled: !!navigator.serviceWorker.controller}))"
    )


BAR = [255 if 12 <= i % 28 <= 15 and 4 <= i // 28 <= 23 else 0 for i in range(784)]  # a 1, in MNIST form


def test_the_exported_page_isolates_itself_for_threads(browser, site, static_url):
    """python -m http.server sends no isolation headers: on 8 cores the folder's service worker adds them,
    the page reloads once, isolated, and the model runs on 4 threads (half the cores, up to 4). On 2 cores
    one thread is all it would get: no worker, no reload. The same answer either way, nothing from elsewhere."""
    many = Watched(browser, static_url, init_script=_cores(8))
    many.open()
    assert _threads(many.page) == {"isolated": True, "threads": 4, "controlled": True}
    navigations = []
    many.page.on("framenavigated", lambda frame: navigations.append(frame.url))
    many.page.reload()
    many.page.wait_for_function("() => window.mnistNN")
    assert _threads(many.page)["isolated"] is True and len(navigations) == 1  # no second reload
    threaded = many.page.evaluate("pixels => window.mnistNN.predict(pixels)", BAR)
    many.check_clean()
    # Another page in the worker's scope (here the server's listing of static/) is left as its server sends it.
    many.page.goto(f"{static_url}/static/")
    assert many.page.evaluate("[self.crossOriginIsolated, !!navigator.serviceWorker.controller]") == [False, True]
    many.page.close()
    two = Watched(browser, static_url, init_script=_cores(2))
    two.open()
    assert _threads(two.page) == {"isolated": False, "threads": 1, "controlled": False}
    single = two.page.evaluate("pixels => window.mnistNN.predict(pixels)", BAR)
    assert not any(url.endswith("isolation-worker.js") for url in two.requests)
    two.check_clean()
    two.page.close()
    assert len(single) == 10 and abs(sum(single) - 1) < 1e-4
    assert np.abs(np.asarray(threaded) - single).max() < 1e-6


def test_without_its_worker_the_exported_page_runs_on_one_thread(browser, site, tmp_path):
    """A host that lacks isolation-worker.js (or refuses it): the page stays as it is, one thread, no reload loop."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(site, bare)
    (bare / "isolation-worker.js").unlink()
    process, url = _static_server(bare)
    try:
        watched = Watched(browser, url, init_script=_cores(8))
        watched.open()
        state = _threads(watched.page)
        probabilities = watched.page.evaluate("pixels => window.mnistNN.predict(pixels)", BAR)
    finally:
        process.terminate()
        process.wait(10)
    assert state == {"isolated": False, "threads": 1, "controlled": False}
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-4
    assert watched.foreign == [] and all("404" in error for error in watched.errors)
    watched.page.close()


# --------------------------------------------------------------------------- drawing on the page


# Digits as strokes in a unit box (x right, y down), each stroke a polyline.
def _arc(
    cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 14
) -> list[tuple[float, float]]:
    return [
        (
            cx + rx * math.cos(math.radians(start + (end - start) * i / n)),
            cy + ry * math.sin(math.radians(start + (end - start) * i / n)),
        )
        for i in range(n + 1)
    ]


DIGITS = {
    "0": [_arc(0.5, 0.5, 0.32, 0.45, -90, 270, 24)],
    "1": [[(0.35, 0.2), (0.55, 0.0), (0.55, 1.0)]],
    "2": [[*_arc(0.5, 0.28, 0.3, 0.26, 190, 360), (0.15, 1.0), (0.85, 1.0)]],
    "3": [_arc(0.45, 0.25, 0.3, 0.25, 200, 450) + _arc(0.45, 0.73, 0.34, 0.27, -90, 160)],
    "4": [[(0.6, 0.0), (0.1, 0.7), (0.9, 0.7)], [(0.65, 0.35), (0.65, 1.0)]],
    "5": [[(0.8, 0.0), (0.25, 0.0), (0.2, 0.45), *_arc(0.45, 0.68, 0.33, 0.3, 230, 500)]],
    "6": [[(0.7, 0.0), (0.3, 0.4), *_arc(0.5, 0.72, 0.3, 0.28, 200, 560, 20)]],
    "7": [[(0.1, 0.0), (0.9, 0.0), (0.4, 1.0)]],
    "8": [_arc(0.5, 0.25, 0.25, 0.25, 90, 450, 18) + _arc(0.5, 0.74, 0.3, 0.26, -90, 270, 20)],
    "9": [[*_arc(0.5, 0.28, 0.3, 0.28, 0, 360, 20), (0.8, 0.28), (0.75, 1.0)]],
}
# (size as a share of the pad's side, centre x, centre y, slant): sizes, places and slants of ordinary writing.
STYLES = [(0.7, 0.5, 0.5, 0.0), (0.5, 0.38, 0.42, 0.2), (0.6, 0.6, 0.58, -0.15)]


def _draw(page, strokes, style, on_the_way=None) -> None:
    """Draw ``strokes`` with the mouse on the pad in ``style``; ``on_the_way(move)`` runs mid-stroke, pen down
    (``move()`` moves the pen on by two pixels: one more event that draws)."""
    box = page.locator("#pad").bounding_box()
    size, cx, cy, slant = style
    left = box["x"] + box["width"] * (cx - size / 2)
    top = box["y"] + box["height"] * (cy - size / 2)

    def at(point):
        x, y = point
        return left + box["width"] * size * (0.5 + (x - 0.5) * 0.75 + slant * (0.5 - y)), top + box["height"] * size * y

    for stroke in strokes:
        page.mouse.move(*at(stroke[0]))
        page.mouse.down()
        for i, point in enumerate(stroke[1:], start=1):
            page.mouse.move(*at(point), steps=3)
            if on_the_way is not None and i == len(stroke) // 2:
                x, y = at(point)
                on_the_way(lambda x=x, y=y: page.mouse.move(x + 2, y + 2, steps=1))
                on_the_way = None
        page.mouse.up()


def _settle(page, before: int) -> None:
    page.wait_for_function("n => Number(document.body.dataset.answered || 0) > n", arg=before, timeout=20_000)
    page.wait_for_timeout(150)
    page.wait_for_function("() => !document.body.dataset.busy", timeout=20_000)


def _answered(page) -> int:
    return int(page.evaluate("document.body.dataset.answered || '0'"))


def test_drawn_digits_read_as_the_server_would(browser, checkpoint, static_url, tmp_path):
    from mnist_nn.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint[0])
    watched = Watched(browser, static_url, viewport={"width": 1000, "height": 1000})
    watched.open()
    page = watched.page
    page.evaluate("window.mnistNN.ready.then(() => true)")
    assert page.locator("#inside").is_visible() and not page.locator("#upload").is_visible()
    updates: list[int] = []

    def panel_updates() -> int:
        return int(page.evaluate("document.getElementById('layers').dataset.updates || '0'"))

    def while_drawing(move) -> None:
        # The pen is down: the panel follows the drawing without waiting for the stroke to end.
        page.wait_for_function("() => !document.body.dataset.busy")
        start = panel_updates()
        move()
        page.wait_for_function("n => Number(document.getElementById('layers').dataset.updates) > n", arg=start)
        updates.append(panel_updates() - start)

    differences, agree, labels = [], 0, []
    for d, (digit, strokes) in enumerate(sorted(DIGITS.items())):
        for s, style in enumerate(STYLES):
            page.keyboard.press("Escape")
            before = _answered(page)
            _draw(page, strokes, style, while_drawing if d == s == 0 else None)
            _settle(page, before)
            assert page.locator("#latency").inner_text().endswith("in this browser (WebAssembly)")
            image = page.evaluate("window.mnistNN.lastImage")
            seen = np.asarray(page.evaluate("window.mnistNN.lastInput"), dtype=np.float32).reshape(28, 28)
            grey = np.asarray(image["grey"], dtype=np.uint8).reshape(image["height"], image["width"])
            png = io.BytesIO()
            Image.fromarray(grey).save(png, format="PNG")
            reading = predictor.read_image(png.getvalue())
            differences.append(float(np.abs(seen - reading.pixels[0]).mean()))
            label = page.locator("#label").inner_text()
            agree += label == reading.digits[0].label
            labels.append((digit, label))
    # Shown with `pytest -s`: the figures the docs quote.
    print(
        f"\n30 drawn digits: mean |page - server| per pixel {np.mean(differences):.3f} grey levels (worst digit "
        f"{max(differences):.3f}); labels agree {agree}/30; right {sum(d == g for d, g in labels)}/30"
    )
    assert updates and updates[0] >= 1
    assert len(differences) == 30
    assert max(differences) <= 2.0, differences
    assert agree == 30, labels
    if checkpoint[1]:
        assert sum(digit == label for digit, label in labels) >= 20, labels
    shot = tmp_path / "web-page.png"
    page.screenshot(path=str(shot), full_page=True, animations="disabled")
    # Hovering over the first layer shows a unit's weights.
    page.locator("#layers canvas").first.hover(position={"x": 3, "y": 3})
    assert page.locator("#weights").is_visible()
    assert "unit 1" in page.locator("#weights-caption").inner_text()
    watched.check_clean()
    page.close()


# --------------------------------------------------------------------------- serve's page


@pytest.fixture(scope="module")
def server(checkpoint):
    from live_server import live_server
    from mnist_nn.apps.serve import create_app
    from mnist_nn.inference.predictor import Predictor

    with live_server(create_app(Predictor.from_checkpoint(checkpoint[0]))) as url:
        yield url


def _draw_seven(page) -> None:
    before = _answered(page)
    _draw(page, DIGITS["7"], STYLES[0])
    _settle(page, before)


def test_serve_reads_drawings_in_the_browser(browser, server):
    watched = Watched(browser, server, viewport={"width": 1000, "height": 1000})
    watched.open()
    page = watched.page
    page.evaluate("window.mnistNN.ready.then(() => true)")
    _draw_seven(page)
    assert page.locator("#latency").inner_text().endswith("in this browser (WebAssembly)")
    assert not any("/api/predict" in url for url in watched.requests)  # the drawing never went to the server
    assert any(url.endswith("/api/model.onnx") for url in watched.requests)
    assert page.locator("#inside").is_visible()
    # serve sends the isolation headers itself: threads without a service worker.
    cores = page.evaluate("navigator.hardwareConcurrency")
    assert _threads(page) == {"isolated": True, "threads": min(4, math.ceil(cores / 2)), "controlled": False}
    for path in ("/", "/static/app.js"):
        with urllib.request.urlopen(server + path) as response:
            assert response.headers["cross-origin-opener-policy"] == "same-origin"
            assert response.headers["cross-origin-embedder-policy"] == "require-corp"
    watched.check_clean()
    page.close()


def test_serve_falls_back_to_the_server_without_webassembly(browser, server):
    watched = Watched(
        browser, server, init_script="delete window.WebAssembly;", viewport={"width": 1000, "height": 1000}
    )
    watched.open()
    page = watched.page
    assert (
        page.evaluate("window.mnistNN.ready.then(() => 'loaded', (e) => e.message)")
        == "this browser has no WebAssembly"
    )
    page.wait_for_function("() => document.getElementById('model-info').textContent.includes('parameters')")
    _draw_seven(page)
    assert page.locator("#latency").inner_text().endswith("on the server")
    assert any(url.endswith("/api/predict") for url in watched.requests)
    assert not page.locator("#inside").is_visible()
    # The entry point still answers, by the server.
    bar = [255 if 12 <= i % 28 <= 15 and 4 <= i // 28 <= 23 else 0 for i in range(784)]  # a 1, MNIST form
    probabilities = page.evaluate("pixels => window.mnistNN.predict(pixels)", bar)
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-4
    watched.check_clean()
    page.close()


def test_the_web_page_benchmark_runs(tmp_path):
    """benchmarks/web_page.py end to end at its smallest (one small model, a few digits): its plumbing, not speed."""
    require_browser(CHROMIUM.exists(), f"no Chromium at {CHROMIUM}")
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "web_page.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--models", "cnn-fast", "--digits", "5", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = json.loads((tmp_path / "web-page.json").read_text())["models"]
    assert result["digits"] == 5 and 0 < result["ms_per_digit"]["median"] <= result["ms_per_digit"]["p95"]
    load = result["first_load"]
    assert (
        "/static/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm" in load["files"] and "/model.onnx" in load["files"]
    )
    assert 0 < load["gzipped_bytes"] < load["bytes"]
    assert "ms per digit median" in done.stdout


def _registered_models() -> list[str]:
    from mnist_nn.models.networks import MODELS

    return sorted(MODELS)


@pytest.mark.parametrize("name", _registered_models())
def test_every_registered_model_gets_its_layer_panel(name, tmp_path):
    """Each model's web export: a panel layer per activation and pooling, each checked against PyTorch's."""
    from mnist_nn.apps.serve.web_export import web_model
    from mnist_nn.models.checkpoint import CheckpointMeta, save_checkpoint
    from mnist_nn.models.networks import build_model

    torch.manual_seed(0)
    model = build_model(name).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, CheckpointMeta(name, {}, "mnist", 0.1307, 0.3081, recipe={}), metrics={})
    _, description = web_model(path)
    shown = [m for m in model.modules() if isinstance(m, torch.nn.ReLU | torch.nn.MaxPool2d)]
    assert len(description["layers"]) == len(shown) > 0
    assert description["layers"][0]["title"].split(",")[0] in ("conv 1", "dense 1")
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
    assert description["weights"]["shape"] == list(first.weight.shape)
