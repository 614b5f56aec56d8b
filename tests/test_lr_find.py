"""mnist-nn lr-find: the exponential sweep through the trainer's own steps, the smoothing, the stop on
divergence, the suggestion, training data only; bad ranges as one-line errors."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import mnist_nn
from mnist_nn.cli import main
from mnist_nn.lab import lr_find as lr_find_module
from mnist_nn.lab.lr_find import lr_find, make_trainer, run_sweep, smooth, suggest, sweep_lrs

SUGGESTION = re.compile(r"^suggested learning rate: (\S+)  \(mnist-nn train --recipe (\S+) --lr (\S+)\)$", re.M)


def test_the_sweep_is_exponential_from_start_to_end():
    lrs = sweep_lrs(1e-7, 10.0, 200)
    assert len(lrs) == 200 and lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(10.0)
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, 10 ** (8 / 199))


def test_smoothing_is_a_bias_corrected_moving_average():
    assert smooth([2.0] * 5) == pytest.approx([2.0] * 5)  # no pull towards zero at the start
    losses = [3.0, 1.0, 2.0]
    beta = 0.9
    expected, average = [], 0.0
    for step, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        expected.append(average / (1 - beta**step))
    assert smooth(losses, beta) == pytest.approx(expected)
    assert smooth(losses, beta)[0] == pytest.approx(3.0)


def test_the_suggestion_is_a_tenth_of_the_lowest_point():
    lrs = list(sweep_lrs(1e-5, 1.0, 50))
    curve = [2.3 - 2 * math.exp(-((math.log10(lr) + 2) ** 2)) for lr in lrs]  # lowest at 1e-2
    lowest = int(np.argmin(curve))
    assert suggest(lrs, curve) == pytest.approx(lrs[lowest] / 10)
    assert 0.9e-3 < suggest(lrs, curve) < 1.1e-3


class FakeTrainer(SimpleNamespace):
    """What run_sweep uses of a Trainer: its loader, optimizer and train_step, with scripted losses."""

    def __init__(self, losses):
        super().__init__(
            loader=SimpleNamespace(epoch=lambda epoch: iter([(epoch, batch) for batch in range(3)])),
            optimizer=SimpleNamespace(param_groups=[{"lr": 0.0}, {"lr": 0.0}]),
            losses=list(losses),
            seen=[],
        )

    def train_step(self, inputs, targets):
        self.seen.append((inputs, targets, [group["lr"] for group in self.optimizer.param_groups]))
        return torch.tensor(self.losses[len(self.seen) - 1])


def test_the_sweep_sets_each_steps_lr_and_stops_when_the_loss_explodes():
    falling = [2.0 - 0.1 * i for i in range(15)]  # down to 0.6
    trainer = FakeTrainer([*falling, *[0.6 * 3**k for k in range(1, 20)]])
    lrs = sweep_lrs(1e-4, 1.0, 60)
    losses, smoothed, diverged = run_sweep(trainer, lrs)
    assert diverged and len(losses) < 30
    # Only the last step passed four times the best so far.
    assert smoothed[-1] > 4 * min(smoothed)
    assert all(value <= 4 * min(smoothed[: i + 1]) for i, value in enumerate(smoothed[:-1]))
    assert [lrs_set for _, _, lrs_set in trainer.seen] == [[float(lr)] * 2 for lr in lrs[: len(losses)]]
    # Batches run on past an epoch's end: epoch 1's three, then epoch 2's.
    assert [(epoch, batch) for epoch, batch, _ in trainer.seen[:5]] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]


def test_the_sweep_stops_at_a_nan_loss_and_keeps_the_finite_steps():
    trainer = FakeTrainer([2.0, 1.9, 1.8, float("nan"), 1.0])
    losses, smoothed, diverged = run_sweep(trainer, sweep_lrs(1e-4, 1.0, 20))
    assert diverged and losses == pytest.approx([2.0, 1.9, 1.8]) and len(smoothed) == 3 and len(trainer.seen) == 4


def test_the_sweep_runs_the_recipes_own_trainer_on_training_data_only(toy_dataset, tmp_path, monkeypatch):
    import mnist_nn.training.trainer

    def never(*args, **kwargs):
        raise AssertionError("the range test must not score the model on any held-out or test image")

    monkeypatch.setattr(mnist_nn.training.trainer, "evaluate", never)
    monkeypatch.setattr(mnist_nn.training.trainer, "model_outputs", never)
    overrides = {"dataset": "toy", "model_kwargs": {"hidden": [32]}, "schedule": "onecycle", "warmup_epochs": 1}
    trainer = make_trainer("tutorial", toy_dataset, "cpu", tmp_path / "run", overrides)
    assert trainer.recipe.schedule == "constant" and not trainer.scheduled and trainer.recipe.model == "tutorial-mlp"
    assert len(trainer.data.test_x) == len(trainer.data.eval_x) == 0 and len(trainer.data.train_x) == 600
    before = [p.detach().clone() for p in trainer.model.parameters()]
    lrs = sweep_lrs(1e-5, 1.0, 40)  # 40 steps: two epochs of 19 batches and more
    losses, smoothed, _ = run_sweep(trainer, lrs)
    assert trainer.step == len(losses) > 20
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lrs[len(losses) - 1])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert min(smoothed) < 0.9 * smoothed[0]


def test_lr_find_on_toy_data_writes_the_plot_and_a_suggestion_train_accepts(toy_dataset, tmp_path, capsys):
    png = tmp_path / "sweep.png"
    result = lr_find(
        "tutorial", start=1e-5, end=10.0, steps=60, out=png, data_dir=toy_dataset, device="cpu", dataset="toy"
    )
    assert result.lrs == pytest.approx(list(sweep_lrs(1e-5, 10.0, 60)[: len(result.lrs)]))
    assert 1e-5 <= result.suggestion <= 1.0 and result.suggestion == pytest.approx(result.lrs[result.lowest] / 10)
    assert result.fell and Image.open(png).size[0] > 500
    text = lr_find_module.format_result(result)
    shown, recipe, flag = SUGGESTION.search(text).groups()
    assert shown == flag and recipe == "tutorial" and float(flag) == pytest.approx(result.suggestion, rel=0.05)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--start", "1", "--end", "0.001"],
            "the learning-rate range is backwards: --start 1 must be below --end 0.001",
        ),
        (["--start", "0.01", "--end", "0.01"], "the learning-rate range is backwards: --start 0.01 must be below"),
        (["--start", "0"], "--start must be a positive learning rate, got 0.0"),
        (["--end", "-3"], "--end must be a positive learning rate, got -3.0"),
        (["--end", "nan"], "--end must be a positive learning rate, got nan"),
        (["--steps", "5"], "--steps must be at least 10, got 5"),
        (["--recipe", "nope"], "unknown recipe"),
        (["--out", "sweep.jpg"], "--out names the PNG to write; sweep.jpg does not end in .png"),
    ],
)
def test_bad_input_is_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["lr-find", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnist-nn: error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_backwards_range_answers_before_pytorch_loads():
    probe = "import sys\nfrom mnist_nn.cli import main\nmain(sys.argv[1:])\nprint('torch' in sys.modules)"
    argv = ["lr-find", "--start", "10", "--end", "1e-7"]
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False" and "backwards" in done.stderr


@pytest.mark.realdata
def test_the_suggestion_for_the_tutorial_trains_to_90_percent_in_one_epoch(mnist_dir, tmp_path, capsys):
    png = tmp_path / "lr.png"
    assert (
        main(["lr-find", "--recipe", "tutorial", "--steps", "100", "--data-dir", str(mnist_dir), "--out", str(png)])
        == 0
    )
    _, _, lr = SUGGESTION.search(capsys.readouterr().out).groups()
    assert 1e-4 < float(lr) < 1e-1 and png.exists()
    run = mnist_nn.train("tutorial", data_dir=mnist_dir, out=tmp_path / "run", epochs=1, lr=float(lr), quiet=True)
    assert run.summary["test_accuracy"] >= 0.90, (lr, run.summary["test_accuracy"])
