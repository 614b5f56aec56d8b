"""Regenerate the documentation's pictures and its sample training output from one real run.

    python scripts/make_doc_images.py                 # train the tutorial recipe, refresh docs/images/ and the pages
    MNIST_NN_MAX_EPOCHS=3 python scripts/make_doc_images.py   # a shorter run (the output says how many epochs)
    python scripts/make_doc_images.py --pages-only    # only re-render the pages' sample output from docs/images/
    python scripts/make_doc_images.py --check         # exit 1 if a page's sample output is out of date

It runs the same commands a reader runs, in a scratch folder:

    mnist-nn train --recipe tutorial --out runs/tutorial
    mnist-nn evaluate runs/tutorial/model.pt

and copies the run's loss.png, accuracy.png and predictions.png and the evaluation's confusion.png and
mistakes.png into docs/images/. It also writes, from the MNIST test set, docs/images/digit.png (one digit,
dark ink on white, as a reader would draw it) and docs/images/number.png (three digits side by side), the
images the READMEs' and the site's `mnist-nn predict` examples read. When the web app exists (`mnist_nn.apps.serve`) and
playwright with a Chromium is installed, docs/images/web-app.png is a screenshot of its page; otherwise
that picture is skipped with a message.

The full terminal output of the run is kept in docs/images/train-output.txt and its summary in
docs/images/run-summary.json; the site's pages show an excerpt of it between the
`<!-- train-output:start -->` and `<!-- train-output:end -->` markers (docs/index.md and docs/index.zh.md
today; any page under docs/ may), so no number there is typed by hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
DOCS = ROOT / "docs"
TRANSCRIPT = IMAGES / "train-output.txt"
SUMMARY = IMAGES / "run-summary.json"
TRAIN_COMMAND = ["train", "--recipe", "tutorial", "--out", "runs/tutorial"]
CHROMIUM = Path("/usr/bin/chromium")
# Test-set indices of the sample images: a 7, and 2-1-0 read as the number 210.
DIGIT_INDEX = 0
NUMBER_INDICES = (1, 2, 3)


def mnist_nn_command() -> list[str]:
    """The installed console script beside this Python, else ``python -m mnist_nn``."""
    script = Path(sys.executable).parent / "mnist-nn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mnist_nn"]


def default_data_dir() -> str | None:
    if os.environ.get("MNIST_NN_DATA"):
        return os.environ["MNIST_NN_DATA"]
    shared = ROOT.parent / "shared" / "datasets" / "mnist"
    return str(shared) if shared.is_dir() else None


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(mnist_nn_command() + args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"mnist-nn {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


# --------------------------------------------------------------------------- the pages' excerpt


def excerpt(transcript: str, summary: dict) -> list[str]:
    """The lines a reader sees first and last: header, two loss lines, first and last epoch, the result."""
    lines = [line.rstrip() for line in transcript.splitlines() if line.strip()]
    epochs = [line for line in lines if line.startswith("epoch ")]
    losses = [line for line in lines if line.lstrip().startswith("loss:")]
    header = [line for line in lines if line.startswith("training ")]
    result = [line for line in lines if line.startswith("test accuracy")]
    if not (epochs and losses and header and result):
        raise ValueError("the transcript lacks the header, loss, epoch or result lines of a training run")
    shown = ["$ mnist-nn " + " ".join(TRAIN_COMMAND), header[0], *losses[:2], "  ...", epochs[0]]
    if len(epochs) > 1:
        shown += ["...", epochs[-1]]
    return [*shown, result[-1]]


def table_run(chinese: bool) -> str:
    """The results table's tutorial figures (benchmarks/results/tutorial.json) and their host, for the note."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import host_label

    bench = json.loads((ROOT / "benchmarks" / "results" / "tutorial.json").read_text(encoding="utf-8"))
    ours = bench["ours"]
    accuracy, seconds = 100 * ours["test_accuracy"]["median"], ours["train_seconds"]["median"]
    cores = bench["host"].get("cores")
    where = host_label(bench["host"], chinese)
    if chinese:
        return f"{accuracy:.2f}%、{seconds:.1f} s：那是另一台主机（{where}，{cores} 个核心）上 {bench['repeats']} 次运行的中位数"  # noqa: E501
    runs = bench["repeats"]
    return f"{accuracy:.2f}% in {seconds:.1f} s: the median of {runs} runs on {cores} cores of another host, an {where}"


def train_output_block(chinese: bool) -> str:
    """The note, first (why its figures differ from the results table's), then the excerpt of the run."""
    transcript = TRANSCRIPT.read_text(encoding="utf-8")
    summary = json.loads(SUMMARY.read_text(encoding="utf-8"))
    epochs, threads = summary["epochs"], summary["threads"]
    if chinese:
        note = (
            f"下面是一次真实运行的输出：{epochs} 轮，{threads} 个 CPU 线程，由 `scripts/make_doc_images.py` 生成"
            f"（完整输出见 `docs/images/train-output.txt`）。[结果](results.md)里同一配方是 {table_run(True)}。"
            "用时取决于 CPU 和线程数；准确率也会差零点几个百分点："
            "同一个随机种子，换了线程数或 CPU，浮点数的求和顺序就不同。"
        )
    else:
        note = (
            f"Below, the output of one real run: {epochs} epochs, {threads} CPU thread{'s' if threads != 1 else ''}, "
            "made by `scripts/make_doc_images.py` (the whole output is in `docs/images/train-output.txt`). "
            f"[Results](results.md) gives the same recipe {table_run(False)}. The time depends on the CPU and the "
            "threads, and the accuracy by a few tenths of a percent too: the same seed on another thread count or "
            "CPU adds its floats in another order."
        )
    return note + "\n\n```text\n" + "\n".join(excerpt(transcript, summary)) + "\n```"


