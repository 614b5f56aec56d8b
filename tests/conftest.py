"""Shared fixtures: synthetic IDX datasets for fast tests, and the real MNIST files for integration tests."""

from __future__ import annotations

import gzip
import os
import socket
import struct
from pathlib import Path

import pytest
import torch

from mnist_nn.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"


def idx_bytes(array: torch.Tensor) -> bytes:
    """Encode a uint8 tensor as an IDX file (images [N, 28, 28] or labels [N])."""
    magic = 0x00000800 | array.dim()
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.to(torch.uint8).contiguous().numpy().tobytes()


def write_idx_dataset(folder: Path, train: int = 64, test: int = 32, gz: bool = True, seed: int = 0) -> Path:
    """Four IDX files of a learnable toy problem: class k is a bright bar at row 2k + 4."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = torch.randint(0, 10, (count,), generator=generator)
        images = torch.randint(0, 40, (count, 28, 28), generator=generator)
        for i, label in enumerate(labels.tolist()):
            images[i, 2 * label + 4, 4:24] = 250
        for name, tensor in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(tensor)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def toy_dir(tmp_path: Path) -> Path:
    return write_idx_dataset(tmp_path / "toy")


def toy_spec(name: str) -> dict:
    """The fields of a registered toy dataset (no MD5 pins): 600 training and 200 test bar images."""
    return {
        "name": name,
        "title": "toy bars",
        "classes": tuple(str(d) for d in range(10)),
        "mean": 0.2,
        "std": 0.3,
        "torchvision_class": "Toy",
        "train_size": 600,
        "test_size": 200,
    }


@pytest.fixture
def toy_dataset(tmp_path: Path):
    """A registered dataset named 'toy' (no MD5 pins) with its files in a flat folder."""
    from mnist_nn.data.datasets import DATASETS, DatasetSpec, register_dataset

    folder = write_idx_dataset(tmp_path / "toy", train=600, test=200)
    register_dataset(DatasetSpec(**toy_spec("toy")))
    yield folder
    DATASETS.pop("toy", None)


def real_mnist_dir() -> Path | None:
    # Absolute, because CI gives a relative $MNIST_NN_DATA and some tests run children in other folders.
    candidate = Path(os.environ.get("MNIST_NN_DATA") or SHARED_MNIST).resolve()
    if all((candidate / f"{n}.gz").exists() or (candidate / n).exists() for n in _NAMES):
        return candidate
    return None


_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def require_real_mnist() -> Path:
    """The real MNIST folder; without it a skip, or a failure when MNIST_NN_REQUIRE_DATA=1 (as in CI)."""
    found = real_mnist_dir()
    if found is None:
        message = "real MNIST not found: set MNIST_NN_DATA to the folder with the four IDX files"
        if os.environ.get("MNIST_NN_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def mnist_dir() -> Path:
    return require_real_mnist()


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """An untrained tutorial-MLP checkpoint for MNIST: no data or training needed."""
    from mnist_nn.models.checkpoint import CheckpointMeta, save_checkpoint
    from mnist_nn.models.networks import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("random") / "model.pt"
    meta = CheckpointMeta("tutorial-mlp", {"hidden": [128, 256, 128, 64]}, "mnist", 0.1307, 0.3081, recipe={})
    save_checkpoint(path, build_model("tutorial-mlp"), meta, metrics={"test_accuracy": 0.1})
    return path


def trained_if_possible(request: pytest.FixtureRequest, random_checkpoint: Path) -> tuple[Path, bool]:
    """(the briefly trained checkpoint, True) where real MNIST or $MNIST_NN_CHECKPOINT is at hand, else (an
    untrained one, False): the browser tests check the page's mechanics either way, its answers only when trained."""
    if os.environ.get("MNIST_NN_CHECKPOINT") or real_mnist_dir() is not None:
        return request.getfixturevalue("trained_checkpoint"), True
    return random_checkpoint, False


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A briefly trained checkpoint on the real MNIST ($MNIST_NN_CHECKPOINT: use that one instead)."""
    if os.environ.get("MNIST_NN_CHECKPOINT"):
        return Path(os.environ["MNIST_NN_CHECKPOINT"])
    found = require_real_mnist()
    import mnist_nn

    run = mnist_nn.train(
        "tutorial", data_dir=found, out=tmp_path_factory.mktemp("trained") / "run", epochs=2, quiet=True
    )
    return run.run_dir / "model.pt"


# --------------------------------------------------------------------------- helpers the test files import


def run_main(capsys, *argv) -> tuple[int, str, str]:
    """`mnist-nn ARGV...` in this process (arguments may be paths): its exit code, stdout and stderr."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    """A usage mistake: exit code 2, one line on stderr naming `fragment`, no traceback."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- the browser tests' Chromium

# Playwright drives Debian's Chromium and never downloads a browser of its own.
CHROMIUM = Path(os.environ.get("MNIST_NN_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_browser(condition: bool, message: str) -> None:
    """Skip without a browser, or fail when MNIST_NN_REQUIRE_BROWSER=1 (as in CI)."""
    if not condition:
        if os.environ.get("MNIST_NN_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, driven by Playwright, for one test module."""
    require_browser(CHROMIUM.exists(), f"no Chromium at {CHROMIUM}: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_browser(False, "Playwright is not installed: pip install playwright")
    pytest.importorskip("fastapi")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()
