"""`mnist-nn export`: ONNX and TorchScript files that agree with PyTorch, with their metadata."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from mnist_nn.cli import main
from mnist_nn.data import load_dataset
from mnist_nn.export import onnx_session
from mnist_nn.predict import Predictor

pytest.importorskip("onnxruntime", reason="the export extra is not installed")


def export(capsys, checkpoint, *extra) -> dict:
    code = main(["export", str(checkpoint), *map(str, extra), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def load_torchscript(path):
    extra = {"metadata.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        module = torch.jit.load(str(path), _extra_files=extra)
    return module, json.loads(extra["metadata.json"])


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_onnx_has_dynamic_batch_dtype_and_metadata(random_checkpoint, tmp_path, capsys, dtype):
    out = tmp_path / "m.onnx"
    report = export(capsys, random_checkpoint, "--format", "onnx", "--out", out, "--input-dtype", dtype)
    assert report["path"] == str(out) and report["max_abs_diff"] <= 1e-4
    session = onnx_session(out)
    (given,) = session.get_inputs()
    assert given.name == "pixels" and given.type == f"tensor({'float' if dtype == 'float32' else 'uint8'})"
    assert given.shape[1:] == [28, 28] and not isinstance(given.shape[0], int)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["labels"]) == [str(d) for d in range(10)] and meta["test_accuracy"] == "0.1"
    predictor = Predictor.from_checkpoint(random_checkpoint)
    for batch in (1, 33):
        pixels = torch.randint(0, 256, (batch, 28, 28), dtype=torch.uint8 if dtype == "uint8" else torch.float32)
        logits, probabilities = session.run(None, {"pixels": pixels.numpy()})
        with torch.inference_mode():
            expected = predictor.pixel_model(pixels)
        assert logits.shape == (batch, 10)
        assert (torch.from_numpy(logits) - expected).abs().max() <= 1e-4
        assert (torch.from_numpy(probabilities) - expected.softmax(1)).abs().max() <= 1e-4


def test_torchscript_default_path_beside_the_checkpoint(random_checkpoint, capsys):
    report = export(capsys, random_checkpoint, "--format", "torchscript")
    path = random_checkpoint.with_suffix(".torchscript.pt")
    assert report["path"] == str(path) and path.is_file()
    module, meta = load_torchscript(path)
    assert meta["model"] == "tutorial-mlp" and json.loads(meta["labels"])[7] == "7"
    pixels = torch.rand(5, 28, 28) * 255
    with torch.inference_mode():
        logits, _ = module(pixels)
        assert (logits - Predictor.from_checkpoint(random_checkpoint).pixel_model(pixels)).abs().max() <= 1e-4


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--format", "onnx", "--out", "{tmp}/no/such/dir/m.onnx"], "output folder"),
        (["--format", "onnx", "--out", "{tmp}"], "is a folder"),
    ],
)
def test_export_errors_are_one_line_and_write_nothing(random_checkpoint, tmp_path, capsys, argv, fragment):
    before = set(tmp_path.iterdir())
    code = main(["export", str(random_checkpoint), *(a.format(tmp=tmp_path) for a in argv)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err
    assert set(tmp_path.iterdir()) == before


def test_export_of_a_missing_checkpoint(tmp_path, capsys):
    code = main(["export", str(tmp_path / "nope.pt"), "--format", "onnx"])
    assert code == 2 and "not found" in capsys.readouterr().err


@pytest.mark.realdata
def test_parity_on_1000_test_images(trained_checkpoint, mnist_dir, tmp_path, capsys):
    images = load_dataset("mnist", mnist_dir, allow_download=False).test_images[:1000]
    predictor = Predictor.from_checkpoint(trained_checkpoint)
    with torch.inference_mode():
        expected = predictor.pixel_model(images)
    export(capsys, trained_checkpoint, "--format", "onnx", "--out", tmp_path / "f.onnx")
    export(capsys, trained_checkpoint, "--format", "onnx", "--out", tmp_path / "u.onnx", "--input-dtype", "uint8")
    export(capsys, trained_checkpoint, "--format", "torchscript", "--out", tmp_path / "m.pt")
    float_logits = onnx_session(tmp_path / "f.onnx").run(["logits"], {"pixels": images.float().numpy()})[0]
    uint8_logits = onnx_session(tmp_path / "u.onnx").run(["logits"], {"pixels": images.numpy()})[0]
    module, _ = load_torchscript(tmp_path / "m.pt")
    with torch.inference_mode():
        script_logits = module(images)[0]
    differences = {
        "onnx float32": float((torch.from_numpy(float_logits) - expected).abs().max()),
        "onnx uint8": float((torch.from_numpy(uint8_logits) - expected).abs().max()),
        "torchscript": float((script_logits - expected).abs().max()),
    }
    print("max abs logit difference from PyTorch on 1,000 test images:", differences)
    assert all(d <= 1e-4 for d in differences.values()), differences
    assert (torch.from_numpy(float_logits).argmax(1) == expected.argmax(1)).all()
