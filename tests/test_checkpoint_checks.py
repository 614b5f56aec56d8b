"""Checkpoints are checked before they are built: each bad field is one line naming it, exit 2.

Each bad checkpoint is a good tiny one with one thing changed, as a hostile or damaged file would be.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, assert_one_line_error, free_port, run_main
from mnist_nn.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from mnist_nn.models.networks import build_model

KWARGS = {"hidden": [8], "dropout": 0.0, "batch_norm": True}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A tiny MLP checkpoint (784-8-10 with batch norm) that loads and predicts."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("good") / "model.pt"
    meta = CheckpointMeta("mlp", dict(KWARGS), "mnist", 0.1307, 0.3081, recipe={"seed": 0})
    save_checkpoint(path, build_model("mlp", **KWARGS), meta, metrics={"test_accuracy": 0.1})
    return path


@pytest.fixture(scope="module")
def digit(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("digit") / "one.png"
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[4:24, 13:16] = 255
    Image.fromarray(pixels).save(path)
    return path


def edited(good: Path, folder: Path, change) -> Path:
    """A copy of the good checkpoint with ``change(payload)`` applied to its contents."""
    payload = torch.load(good, weights_only=True)
    change(payload)
    path = folder / "bad.pt"
    torch.save(payload, path)
    return path


def set_field(*keys, value):
    def change(payload):
        target = payload
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def poison_weight(value: float):
    def change(payload):
        payload["state_dict"]["1.weight"][0, 0] = value

    return change


BAD = {
    "huge hidden": (set_field("model", "kwargs", "hidden", value=[10**6, 10**6]), "model.kwargs"),
    "negative hidden": (set_field("model", "kwargs", "hidden", value=[-5]), "model.kwargs.hidden[0]"),
    "endless hidden": (set_field("model", "kwargs", "hidden", value=[8] * 10**6), "model.kwargs.hidden"),
    "wider than its weights": (set_field("model", "kwargs", "hidden", value=[64]), "model.kwargs"),
    "std 0": (set_field("normalization", "std", value=0.0), "normalization.std"),
    "negative std": (set_field("normalization", "std", value=-0.3), "normalization.std"),
    "NaN std": (set_field("normalization", "std", value=math.nan), "normalization.std"),
    "infinite mean": (set_field("normalization", "mean", value=math.inf), "normalization.mean"),
    "NaN weight": (poison_weight(math.nan), "state_dict['1.weight']"),
    "infinite weight": (poison_weight(-math.inf), "state_dict['1.weight']"),
    "temperature 0": (set_field("calibration", value={"temperature": 0.0}), "calibration.temperature"),
    "NaN temperature": (set_field("calibration", value={"temperature": math.nan}), "calibration.temperature"),
    "text temperature": (set_field("calibration", value={"temperature": "hot"}), "calibration.temperature"),
}


def test_the_good_checkpoint_loads(good, digit, capsys):
    code, _out, err = run_main(capsys, "predict", good, digit, "--no-preprocess")
    assert code == 0, err
    assert load_checkpoint(good).temperature == 1.0


@pytest.mark.parametrize("case", list(BAD))
def test_predict_and_evaluate_refuse_a_bad_checkpoint_naming_the_field(case, good, digit, tmp_path, capsys):
    change, field = BAD[case]
    bad = edited(good, tmp_path, change)
    code, out, err = run_main(capsys, "predict", bad, digit, "--no-preprocess")
    assert_one_line_error(code, err, field)
    assert out == ""
    # evaluate reads the checkpoint before any data: no MNIST needed to be refused
    code, out, err = run_main(capsys, "evaluate", bad, "--out", tmp_path / "evaluation")
    assert_one_line_error(code, err, field)
    assert not (tmp_path / "evaluation").exists()


def test_python_callers_get_the_same_one_line_error(good, tmp_path):
    from mnist_nn.core.errors import UserError

    bad = edited(good, tmp_path, set_field("normalization", "std", value=0.0))
    with pytest.raises(UserError, match=r"normalization\.std is 0\.0; it must be above 0"):
        load_checkpoint(bad)


def measured_cli(*argv: str) -> tuple[int, str, int]:
    """Run `mnist-nn ARGV` in a fresh interpreter: exit code, stderr, and its peak resident memory in kB."""
    script = (
        "import resource, sys\n"
        "from mnist_nn.cli import main\n"
        f"code = main({list(argv)!r})\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    return done.returncode, done.stderr, int(done.stdout.strip().splitlines()[-1])


def test_a_huge_model_is_refused_before_any_memory_is_taken(good, digit, tmp_path):
    """hidden [10^6, 10^6] would be 10^12 parameters: refused from its metadata, within the memory of a
    good checkpoint's prediction plus 200 MB (it once took 3.6 GB before a traceback)."""
    bad = edited(good, tmp_path, set_field("model", "kwargs", "hidden", value=[10**6, 10**6]))
    code, err, bad_kb = measured_cli("predict", str(bad), str(digit), "--no-preprocess")
    assert_one_line_error(code, err, "model.kwargs ask for 1,000,")
    assert "over the 100,000,000" in err
    code, err, good_kb = measured_cli("predict", str(good), str(digit), "--no-preprocess")
    assert code == 0, err
    assert bad_kb < good_kb + 200 * 1024


def test_serve_refuses_a_bad_checkpoint_before_listening(good, tmp_path):
    pytest.importorskip("fastapi")
    bad = edited(good, tmp_path, poison_weight(math.nan))
    done = subprocess.run(
        [sys.executable, "-m", "mnist_nn", "serve", str(bad), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(done.returncode, done.stderr, "state_dict['1.weight'] holds NaN or infinite values")


def test_the_server_never_answers_a_null_probability(good):
    """A model with NaN weights built around the loader's checks: the server answers an error, never a
    label with a null confidence."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mnist_nn.apps.serve.app import create_app
    from mnist_nn.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(good)
    with torch.no_grad():
        predictor.pixel_model.model.network[1].weight.fill_(math.nan)
    pixels = np.zeros((28, 28), dtype=int)
    pixels[4:24, 13:16] = 255
    with TestClient(create_app(predictor), raise_server_exceptions=False) as client:
        answer = client.post("/api/predict", params={"preprocess": "false"}, json={"pixels": pixels.tolist()})
    assert answer.status_code >= 500
    body = answer.json()
    assert "confidence" not in body and "label" not in body
    assert isinstance(body["detail"], str)


def test_an_exported_torchscript_file_is_named_for_what_it_is(good, digit, tmp_path, capsys):
    """`predict` and `evaluate` given the file `export` wrote: one line saying to give the model.pt instead."""
    exported = tmp_path / "model.torchscript.pt"
    code, _out, err = run_main(capsys, "export", good, "--format", "torchscript", "--out", exported)
    assert code == 0, err
    code, _out, err = run_main(capsys, "predict", exported, digit)
    assert_one_line_error(code, err, "a TorchScript model (as `mnist-nn export` writes), not an mnist-nn checkpoint")
    assert "give the model.pt it was exported from" in err
    code, _out, err = run_main(capsys, "evaluate", exported)
    assert_one_line_error(code, err, "a TorchScript model")


def test_an_exported_onnx_file_is_named_for_what_it_is(good, digit, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    exported = tmp_path / "model.onnx"
    code, _out, err = run_main(capsys, "export", good, "--format", "onnx", "--out", exported)
    assert code == 0, err
    code, _out, err = run_main(capsys, "evaluate", exported)
    assert_one_line_error(code, err, "an ONNX model (as `mnist-nn export` writes)")
