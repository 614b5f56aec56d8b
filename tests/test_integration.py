"""Brief training on the real MNIST through the Python API and the CLI."""

from __future__ import annotations

import json

import pytest

import mnist_nn
from mnist_nn.cli import main

pytestmark = pytest.mark.realdata


def test_one_tutorial_epoch_reaches_90_percent_and_evaluate_agrees(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", "--recipe", "tutorial", "--epochs", "1", "--data-dir", str(mnist_dir), "--out", str(out)]) == 0
    )
    stdout = capsys.readouterr().out
    assert "[batch   900/938]" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.90
    assert summary["parameters"] == 175_306
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["md5"]["train-images-idx3-ubyte"] == "6bbc9ace898e44ae57da46a324031adb"
    assert config["data"]["train_size"] == 60000 and config["data"]["val_size"] == 0

    assert main(["evaluate", str(out / "model.pt"), "--data-dir", str(mnist_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_accuracy"] == summary["test_accuracy"]
    assert report["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-4)
    assert report["test_size"] == 10000


def test_python_api_with_validation_split_is_reproducible(mnist_dir, tmp_path):
    runs = [
        mnist_nn.train(
            "tutorial", data_dir=mnist_dir, out=tmp_path / name, epochs=1, val_size=5000, shuffle=True, quiet=True
        )
        for name in ("a", "b")
    ]
    assert runs[0].history[0]["eval_split"] == "val"
    assert runs[0].summary["test_accuracy"] >= 0.90
    first, second = ((tmp_path / n / "metrics.jsonl").read_text().splitlines() for n in ("a", "b"))
    strip = [{k: v for k, v in json.loads(line).items() if "seconds" not in k} for line in first]
    assert strip == [{k: v for k, v in json.loads(line).items() if "seconds" not in k} for line in second]
    loaded = mnist_nn.load_checkpoint(tmp_path / "a" / "model.pt")
    assert loaded.model_name == "tutorial-mlp" and loaded.metrics["test_accuracy"] == runs[0].summary["test_accuracy"]