def render(text: str, chinese: bool) -> str:
    # Between the markers: the block, or nothing yet in a new page (the markers on consecutive lines).
    pattern = re.compile(r"(<!-- train-output:start -->\n)(?:.*?\n)?(<!-- train-output:end -->)", re.S)
    block = train_output_block(chinese)
    return pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text)


def pages() -> list[Path]:
    """The site's pages, both languages: ``page.md`` in English, ``page.zh.md`` its Chinese twin."""
    return sorted(DOCS.rglob("*.md"))


def render_pages(check: bool) -> list[Path]:
    stale = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        new = render(text, chinese=page.name.endswith(".zh.md"))
        if new != text:
            stale.append(page)
            if not check:
                page.write_text(new, encoding="utf-8")
    return stale


# --------------------------------------------------------------------------- pictures


def write_sample_inputs(data_dir: str | None) -> None:
    """Test digits as a reader would draw them: dark ink on white, larger than 28x28."""
    import numpy as np
    from PIL import Image

    from mnist_nn.data.datasets import load_dataset

    images = load_dataset("mnist", data_dir, allow_download=False).test_images

    def paper(index: int) -> np.ndarray:
        return 255 - np.kron(images[index].numpy(), np.ones((4, 4), dtype=np.uint8))

    Image.fromarray(np.pad(paper(DIGIT_INDEX), 16, constant_values=255)).save(IMAGES / "digit.png")
    row = np.concatenate([np.pad(paper(i), 16, constant_values=255) for i in NUMBER_INDICES], axis=1)
    Image.fromarray(row).save(IMAGES / "number.png")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def web_app_screenshot(checkpoint: Path, cwd: Path, env: dict[str, str]) -> str:
    """docs/images/web-app.png, or why not."""
    if importlib.util.find_spec("mnist_nn.apps.serve") is None:
        return "skipped web-app.png: the web app (mnist_nn.apps.serve) is not installed in this version"
    if importlib.util.find_spec("playwright") is None or not CHROMIUM.exists():
        return f"skipped web-app.png: needs the playwright package and {CHROMIUM}"
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = subprocess.Popen(
        [*mnist_nn_command(), "serve", str(checkpoint), "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "api/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    return f"skipped web-app.png: the server did not start ({server.stderr.read().decode()[-300:]})"
                time.sleep(0.5)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.goto(url)
            page.wait_for_load_state("networkidle")
            # Show the page at work: it reads the sample digit, as if a reader had uploaded it.
            with page.expect_response(lambda response: "/api/predict" in response.url):
                page.set_input_files("#file", str(IMAGES / "digit.png"))
            page.wait_for_timeout(500)
            page.screenshot(path=str(IMAGES / "web-app.png"))
            browser.close()
        return "wrote web-app.png"
    finally:
        server.terminate()
        server.wait(timeout=30)


def make_images(data_dir: str | None) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if data_dir:
        env["MNIST_NN_DATA"] = str(Path(data_dir).resolve())
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        started = time.perf_counter()
        transcript = run(TRAIN_COMMAND, cwd, env)
        run_dir = cwd / "runs" / "tutorial"
        run(["evaluate", str(run_dir / "model.pt")], cwd, env)
        for source in ("loss.png", "accuracy.png", "predictions.png"):
            shutil.copyfile(run_dir / source, IMAGES / source)
        for source in ("confusion.png", "mistakes.png"):
            shutil.copyfile(run_dir / "evaluation" / source, IMAGES / source)
        TRANSCRIPT.write_text(transcript, encoding="utf-8")
        shutil.copyfile(run_dir / "summary.json", SUMMARY)
        write_sample_inputs(env.get("MNIST_NN_DATA"))
        print(web_app_screenshot(run_dir / "model.pt", cwd, env))
        summary = json.loads(SUMMARY.read_text())
        print(
            f"trained {summary['epochs']} epochs with {summary['threads']} thread(s) in "
            f"{time.perf_counter() - started:.0f} s: test accuracy {100 * summary['test_accuracy']:.2f}%"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=default_data_dir(), help="folder with the MNIST IDX files")
    parser.add_argument(
        "--check", action="store_true", help="only check that the pages show the current docs/images/ output"
    )
    parser.add_argument(
        "--pages-only",
        "--readmes-only",
        dest="pages_only",
        action="store_true",
        help="only re-render the pages' sample output, without training",
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = render_pages(check=True)
        if stale:
            print("out of date: " + ", ".join(str(p) for p in stale) + " (run scripts/make_doc_images.py)")
            return 1
        print("up to date")
        return 0
    if not args.pages_only:
        make_images(args.data_dir)
    print(f"rendered {len(render_pages(check=False))} page(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
