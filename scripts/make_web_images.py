"""The web page's pictures in the docs: the layer panel of the tutorial MLP and of a CNN, for a drawn digit.

    python scripts/make_web_images.py

Each bundled model (tutorial, robust) is exported with `mnist-nn export MODEL --format web`, served by
`python -m http.server`, and opened in Debian's Chromium (Playwright); a 3 is drawn with the mouse, the
pointer rests on a unit of the first layer (its weights show), and the page is photographed:
docs/images/web-layers-mlp.png, docs/images/web-layers-cnn.png.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
SHOTS = {"tutorial": "web-layers-mlp.png", "robust": "web-layers-cnn.png"}
# A 3 in a unit box: two arcs, drawn in one stroke.
THREE = [
    (0.45 + 0.3 * math.cos(math.radians(a)), 0.25 + 0.25 * math.sin(math.radians(a))) for a in range(200, 451, 18)
] + [(0.45 + 0.34 * math.cos(math.radians(a)), 0.73 + 0.27 * math.sin(math.radians(a))) for a in range(-90, 161, 18)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shoot(model: str, folder: Path) -> Path:
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
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(url)
            page.evaluate("window.mnistNN.ready.then(() => true)")
            draw(page, THREE)
            page.wait_for_timeout(400)
            page.wait_for_function("() => !document.body.dataset.busy")
            page.locator("#layers canvas").first.hover(position={"x": 40, "y": 4})
            target = IMAGES / SHOTS[model]
            page.screenshot(path=str(target), full_page=True, animations="disabled")
            browser.close()
        return target
    finally:
        server.terminate()
        server.wait(10)


def draw(page, stroke: list[tuple[float, float]]) -> None:
    box = page.locator("#pad").bounding_box()

    def at(point: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + box["width"] * (0.2 + 0.6 * point[0]), box["y"] + box["height"] * (0.15 + 0.7 * point[1])

    page.mouse.move(*at(stroke[0]))
    page.mouse.down()
    for point in stroke[1:]:
        page.mouse.move(*at(point), steps=4)
    page.mouse.up()


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        for model in SHOTS:
            print(f"wrote {shoot(model, Path(folder))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
