"""The watch page in a real browser, beside real training runs: headless Chromium (the Debian package)
driven by Playwright, and `mnist-nn watch` as its own process.

The runs train in a thread of this process (on real MNIST where it is at hand, else on the toy
set), in a few seconds. The first test holds its run after each epoch until the page has shown
that epoch, so that "the points grow while it trains" is checked without any timing.

Playwright never downloads a browser here: it drives /usr/bin/chromium. Without it the tests are
skipped, or fail when MNIST_NN_REQUIRE_BROWSER=1 (as in CI). MNIST_NN_WATCH_SCREENSHOT=PATH also
copies the screenshots there: PATH (one run) and PATH's stem + "-compare" (two runs), to look at.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import real_mnist_dir, toy_spec, write_idx_dataset

WAIT_MS = 120_000  # a generous bound for a loaded machine, never a measurement


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Iterator[dict]:
    """Training arguments for a run of a few seconds: real MNIST in batches of 500 where it is at hand
    (120 batches an epoch, a point every 10), else the toy set (30 batches of 20, a point every 3)."""
    found = real_mnist_dir()
    if found is not None:
        yield {"data_dir": found, "batch_size": 500, "log_every": 10, "points_per_epoch": 12}
        return
    from mnist_nn.data.datasets import DATASETS, DatasetSpec, register_dataset

    folder = write_idx_dataset(tmp_path_factory.mktemp("toy") / "toy", train=600, test=200)
    register_dataset(DatasetSpec(**toy_spec("toy")))
    yield {"data_dir": folder, "dataset": "toy", "batch_size": 20, "log_every": 3, "points_per_epoch": 10}
    DATASETS.pop("toy", None)


@pytest.fixture(scope="module")
def made() -> dict[str, Path]:
    """Runs a test trained, for a later test to reuse (each trains its own when run alone)."""
    return {}


class Training:
    """mnist_nn.train in a thread; ``gate`` holds the loop after each epoch until released."""

    def __init__(self, out: Path, recipe: dict, gate: threading.Semaphore | None = None, **overrides) -> None:
        import mnist_nn

        arguments = {k: v for k, v in recipe.items() if k != "points_per_epoch"}
        self.error: BaseException | None = None

        def run() -> None:
            try:
                mnist_nn.train("tutorial", out=out, quiet=True, device="cpu", **arguments, **overrides)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(WAIT_MS / 1000)
        assert not self.thread.is_alive(), "training did not end"
        if self.error is not None:
            raise self.error


def hold_after_each_epoch(monkeypatch) -> threading.Semaphore:
    """A semaphore the training loop takes after each epoch's metrics line (its samples are written before it)."""
    from mnist_nn.training.report import RunReport

    allowed = threading.Semaphore(0)
    record = RunReport.record

    def record_then_wait(report, *args, **kwargs) -> None:
        record(report, *args, **kwargs)
        if not allowed.acquire(timeout=WAIT_MS / 1000):
            raise RuntimeError("the test never let the next epoch start")

    monkeypatch.setattr(RunReport, "record", record_then_wait)
    return allowed


@contextlib.contextmanager
def watching(*folders: Path) -> Iterator[str]:
    """`mnist-nn watch FOLDER...` on a free port, as a user starts it; yields its URL, stops it with Ctrl-C."""
    command = [sys.executable, "-m", "mnist_nn", "watch", *map(str, folders), "--port", "0"]
    child = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stderr.readline()
        found = re.search(r"at (http://\S+/) \(Ctrl-C to stop\)", line)
        assert found, line + child.stderr.read()
        yield found[1]
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0  # Ctrl-C is the normal end of a watch
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def open_page(browser, url: str, problems: list[str]):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("request", lambda request: request.url.startswith(url) or problems.append(f"foreign {request.url}"))
    page.goto(url)
    return page


def wait_for(page, condition: str, arg=None) -> None:
    page.wait_for_function(condition, arg=arg, timeout=WAIT_MS)


def plotted(page, chart: str) -> list[int]:
    """The points each series of a chart plots now, read from the uPlot instance itself."""
    return page.evaluate(
        "chart => window.watchCharts[chart].data.slice(1).map(s => s.filter(v => v != null).length)", chart
    )


