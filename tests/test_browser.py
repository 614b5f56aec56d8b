"""The drawing page in a real browser: headless Chromium (the Debian package) driven by Playwright.

Playwright never downloads a browser here: it drives /usr/bin/chromium. Without it the test is
skipped, or fails when MNIST_NN_REQUIRE_BROWSER=1 (as in CI). MNIST_NN_SCREENSHOT=PATH also
copies the screenshot there, to look at, and the phone's and the explanation's beside it
(PATH's stem + -phone, -explain).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from conftest import trained_if_possible


@pytest.fixture(scope="module")
def checkpoint(request, random_checkpoint) -> tuple[Path, bool]:
    return trained_if_possible(request, random_checkpoint)


@pytest.fixture(scope="module")
def server(checkpoint):
    from live_server import live_server
    from mnist_nn.apps.serve import create_app
    from mnist_nn.inference.predictor import Predictor

    with live_server(create_app(Predictor.from_checkpoint(checkpoint[0]))) as url:
        yield url


def _answered(page) -> int:
    return int(page.evaluate("document.body.dataset.answered || '0'"))


def _wait_for_answer(page, after: int) -> None:
    page.wait_for_function("after => Number(document.body.dataset.answered || 0) > after", arg=after, timeout=20_000)


def _bar_percentages(page) -> list[float]:
    return [float(text.rstrip("%")) for text in page.locator("#bars li .pct").all_inner_texts()]


def _draw_seven(page) -> None:
    """Draw a 7 with the mouse (a bar, then a diagonal down to the left) and wait until the page settles."""
    box = page.locator("#pad").bounding_box()
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    before = _answered(page)
    page.mouse.move(x + 0.25 * w, y + 0.2 * h)
    page.mouse.down()
    page.mouse.move(x + 0.75 * w, y + 0.2 * h, steps=12)
    page.mouse.move(x + 0.42 * w, y + 0.85 * h, steps=16)
    page.mouse.up()
    _wait_for_answer(page, before)
    page.wait_for_timeout(300)  # the debounced last stroke's answer, if one is still coming
    page.wait_for_function("() => !document.body.dataset.busy")


def _open_page(browser, server, errors: list[str], foreign: list[str], **options):
    page = browser.new_page(**options)
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: request.url.startswith(server) or foreign.append(request.url))
    page.goto(server + "/")
    page.wait_for_function("() => document.getElementById('model-info').textContent.includes('parameters')")
    return page


def _copy_screenshot(shot: Path, suffix: str) -> None:
    """With MNIST_NN_SCREENSHOT=PATH, keep a screenshot beside it as PATH's stem + suffix (-phone, -explain)."""
    if os.environ.get("MNIST_NN_SCREENSHOT"):
        target = Path(os.environ["MNIST_NN_SCREENSHOT"])
        shutil.copyfile(shot, target.with_name(f"{target.stem}{suffix}{target.suffix}"))


def test_draw_and_upload_in_chromium(browser, server, checkpoint, tmp_path):
    trained = checkpoint[1]
    errors: list[str] = []
    foreign: list[str] = []
    page = _open_page(browser, server, errors, foreign, viewport={"width": 1000, "height": 900})
    assert page.locator("#bars li").count() == 10

    _draw_seven(page)
    label = page.locator("#label").inner_text()
    assert re.fullmatch(r"\d", label), label
    percentages = _bar_percentages(page)
    assert len(percentages) == 10 and abs(sum(percentages) - 100) < 1.0
    assert page.locator("#bars li.best").count() == 1
    assert page.locator("#bars li.best").get_attribute("data-label") == label
    widths = page.eval_on_selector_all("#bars .fill", "fills => fills.map(f => parseFloat(f.style.width))")
    assert max(widths) > 0
    seen_ink = page.evaluate(
        "(() => { const d = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;"
        " let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s; })()"
    )
    assert seen_ink > 0  # the 28x28 the model saw is shown
    if trained:
        assert label == "7"
    drawn_shot = tmp_path / "serve-drawn.png"
    page.screenshot(path=str(drawn_shot), full_page=True, animations="disabled")

    # Upload a file through the file input: a '1'.
    image = Image.new("L", (200, 260), 235)
    ImageDraw.Draw(image).line([(100, 30), (104, 230)], fill=20, width=16)
    one = tmp_path / "one.png"
    image.save(one)
    before = _answered(page)
    page.set_input_files("#file", str(one))
    _wait_for_answer(page, before)
    label = page.locator("#label").inner_text()
    assert re.fullmatch(r"\d", label), label
    if trained:
        assert label == "1"
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True, animations="disabled")
    assert shot.stat().st_size > 10_000
    _copy_screenshot(drawn_shot, "")

    # Keyboard: the controls are labelled buttons; Escape clears.
    assert page.get_by_role("button", name="Clear").is_visible()
    assert page.get_by_role("button", name="Upload an image…").is_visible()
    page.keyboard.press("Escape")
    assert page.locator("#label").inner_text() == "–"
    assert errors == [] and foreign == []
    page.close()


