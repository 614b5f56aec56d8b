"""Calibrated confidence: ECE and NLL, temperature scaling fitted by training and by `mnist-nn calibrate`,
and the temperature used by every consumer of a checkpoint without changing a label."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_line_error, run_main
from mnist_nn.models.calibration import (
    TemperatureScaled,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from mnist_nn.models.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from mnist_nn.models.networks import build_model

# ----------------------------------------------------------------------------- the measures


def test_ece_by_hand():
    """Four answers: two at 0.95 (one right), two at 0.55 (both right): bins 14 and 8 of 15.
    ECE = 2/4 * |0.5 - 0.95| + 2/4 * |1.0 - 0.55| = 0.45."""
    probabilities = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.45)
    bins = reliability_bins(probabilities, labels)
    assert len(bins) == 15 and sum(b.count for b in bins) == 4
    assert (bins[14].count, bins[14].accuracy, bins[14].confidence) == (2, 0.5, pytest.approx(0.95))
    assert (bins[8].count, bins[8].accuracy, bins[8].confidence) == (2, 1.0, pytest.approx(0.55))


def test_a_calibrated_model_has_a_small_ece_and_an_overconfident_one_a_large_one():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20000, 10, generator=generator)
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)  # drawn from the model itself
    assert expected_calibration_error(logits.softmax(1), labels) < 0.01
    assert expected_calibration_error((3 * logits).softmax(1), labels) > 0.05
    assert negative_log_likelihood(logits, labels) == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


@pytest.mark.parametrize("true_temperature", [0.4, 2.5])
def test_fit_temperature_recovers_the_temperature_and_lowers_nll_and_ece(true_temperature):
    """Labels drawn from softmax(z / T0): the logits z are off by T0, and the fit finds it."""
    generator = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(20000, 10, generator=generator, dtype=torch.float64)
    labels = torch.multinomial((logits / true_temperature).softmax(1), 1, generator=generator).squeeze(1)
    fit = fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(true_temperature, rel=0.05)
    assert fit.nll_after < fit.nll_before and fit.ece_after < 0.01 < fit.ece_before
    assert fit.images == 20000


def test_temperature_scaling_never_changes_a_label():
    network = build_model("tutorial-mlp")
    x = torch.randn(500, 1, 28, 28)
    with torch.no_grad():
        plain = network(x)
        for temperature in (0.3, 1.0, 4.0):
            scaled = TemperatureScaled(network, temperature)(x)
            assert torch.equal(scaled.argmax(1), plain.argmax(1))
            torch.testing.assert_close(scaled, plain / temperature)
        assert torch.equal(TemperatureScaled(network, 1.0)(x), plain)  # T = 1 is exact


# ----------------------------------------------------------------------------- checkpoints and commands


@pytest.fixture
def toy_checkpoint(tmp_path, toy_dataset) -> Path:
    """A briefly trained tutorial MLP on the toy dataset, trained with a 100-digit validation split."""
    import mnist_nn

    run = mnist_nn.train(
        "tutorial", dataset="toy", data_dir=toy_dataset, out=tmp_path / "run", epochs=2, val_size=100, quiet=True
    )
    return run.run_dir / "model.pt"


def test_training_with_a_validation_split_fits_and_saves_a_temperature(toy_checkpoint):
    loaded = load_checkpoint(toy_checkpoint)
    calibration = loaded.meta.calibration
    assert calibration["fitted_on"] == "validation" and calibration["images"] == 100
    assert math.isfinite(loaded.temperature) and loaded.temperature > 0 and loaded.temperature != 1.0
    assert calibration["nll_after"] <= calibration["nll_before"]
    summary = json.loads((toy_checkpoint.parent / "summary.json").read_text())
    assert summary["temperature"] == loaded.temperature
    assert isinstance(loaded.model, TemperatureScaled)
    assert float(loaded.model.temperature) == pytest.approx(loaded.temperature)


def test_training_without_a_validation_split_keeps_temperature_one(tmp_path, toy_dataset):
    import mnist_nn

    run = mnist_nn.train("tutorial", dataset="toy", data_dir=toy_dataset, out=tmp_path / "run", epochs=1, quiet=True)
    loaded = load_checkpoint(run.run_dir / "model.pt")
    assert loaded.temperature == 1.0 and loaded.meta.calibration == {}


def uncalibrated(path: Path, target: Path) -> Path:
    payload = torch.load(path, weights_only=True)
    payload["calibration"] = {}
    torch.save(payload, target)
    return target


def test_calibrate_fits_on_the_validation_split_and_changes_no_label(toy_checkpoint, toy_dataset, tmp_path, capsys):
    plain = uncalibrated(toy_checkpoint, tmp_path / "plain.pt")
    out = tmp_path / "calibrated.pt"
    code, stdout, err = run_main(capsys, "calibrate", plain, "--data-dir", toy_dataset, "--out", out, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["fitted_on"] == "validation" and report["images"] == 100
    # the same split as training held out, so the same temperature as training fitted
    assert report["temperature"] == pytest.approx(load_checkpoint(toy_checkpoint).temperature, rel=1e-4)
    assert load_checkpoint(plain).temperature == 1.0  # --out leaves the original as it was
    before, after = load_checkpoint(plain), load_checkpoint(out)
    x = torch.rand(300, 1, 28, 28)
    with torch.no_grad():
        raw, scaled = before.model(x), after.model(x)
    assert torch.equal(raw.argmax(1), scaled.argmax(1))
    torch.testing.assert_close(scaled, raw / report["temperature"])
    assert after.metrics == before.metrics  # only the calibration is rewritten


def test_calibrate_in_place_and_without_a_validation_split(tmp_path, toy_dataset, capsys):
    """A recipe that held nothing out is fitted on 5,000 training digits at most (here 599 of 600), never test."""
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    meta = CheckpointMeta("tutorial-mlp", {"hidden": [16]}, "toy", 0.2, 0.3, recipe={"val_size": 0, "seed": 0})
    save_checkpoint(path, build_model("tutorial-mlp", hidden=[16]), meta)
    code, stdout, err = run_main(capsys, "calibrate", path, "--data-dir", toy_dataset)
    assert code == 0, err
    assert "training (no validation split)" in stdout and f"written to {path}" in stdout
    assert load_checkpoint(path).meta.calibration["images"] == 599


def test_calibrate_refuses_to_rewrite_a_bundled_model_or_a_training_state(toy_checkpoint, tmp_path, capsys):
    from mnist_nn.models.bundled import bundled_models

    if bundled_models():
        code, _out, err = run_main(capsys, "calibrate", next(iter(bundled_models())))
        assert_one_line_error(code, err, "is a bundled model (already calibrated)")
    from mnist_nn.core.errors import UserError
    from mnist_nn.models.checkpoint import write_calibration

    with pytest.raises(UserError, match=r"a training state; calibrate the model\.pt"):
        write_calibration(toy_checkpoint.parent / "state.pt", {"temperature": 2.0}, tmp_path / "x.pt")


def test_evaluate_reports_ece_nll_and_draws_a_reliability_diagram(toy_checkpoint, toy_dataset, tmp_path, capsys):
    out = tmp_path / "evaluation"
    code, stdout, err = run_main(capsys, "evaluate", toy_checkpoint, "--data-dir", toy_dataset, "--out", out, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert 0 <= report["ece"] <= 1 and report["ece_bins"] == 15
    assert report["nll"] == pytest.approx(report["test_loss"])
    assert report["temperature"] == load_checkpoint(toy_checkpoint).temperature
    assert sum(b["count"] for b in report["reliability"]) == report["test_size"] == 200
    # the ECE is that of the calibrated probabilities, recomputed here from the loaded model
    from mnist_nn.data.datasets import load_dataset, normalize

    loaded = load_checkpoint(toy_checkpoint)
    splits = load_dataset("toy", toy_dataset)
    with torch.no_grad():
        probabilities = loaded.model(normalize(splits.test_images, loaded.mean, loaded.std, "cpu")).softmax(1)
    assert report["ece"] == pytest.approx(expected_calibration_error(probabilities, splits.test_labels), abs=1e-5)
    diagram = Path(report["files"]["reliability"])
    assert diagram == out / "reliability.png" and diagram.read_bytes()[:4] == b"\x89PNG"
    code, stdout, err = run_main(capsys, "evaluate", toy_checkpoint, "--data-dir", toy_dataset, "--out", out)
    assert code == 0, err
    assert "calibration: ECE" in stdout and "reliability diagram: " in stdout


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exports_carry_the_temperature(toy_checkpoint, tmp_path, capsys, fmt):
    """The exported graph divides by the temperature as PyTorch does: its probabilities are the calibrated ones."""
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
    from mnist_nn.inference.export import run_exported
    from mnist_nn.inference.predictor import Predictor

    out = tmp_path / f"model.{fmt}"
    code, _out, err = run_main(capsys, "export", toy_checkpoint, "--format", fmt, "--out", out, "--json")
    assert code == 0, err
    pixels = torch.randint(0, 256, (16, 28, 28)).float()
    _logits, probabilities = run_exported(out.read_bytes(), fmt, pixels)
    expected = Predictor.from_checkpoint(toy_checkpoint).probabilities(pixels)
    torch.testing.assert_close(torch.as_tensor(probabilities), expected, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- the bundled default, real MNIST


def test_the_bundled_default_is_calibrated_on_the_test_digits(mnist_dir):
    """ECE <= 1% on the 10,000 test digits (10% before calibration), the same labels as the bare network,
    and `--threshold 0.95` marks under 5% of 1,000 clean test digits uncertain (94% before)."""
    from mnist_nn.data.datasets import load_dataset, normalize
    from mnist_nn.inference.predictor import Predictor
    from mnist_nn.models.scoring import model_outputs

    loaded = load_checkpoint("robust")
    assert loaded.meta.calibration["fitted_on"] == "training (no validation split)"
    splits = load_dataset("mnist", mnist_dir, allow_download=False)
    images = normalize(splits.test_images, loaded.mean, loaded.std, "cpu")
    calibrated, bare = model_outputs(loaded.model, images, 1000), model_outputs(loaded.network, images, 1000)
    assert torch.equal(calibrated.argmax(1), bare.argmax(1))
    assert expected_calibration_error(calibrated.softmax(1), splits.test_labels) <= 0.01
    predictor = Predictor.from_loaded(loaded)
    probabilities = predictor.zoomed_probabilities(splits.test_images[:1000])  # as predict reads a clean digit
    uncertain = sum(reading.uncertain for reading in predictor.read(probabilities, threshold=0.95))
    assert uncertain < 50, uncertain
    assert np.isclose(predictor.metadata["temperature"], loaded.temperature)
