"""Models, schedules, augmentation, selection and ensembles: fast tests on synthetic data."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import shutil

import pytest
import torch

from mnist_nn.cli import main
from mnist_nn.core.device import resolve_precision
from mnist_nn.data.augment import Augmentation, augment_batch
from mnist_nn.inference.evaluate import (
    average_log_probabilities,
    evaluation_from_log_probabilities,
    predict_log_probabilities,
    shifted_views,
)
from mnist_nn.models.networks import MODELS, build_model, count_parameters
from mnist_nn.training.recipes import RECIPES
from mnist_nn.training.schedules import lr_factor

EXPECTED_PARAMETERS = {
    "tutorial-mlp": 175_306,
    "mlp": 1_865_738,
    "lenet5": 61_706,
    "cnn-fast": 50_794,
    "cnn-best": 150_698,
    "cnn-speedrun": 215_194,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_output_shape_and_parameter_count(name):
    model = build_model(name).eval()
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    assert count_parameters(model) == EXPECTED_PARAMETERS[name]


def test_mlp_options_change_the_network():
    plain = build_model("mlp", hidden=[32], dropout=0.0, batch_norm=False)
    assert count_parameters(plain) == 784 * 32 + 32 + 32 * 10 + 10
    assert [type(m).__name__ for m in build_model("mlp", hidden=[32], dropout=0.5, batch_norm=True)] == [
        "Flatten",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Dropout",
        "Linear",
    ]


def test_every_recipe_names_a_registered_model():
    assert set(RECIPES) >= {"tutorial", "mlp-best", "cnn-fast", "cnn-best"}
    for recipe in RECIPES.values():
        assert recipe.model in MODELS


def curve(schedule, total=100, warmup=0, **kw):
    return [lr_factor(schedule, step, total, warmup, **kw) for step in range(total)]


def test_schedule_curves():
    assert curve("constant") == [1.0] * 100
    step = curve("step", step_every=30, gamma=0.1)
    assert step[0] == 1.0 and step[29] == 1.0 and step[30] == pytest.approx(0.1) and step[95] == pytest.approx(1e-3)
    cosine = curve("cosine")
    assert cosine[0] == 1.0 and cosine[50] == pytest.approx(0.5) and cosine[99] < 0.001
    assert all(a >= b for a, b in itertools.pairwise(cosine))
    one = curve("onecycle", warmup=30)
    assert one[0] == pytest.approx(1 / 25 + (1 - 1 / 25) / 30)
    assert one[29] == pytest.approx(1.0) and max(one) == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(one[:30]))  # rising through the warm-up
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(one[29:]))  # then falling
    assert one[99] < 0.05
    warm = curve("cosine", warmup=10)
    assert warm[0] == pytest.approx(0.1) and warm[9] == pytest.approx(1.0) and warm[10] == 1.0
    assert warm[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_augmentation_keeps_shape_range_and_is_seeded():
    images = torch.rand(64, 1, 28, 28) * 2 - 0.5
    config = Augmentation(rotate=15, shift=3, scale=0.15, shear=10, elastic_alpha=2, elastic_sigma=4)
    out = augment_batch(images, config, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= images.min() - 1e-5 and out.max() <= images.max() + 1e-5
    assert not torch.allclose(out, images)
    again = augment_batch(images, config, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert augment_batch(images, Augmentation(), torch.Generator()) is images


def test_flip_mirrors_exactly_and_only_with_its_probability():
    images = torch.rand(400, 1, 28, 28)
    mirrored = augment_batch(images, Augmentation(flip=1.0), torch.Generator().manual_seed(0))
    # A mirror maps pixel centres onto pixel centres: the same values, left and right swapped.
    assert torch.allclose(mirrored, images.flip(-1), atol=1e-5)
    some = augment_batch(images, Augmentation(flip=0.5), torch.Generator().manual_seed(0))
    flipped = torch.isclose(some, images.flip(-1), atol=1e-5).flatten(1).all(1)
    kept = torch.isclose(some, images, atol=1e-5).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # each image is either mirrored or left as it is
    assert 150 < int(flipped.sum()) < 250
    # With other warps, mirroring still keeps the value range, and flip=0 draws nothing extra.
    config = Augmentation(rotate=10, shift=2)
    with_flip = augment_batch(images, Augmentation(rotate=10, shift=2, flip=0.5), torch.Generator().manual_seed(3))
    assert with_flip.min() >= images.min() - 1e-5 and with_flip.max() <= images.max() + 1e-5
    assert torch.equal(
        augment_batch(images, config, torch.Generator().manual_seed(3)),
        augment_batch(images, Augmentation(rotate=10, shift=2, flip=0.0), torch.Generator().manual_seed(3)),
    )


def test_augmentation_keeps_a_digit_recognizable():
    """Labels stay valid: a small warp moves a stroke a little, it does not turn one digit into another."""
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 6:22, 12:16] = 1.0  # a vertical bar, like a "1"
    warped = augment_batch(
        image.repeat(32, 1, 1, 1), Augmentation(rotate=10, shift=2, scale=0.1, shear=8), torch.Generator()
    )
    grid = torch.arange(28.0)

    def centre(batch):
        mass = batch.sum((1, 2, 3))
        return (batch.sum((1, 2)) * grid).sum(-1) / mass, (batch.sum((1, 3)) * grid).sum(-1) / mass

    (x0, y0), (x1, y1) = centre(image), centre(warped)
    assert ((x1 - x0).abs().max() <= 3.5) and ((y1 - y0).abs().max() <= 3.5)  # shift 2 px, plus the zoom
    assert (warped.sum((1, 2, 3)) / image.sum()).sub(1).abs().max() < 0.35  # ink is roughly preserved
    height = (warped[:, 0] > 0.5).any(2).sum(1)  # still a tall bar, not a blob or a stripe
    assert height.min() >= 12


def test_shifted_views_and_ensemble_averaging():
    images = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = shifted_views(images)
    assert len(views) == 5 and torch.equal(views[0], images)
    assert torch.equal(views[4][0, 0, :, :3], images[0, 0, :, 1:])  # shifted left by one pixel
    assert torch.equal(views[2][0, 0, :3, :], images[0, 0, 1:, :])  # shifted up by one pixel

    labels = torch.tensor([0, 1, 1])
    a = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    b = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
    mean = average_log_probabilities([a.log(), b.log()])
    assert torch.allclose(mean.exp(), (a + b) / 2)
    result = evaluation_from_log_probabilities(mean, labels)
    assert evaluation_from_log_probabilities(a.log(), labels).accuracy == pytest.approx(2 / 3)
    assert result.accuracy == 1.0
    expected_loss = -(math.log(0.8) + math.log(0.6) + math.log(0.7)) / 3
    assert result.loss == pytest.approx(expected_loss)

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    probabilities = predict_log_probabilities(model, images.repeat(4, 1, 1, 1), batch_size=3, tta=True).exp()
    assert probabilities.shape == (4, 3) and torch.allclose(probabilities.sum(1), torch.ones(4))
    # Exact in log space: a probability far below float32's smallest still gets its true log.
    tiny = average_log_probabilities([torch.tensor([[-200.0, 0.0]]), torch.tensor([[-300.0, 0.0]])])
    assert tiny[0, 0].item() == pytest.approx(-200.0 - math.log(2), abs=1e-3)


def _train_toy(folder, out, **extra):
    argv = ["train", "--dataset", "toy", "--data-dir", str(folder), "--out", str(out), "--quiet"]
    argv += ["--epochs", "4", "--val-size", "100", "--batch-size", "16", "--lr", "0.01", "--shuffle"]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}"] + ([str(value)] if value != "" else [])
    assert main(argv) == 0


def test_selection_never_reads_test_labels(tmp_path, toy_dataset):
    """Two runs whose test labels differ (one set shuffled) choose the same epoch with the same metrics."""
    other = tmp_path / "other"
    shutil.copytree(toy_dataset, other)
    labels_file = other / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels_file.read_bytes()))
    body = torch.tensor(list(raw[8:]))
    raw[8:] = bytes(body[torch.randperm(len(body), generator=torch.Generator().manual_seed(0))].tolist())
    labels_file.write_bytes(gzip.compress(bytes(raw)))
    options = {"schedule": "cosine", "aug_rotate": 5, "ema_decay": 0.9}
    _train_toy(toy_dataset, tmp_path / "a", **options)
    _train_toy(other, tmp_path / "b", **options)

    def without_times(name):
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]

    assert without_times("a") == without_times("b")
    a, b = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("a", "b"))
    assert a["selected_epoch"] == b["selected_epoch"] and a["val_accuracy"] == b["val_accuracy"]
    assert a["test_accuracy"] != b["test_accuracy"]  # the test labels differ, and only the final score sees them


def test_best_epoch_is_saved_and_early_stopping(tmp_path, toy_dataset):
    _train_toy(toy_dataset, tmp_path / "run", epochs=12, patience=2)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda row: row["eval_accuracy"])
    assert summary["selected_epoch"] == best["epoch"]
    assert len(rows) == summary["epochs"] <= 12
    if len(rows) < 12:  # stopped early: exactly `patience` epochs after the best one
        assert len(rows) == best["epoch"] + 2
    checkpoint = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert checkpoint["metrics"]["epoch"] == best["epoch"]


def test_ensemble_and_tta_from_the_cli(tmp_path, toy_dataset, capsys):
    for seed in (1, 2):
        _train_toy(toy_dataset, tmp_path / f"s{seed}", seed=seed, model="lenet5")
    capsys.readouterr()
    paths = [str(tmp_path / f"s{seed}" / "model.pt") for seed in (1, 2)]
    assert main(["evaluate", *paths, "--data-dir", str(toy_dataset), "--json", "--tta"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "ensemble of 2 with TTA" and report["tta"] is True
    assert set(report["member_accuracy"]) == set(paths)
    assert report["test_accuracy"] >= min(report["member_accuracy"].values()) - 0.05


def test_ensemble_of_different_datasets_is_refused(tmp_path, toy_dataset, capsys):
    _train_toy(toy_dataset, tmp_path / "run", epochs=1)
    payload = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    payload["dataset"] = "fashion-mnist"
    torch.save(payload, tmp_path / "fashion.pt")
    capsys.readouterr()
    code = main(["evaluate", str(tmp_path / "run" / "model.pt"), str(tmp_path / "fashion.pt")])
    assert code == 2
    assert "an ensemble needs checkpoints of one dataset" in capsys.readouterr().err


def test_tensorboard_logs_metrics_lr_and_predictions(tmp_path, toy_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train_toy(toy_dataset, tmp_path / "run", epochs=2, tensorboard="")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert {"train_loss", "eval_loss", "eval_accuracy", "lr", "test_accuracy"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("eval_accuracy")] == [1, 2]
    assert tags["images"] == ["predictions"]


def test_ema_follows_the_weights_with_a_warm_up():
    from mnist_nn.training.ema import ModelEMA

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.99)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)  # first update: decay min(0.99, 2/11)
    expected = start + (1 - 2 / 11) * 1.0
    assert torch.allclose(ema.module[0].weight, expected)
    for _ in range(2000):
        ema.update(model)
    assert torch.allclose(ema.module[0].weight, model[0].weight, atol=1e-6)
    assert ema.module[1].num_batches_tracked == model[1].num_batches_tracked
    assert not any(p.requires_grad for p in ema.module.parameters())
    restored = ModelEMA(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 2001 and restored.decay == 0.99


def test_bf16_autocast_trains(tmp_path, toy_dataset):
    _train_toy(toy_dataset, tmp_path / "run", epochs=3, precision="bf16", model="lenet5")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["precision"] == "bf16" and summary["precision"] == "bf16"
    assert summary["test_accuracy"] > 0.9


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch, tmp_path, toy_dataset):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", torch.device("mps")) == "fp32"
    # oneDNN capped below AMX (as a CPU with AVX-512-BF16 but no AMX): its bf16 is slower than fp32 there.
    for cap, precision in [
        ("AVX512_CORE_BF16", "fp32"),
        ("avx2", "fp32"),
        ("AVX512_CORE_AMX", "bf16"),
        ("ALL", "bf16"),
    ]:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert resolve_precision("auto", cpu) == precision, cap
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # an older torch without the probe
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    _train_toy(toy_dataset, tmp_path / "run", epochs=1, precision="auto", model="lenet5")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    # The recipe keeps what was asked for; the run records what it computed in.
    assert config["recipe"]["precision"] == "auto" and summary["precision"] == config["precision"] == "fp32"


def test_compiled_training_matches_eager(tmp_path, toy_dataset):
    """torch.compile changes how the step runs, not what it computes (up to float rounding)."""
    _train_toy(toy_dataset, tmp_path / "eager", epochs=1, model="lenet5")
    _train_toy(toy_dataset, tmp_path / "compiled", epochs=1, model="lenet5", compile="")
    eager, compiled = (
        json.loads((tmp_path / n / "metrics.jsonl").read_text().splitlines()[0]) for n in ("eager", "compiled")
    )
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-3)
    assert compiled["eval_accuracy"] == pytest.approx(eager["eval_accuracy"], abs=0.02)


INK = {
    "thickness": {"thickness": 1.5},
    "blur": {"blur": 1.5},
    "contrast": {"contrast": 0.8},
    "brightness": {"brightness": 0.5},
    "noise": {"noise": 0.3},
    "occlude": {"occlude": 1.0},
    "lowres": {"lowres": 0.5},
}


def _bars(count: int = 64) -> torch.Tensor:
    images = torch.zeros(count, 1, 28, 28)
    images[:, :, 6:22, 12:15] = 1.0  # a "1", 3 px wide
    images[:, :, 6:9, 8:20] = 1.0
    return images


@pytest.mark.parametrize("name", INK)
def test_each_ink_augmentation_changes_its_share_keeps_the_range_and_is_seeded(name):
    mean, std = 0.1307, 0.3081
    unit = _bars(400)
    images = (unit - mean) / std
    config = Augmentation(**INK[name], ink_share=0.5, mean=mean, std=std)
    out = augment_batch(images, config, torch.Generator().manual_seed(5))
    assert out.shape == images.shape
    back = out * std + mean
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5  # still ink between 0 and 1 before normalization
    changed = ~torch.isclose(out, images, atol=1e-4).flatten(1).all(1)
    assert 120 < int(changed.sum()) < 280, int(changed.sum())  # about half the batch (ink_share 0.5)
    assert torch.equal(out, augment_batch(images, config, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, augment_batch(images, config, torch.Generator().manual_seed(6)))


def test_stroke_width_thickens_and_thins_as_pens_do():
    unit = _bars(400)
    out = augment_batch(unit, Augmentation(thickness=1.0, ink_share=1.0), torch.Generator().manual_seed(0))
    ink = out.sum((1, 2, 3))
    before = unit[0].sum()
    assert (ink > before * 1.2).sum() > 100 and (ink < before * 0.8).sum() > 100  # markers and fine pens
    assert (ink > 0).all()  # a thinned stroke is fainter, never gone


def test_ink_augmentations_leave_a_recipe_without_them_unchanged():
    """Older recipes draw exactly the random numbers they drew before: their runs resume and reproduce."""
    images = _bars(32)
    warp = Augmentation(rotate=10, shift=2)
    with_ink_fields = Augmentation(rotate=10, shift=2, ink_share=0.9, mean=0.1, std=0.3)
    assert torch.equal(
        augment_batch(images, warp, torch.Generator().manual_seed(2)),
        augment_batch(images, with_ink_fields, torch.Generator().manual_seed(2)),
    )