def test_page_fits_a_phone_screen(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 375, "height": 740}, has_touch=True, is_mobile=True)
    page.goto(server + "/")
    page.wait_for_function("() => document.getElementById('model-info').textContent.includes('parameters')")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    pad = page.locator("#pad").bounding_box()
    assert 250 <= pad["width"] <= 375
    # A tap on the pad draws a dot and asks the network, as a finger would.
    before = _answered(page)
    page.locator("#pad").tap(position={"x": pad["width"] / 2, "y": pad["height"] / 2})
    _wait_for_answer(page, before)
    assert page.locator("#confidence").inner_text() != "draw something"
    shot = tmp_path / "serve-phone.png"
    page.screenshot(path=str(shot), full_page=True, animations="disabled")
    _copy_screenshot(shot, "-phone")
    page.close()


# Red pixels of the map canvas (pushed towards the answer) and blue ones (away), as drawWhy tints them.
COUNT_TINTS = """(() => {
  const d = document.getElementById('why-map').getContext('2d').getImageData(0, 0, 28, 28).data;
  let red = 0, blue = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] > d[i + 2] + 40) red += 1;
    if (d[i + 2] > d[i] + 40) blue += 1;
  }
  return [red, blue];
})()"""


def test_why_this_answer_draws_the_map_over_the_digit(browser, server, checkpoint, tmp_path):
    errors: list[str] = []
    foreign: list[str] = []
    page = _open_page(browser, server, errors, foreign, viewport={"width": 1000, "height": 1000})
    asked: list[str] = []
    page.on("request", lambda request: "/api/predict" in request.url and asked.append(request.url))
    summary = page.locator("#why summary")
    assert summary.inner_text() == "why this answer?"
    assert not page.locator("#why-map").is_visible()  # closed until asked

    _draw_seven(page)
    # No map is computed unless asked for (the drawing is read in the browser once its model is loaded).
    assert all("explain" not in url for url in asked)
    assert page.evaluate(COUNT_TINTS) == [0, 0]
    before = _answered(page)
    summary.click()  # opening the toggle asks again, for the map
    _wait_for_answer(page, before)
    page.wait_for_function("() => !document.body.dataset.busy")
    assert page.locator("#why-map").is_visible()
    assert asked[-1].endswith("/api/predict?explain=true")
    red, blue = page.evaluate(COUNT_TINTS)
    assert red + blue >= 5  # the map is drawn, on a 28x28 canvas of 784 pixels...
    assert red + blue <= 400  # ...on the strokes: the background, where there is no ink, stays untinted
    if checkpoint[1]:
        assert page.locator("#label").inner_text() == "7"
        assert red >= 5  # a trained model's 7 has strokes that speak for it
    shot = tmp_path / "serve-explain.png"
    page.screenshot(path=str(shot), full_page=True, animations="disabled")
    assert shot.stat().st_size > 10_000
    _copy_screenshot(shot, "-explain")

    # Clear empties the map with the answer; closed again, new answers come without one.
    page.keyboard.press("Escape")
    assert page.evaluate(COUNT_TINTS) == [0, 0]
    summary.click()
    seen_before = len(asked)
    _draw_seven(page)
    assert all("explain" not in url for url in asked[seen_before:])
    assert errors == [] and foreign == []
    page.close()