def save_screenshot(page, tmp_path: Path, suffix: str) -> Path:
    shot = tmp_path / f"watch{suffix}.png"
    page.screenshot(path=str(shot), full_page=True, animations="disabled")
    assert shot.stat().st_size > 10_000
    if os.environ.get("MNIST_NN_WATCH_SCREENSHOT"):
        target = Path(os.environ["MNIST_NN_WATCH_SCREENSHOT"])
        shutil.copyfile(shot, target.with_name(f"{target.stem}{suffix}{target.suffix}"))
    return shot


def final_accuracy(folder: Path) -> str:
    return f"{100 * json.loads((folder / 'summary.json').read_text())['test_accuracy']:.2f}%"


def test_the_page_follows_a_run_as_it_trains_and_shows_its_final_accuracy(browser, recipe, made, tmp_path, monkeypatch):
    folder = tmp_path / "tutorial"
    folder.mkdir()  # as `mnist-nn train` makes it, before its first file
    per_epoch = recipe["points_per_epoch"]
    problems: list[str] = []
    with watching(folder) as url:
        page = open_page(browser, url, problems)
        wait_for(page, "() => document.querySelector('.run')?.dataset.status === 'waiting'")
        assert page.locator(".run .message").inner_text().startswith("waiting for the run to start")
        assert plotted(page, "loss") == [0, 0]

        allowed = hold_after_each_epoch(monkeypatch)
        training = Training(folder, recipe, epochs=3)
        seen = []
        for epoch in (1, 2):
            # Held after this epoch: the page must catch up with it, then the run goes on.
            wait_for(page, "n => Number(document.body.dataset.accuracyPoints) === n", epoch)
            seen.append(plotted(page, "loss"))
            assert page.locator(".run .epoch dd").inner_text() == f"{epoch + 1} of 3"
            assert page.locator(".run .message").inner_text() == f"training epoch {epoch + 1} of 3"
            assert f"after epoch {epoch}" in page.locator(".run h3").inner_text()
            allowed.release()
        assert seen == [[per_epoch, 1], [2 * per_epoch, 2]]  # train points and held-out points, growing
        allowed.release()  # after the last epoch
        training.join()

        wait_for(page, "() => document.body.dataset.finished === '1'")
        assert plotted(page, "loss") == [3 * per_epoch, 3] and plotted(page, "accuracy") == [3]
        assert page.locator(".run .test-acc dd").inner_text() == final_accuracy(folder)
        assert page.locator(".run .badge").inner_text().lower() == "finished"
        assert page.locator(".run .digits li").count() == 10
        assert page.locator(".run h3").inner_text().endswith("after epoch 3")
        save_screenshot(page, tmp_path, "")
        page.close()
    assert problems == []
    made["tutorial"] = folder


def test_two_runs_are_overlaid_in_the_same_charts(browser, recipe, made, tmp_path):
    first = made.get("tutorial")
    if first is None:
        first = tmp_path / "tutorial"
        Training(first, recipe, epochs=3).join()
    second = tmp_path / "tutorial-lr-0.0005"
    second.mkdir()
    problems: list[str] = []
    with watching(first, second) as url:
        page = open_page(browser, url, problems)
        wait_for(page, "() => document.querySelectorAll('.run').length === 2")
        assert page.locator("h1").inner_text() == "Comparing 2 runs"
        Training(second, recipe, epochs=2, lr=0.0005).join()
        wait_for(page, "() => document.body.dataset.finished === '2'")
        per_epoch = recipe["points_per_epoch"]
        # One train-loss and one held-out-loss series per run, one accuracy series per run.
        assert plotted(page, "loss") == [3 * per_epoch, 3, 2 * per_epoch, 2]
        assert plotted(page, "accuracy") == [3, 2]
        legend = page.locator("#loss-chart .u-legend").inner_text()
        assert "tutorial: train loss" in legend and "tutorial-lr-0.0005: held-out loss" in legend
        accuracies = page.locator(".run .test-acc dd").all_inner_texts()
        assert accuracies == [final_accuracy(first), final_accuracy(second)]
        save_screenshot(page, tmp_path, "-compare")
        page.close()
    assert problems == []
