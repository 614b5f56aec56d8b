"""`mnist-nn export`: ONNX and TorchScript files that agree with PyTorch, with their metadata."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import mnist_nn.inference.export as export_module
from mnist_nn.cli import main
from mnist_nn.core.errors import UserError
from mnist_nn.data.datasets import load_dataset
from mnist_nn.inference.export import export_checkpoint, onnx_session
from mnist_nn.inference.predictor import Predictor
from mnist_nn.models.checkpoint import CheckpointMeta, save_checkpoint
from mnist_nn.models.networks import build_model

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


@pytest.fixture(scope="module")
def large_logits_checkpoint(tmp_path_factory):
    """A tutorial MLP whose logits on noise reach hundreds, as a fully trained one's do (the 25-epoch model: ~435).

    Each of its five linear layers' weights is multiplied by 5.5: float32 rounding then differs
    between runtimes by ~1.7e-4 in absolute terms, which an absolute 1e-4 check refused.
    """
    torch.manual_seed(0)
    model = build_model("tutorial-mlp")
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(5.5)
    path = tmp_path_factory.mktemp("large") / "model.pt"
    save_checkpoint(path, model, CheckpointMeta("tutorial-mlp", {}, "mnist", 0.1307, 0.3081, recipe={}))
    return path


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_a_model_with_trained_size_logits_exports(large_logits_checkpoint, tmp_path, capsys, fmt, dtype):
    out = tmp_path / f"m.{fmt}"
    report = export(capsys, large_logits_checkpoint, "--format", fmt, "--out", out, "--input-dtype", dtype)
    print(f"{fmt} {dtype}: logits up to {report['max_abs_logit']:.0f}, max abs diff {report['max_abs_diff']:.2e}")
    assert out.is_file() and report["max_abs_logit"] > 300
    assert report["max_rel_diff"] <= 1e-5  # rounding: far inside the 1e-4 allowance


def _perturbed_onnx_bytes(monkeypatch, shift: float) -> None:
    """Make the exporter write a model whose last bias is moved by ``shift`` (a real mismatch), not the one checked."""
    original = export_module._onnx_bytes

    def perturbed(module, example, metadata):
        import copy

        changed = copy.deepcopy(module)
        last = [m for m in changed.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.bias[3] += shift
        return original(changed, example, metadata)

    monkeypatch.setattr(export_module, "_onnx_bytes", perturbed)


@pytest.mark.parametrize("shift", [1.0, 0.2])
def test_a_perturbed_export_is_refused_and_not_written(large_logits_checkpoint, tmp_path, monkeypatch, shift):
    # 0.2 on logits up to ~400 is 5e-4 of their scale: small, but 1,000 times what rounding does.
    _perturbed_onnx_bytes(monkeypatch, shift)
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match=r"exported onnx model differs from PyTorch: logits by .* of their scale"):
        export_checkpoint(large_logits_checkpoint, fmt="onnx", out=out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_wrong_probabilities_from_the_runtime_are_refused(random_checkpoint, tmp_path, monkeypatch):
    original = export_module.run_exported

    def uniform_probabilities(data, fmt, pixels):
        logits, probabilities = original(data, fmt, pixels)
        return logits, torch.full_like(torch.as_tensor(probabilities), 0.1)

    monkeypatch.setattr(export_module, "run_exported", uniform_probabilities)
    with pytest.raises(UserError, match="differs from PyTorch: probabilities by"):
        export_checkpoint(random_checkpoint, fmt="torchscript", out=tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_compare_scales_with_the_logits():
    logits = torch.tensor([[400.0, -20.0, 3.0], [0.5, 0.1, -0.2]])
    probabilities = logits.softmax(1)
    rounding = logits + torch.tensor([[2e-4, -1e-4, 0.0], [1e-6, 0.0, 0.0]])
    assert export_module.compare(logits, probabilities, rounding, rounding.softmax(1))["problem"] == ""
    small_row_off = logits + torch.tensor([[0.0, 0.0, 0.0], [2e-3, 0.0, 0.0]])  # 2e-3 on a row of scale 1
    found = export_module.compare(logits, probabilities, small_row_off, small_row_off.softmax(1))
    assert found["problem"].startswith("logits by 2.00e-03 of their scale")


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
    scale = float(expected.abs().max().clamp(min=1.0))
    assert all(d <= 1e-4 * scale for d in differences.values()), differences
    assert (torch.from_numpy(float_logits).argmax(1) == expected.argmax(1)).all()


def test_the_parity_benchmark_exports_each_checkpoint_every_way(large_logits_checkpoint, tmp_path):
    """benchmarks/inference.py --parity: the smoke run of the check that every recipe's trained model exports."""
    import subprocess
    import sys

    from conftest import REPO

    command = [sys.executable, str(REPO / "benchmarks" / "inference.py"), "--parity", "--skip-speed"]
    command += ["--checkpoints", str(large_logits_checkpoint), "--results", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads((tmp_path / "export-parity.json").read_text())
    combos = {(row["format"], row["input_dtype"]) for row in data["rows"] if row["exported"]}
    assert data["refused"] == 0 and len(combos) == 4
    assert not (tmp_path / "inference.json").exists()  # --skip-speed leaves the speed results alone
