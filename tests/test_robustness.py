"""`mnist-nn robustness`: a checkpoint scored on MNIST-C's corruptions of the test set, cached, with a grid."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import conftest
from conftest import run_main, toy_spec, write_idx_dataset
from mnist_nn.data.corruptions import NAMES

TOY = "toy-robustness"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> tuple[Path, Path]:
    """A toy dataset of its own name (600 training and 200 test bar images) and a checkpoint trained on it."""
    import mnist_nn
    from mnist_nn.data.datasets import DATASETS, DatasetSpec, register_dataset

    root = tmp_path_factory.mktemp("robustness")
    folder = write_idx_dataset(root / "data", train=600, test=200)
    register_dataset(DatasetSpec(**toy_spec(TOY)))
    run = mnist_nn.train("tutorial", dataset=TOY, data_dir=folder, out=root / "run", epochs=2, quiet=True)
    yield folder, run.run_dir / "model.pt"
    DATASETS.pop(TOY, None)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MNIST_NN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MNIST_NN_DATA", raising=False)
    return tmp_path / "cache"


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    """The shared check, and the message is the top-level command's (not argparse's usage line)."""
    conftest.assert_one_line_error(code, err, fragment)
    assert err.strip().startswith("mnist-nn: error: "), err


def test_table_grid_json_and_the_cache_reused(toy_run, cache, tmp_path, capsys):
    folder, checkpoint = toy_run
    grid = tmp_path / "grid.png"
    code, out, err = run_main(capsys, "robustness", str(checkpoint), "--data-dir", str(folder), "--out", str(grid))
    assert code == 0, err
    lines = out.splitlines()
    assert (
        lines[0] == f"tutorial-mlp (recipe tutorial) on MNIST-C: the {TOY} test set (200 images) under 15 corruptions"
    )
    rows = [line.split() for line in lines if line.startswith("  ")]
    assert [row[0] for row in rows] == ["clean", *NAMES, "mean"]
    assert all(row[1].endswith("%") for row in rows)
    assert "built 15 corrupted sets, cached in" in out and f"grid: {grid}" in out
    # Not a terminal (as in a log or CI): a progress line per corruption, on stderr, as each is scored.
    progress = err.splitlines()
    assert [line.split()[:2] for line in progress] == [[f"[{i}/15]", f"{name}:"] for i, name in enumerate(NAMES, 1)]
    assert all(line.endswith(" s)") and "(built, " in line for line in progress)
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 400
    files = sorted(cache.glob("mnist-c/*/*.npy"))
    assert sorted(path.stem for path in files) == sorted(NAMES)
    stamps = {path: path.stat().st_mtime_ns for path in files}

    # Again, as JSON, with the grid at its default place: the sets come from the cache, untouched.
    code, out, err = run_main(capsys, "robustness", str(checkpoint), "--data-dir", str(folder), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert len(err.splitlines()) == 15 and "(from the cache, " in err
    assert report["built"] == [] and report["cache"] == str(files[0].parent)
    assert {path: path.stat().st_mtime_ns for path in files} == stamps
    assert list(report["corruptions"]) == list(NAMES)
    assert report["mean_accuracy"] == pytest.approx(statistics.fmean(report["corruptions"].values()), abs=1e-12)
    assert report["checkpoint"] == str(checkpoint) and report["model"] == "tutorial-mlp"
    assert report["recipe"] == "tutorial" and report["test_size"] == 200
    assert report["figure"] == str(checkpoint.parent / "robustness.png") and Path(report["figure"]).is_file()
    assert all(0 <= value <= 1 for value in report["corruptions"].values())
    mean_row = next(row for row in rows if row[0] == "mean")
    assert mean_row[1] == f"{100 * report['mean_accuracy']:.2f}%"

    # The clean accuracy is `mnist-nn evaluate`'s: the checkpoint's own normalization, the same images.
    code, out, err = run_main(capsys, "evaluate", str(checkpoint), "--data-dir", str(folder), "--json")
    assert code == 0, err
    assert report["clean_accuracy"] == json.loads(out)["test_accuracy"] > 0.9


def test_a_damaged_cached_set_is_built_again(tmp_path):
    from mnist_nn.lab.robustness import corrupted_sets

    images = write_idx_and_read(tmp_path)
    folder = tmp_path / "sets"
    first = {name: (array, built) for name, array, built, _ in corrupted_sets(images, folder)}
    assert all(built for _, built in first.values())
    (folder / "fog.npy").write_bytes(b"\x93NUMPY truncated")
    (folder / "zigzag.npy").unlink()
    again = {name: (array, built) for name, array, built, _ in corrupted_sets(images, folder)}
    assert [name for name, (_, built) in again.items() if built] == ["fog", "zigzag"]
    assert all(np.array_equal(first[name][0], again[name][0]) for name in NAMES)


def write_idx_and_read(tmp_path: Path) -> np.ndarray:
    from mnist_nn.data.datasets import read_split

    folder = write_idx_dataset(tmp_path / "toy", train=10, test=12)
    return read_split(folder, "test")[0].numpy()


def test_the_cache_is_keyed_by_test_set_version_libraries_and_seed(monkeypatch):
    from mnist_nn.lab import robustness

    version = robustness.CORRUPTIONS_VERSION
    folder = robustness.cache_folder("mnist", "a" * 32)
    assert folder.name.startswith(f"mnist-{'a' * 32}-v{robustness.CORRUPTIONS_VERSION}-np{np.__version__}-sp")
    assert folder.name.endswith("-seed0")
    assert robustness.cache_folder("mnist", "b" * 32) != folder
    assert robustness.cache_folder("mnist", "a" * 32, seed=1) != folder
    monkeypatch.setattr(robustness, "CORRUPTIONS_VERSION", version + 1)
    assert robustness.cache_folder("mnist", "a" * 32) != folder
    monkeypatch.setattr(robustness, "CORRUPTIONS_VERSION", version)
    assert robustness.cache_folder("mnist", "a" * 32) == folder
    monkeypatch.setattr(np, "__version__", "0.0.1")  # another numpy may draw other random numbers
    assert robustness.cache_folder("mnist", "a" * 32) != folder


def test_bad_checkpoints_are_one_line_errors_and_write_nothing(toy_run, cache, tmp_path, capsys):
    folder, _ = toy_run
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    grid = tmp_path / "out" / "grid.png"
    for checkpoint, fragment in ((garbage, str(garbage)), (tmp_path / "missing.pt", "missing.pt")):
        code, out, err = run_main(capsys, "robustness", str(checkpoint), "--data-dir", str(folder), "--out", str(grid))
        assert_one_line_error(code, err, fragment)
        assert out == "" and not grid.parent.exists() and not cache.exists()


def test_bad_data_out_and_batch_size_are_one_line_errors(toy_run, cache, tmp_path, capsys):
    folder, checkpoint = toy_run
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    cases = [
        (["--data-dir", str(tmp_path / "nowhere")], f"data folder {tmp_path / 'nowhere'} (from --data-dir) does not"),
        (["--data-dir", str(folder), "--out", str(blocker / "grid.png")], f"cannot write to output folder {blocker}"),
        (["--data-dir", str(folder), "--out", str(tmp_path / "grid.jpg")], "--out names the PNG to write"),
        (["--data-dir", str(folder), "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    ]
    for extra, fragment in cases:
        code, out, err = run_main(capsys, "robustness", str(checkpoint), "--out", str(tmp_path / "g.png"), *extra)
        assert_one_line_error(code, err, fragment)
        assert out == "" and not cache.exists()
    assert not (tmp_path / "g.png").exists()


@pytest.mark.realdata
def test_the_real_test_set_under_each_corruption(mnist_dir, random_checkpoint, cache):
    """The full size: 10,000 real test digits per corruption, cached as 15 .npy files of 7.8 MB."""
    from mnist_nn.lab.robustness import score_checkpoint

    result = score_checkpoint(random_checkpoint, data_dir=mnist_dir, device="cpu")
    assert result.test_size == 10000 and result.built == list(NAMES)
    assert list(result.corruptions) == list(NAMES) and 0 <= result.mean_accuracy <= 1
    sizes = {path.stat().st_size for path in Path(result.cache).glob("*.npy")}
    assert sizes == {10000 * 28 * 28 + 128}
    assert score_checkpoint(random_checkpoint, data_dir=mnist_dir, device="cpu").built == []
