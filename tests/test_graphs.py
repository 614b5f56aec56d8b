"""The training step (step.py), its capture as a CUDA graph (cuda_graph.py), and the choice of the training device.

What runs on a CPU: the decision to capture, the eager fallback giving today's results, the routing of
full and last smaller batches, the EMA update the graph records, the device choice with the GPU
faked. The capture itself is compared with the eager step where a CUDA GPU is present.
"""

from __future__ import annotations

import copy
import json
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from mnist_nn.core import device as device_module
from mnist_nn.core.errors import Interrupted
from mnist_nn.data.augment import augment_batch
from mnist_nn.training.cuda_graph import CapturedStep, can_capture, ema_pairs, ema_update_, ema_weight
from mnist_nn.training.ema import ModelEMA
from mnist_nn.training.recipes import Recipe
from mnist_nn.training.schedules import lr_factor
from mnist_nn.training.step import EagerStep, measure_step_seconds
from mnist_nn.training.trainer import RunOptions, Trainer, single_process_trainer, train

CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _trainer(data: Path, out: Path, device: str = "cpu", **overrides) -> Trainer:
    options = RunOptions(data_dir=data, out=out, device=device, quiet=True)
    settings = {"dataset": "toy", "model": "mlp", "model_kwargs": {"hidden": [32]}, "batch_size": 32, **overrides}
    return single_process_trainer(None, options, **settings)


# ---------------------------------------------------------------------- when the step is captured


def test_the_step_is_captured_only_on_cuda_without_the_eager_only_features():
    plain = {"distributed": False, "grad_clip": 0.0, "compile_model": False, "deterministic": False}
    assert can_capture(CUDA, **plain) == (True, "")
    for device in ("cpu", "mps"):
        captured, reason = can_capture(torch.device(device), **plain)
        assert not captured and device in reason
    for change, word in [
        ({"distributed": True}, "DDP"),
        ({"grad_clip": 1.0}, "clipping"),
        ({"compile_model": True}, "torch.compile"),
        ({"deterministic": True}, "deterministic"),
    ]:
        captured, reason = can_capture(CUDA, **{**plain, **change})
        assert not captured and word in reason


def test_a_cpu_run_records_the_eager_step_and_why(toy_dataset, tmp_path):
    trainer = _trainer(toy_dataset, tmp_path / "run", epochs=1)
    assert type(trainer.batch_step) is EagerStep
    assert trainer.config["cuda_graph"] is False and "cpu" in trainer.config["cuda_graph_reason"]
    assert trainer.config["device_choice"] == {"asked": "cpu", "chosen": "cpu", "reason": "asked for"}
    trainer.fit()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["cuda_graph"] is False and config["cuda_graph_reason"] == trainer.config["cuda_graph_reason"]
    assert config["device_choice"]["chosen"] == "cpu"


# ---------------------------------------------------------------------- the eager path is today's step


def _reference_step(trainer: Trainer, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """The oracle: the step written with PyTorch's own calls only (torch.optim's step, F.cross_entropy, the
    EMA's update), as a reader would write it from the tutorial. The trainer's step must equal it bitwise."""
    recipe = trainer.recipe
    every = recipe.step_epochs * trainer.batches
    factor = lr_factor(recipe.schedule, trainer.step, trainer.total_steps, trainer.warmup_steps, every, recipe.gamma)
    for group in trainer.optimizer.param_groups:
        group["lr"] = recipe.lr * factor
    inputs = augment_batch(inputs, trainer.augmentation, trainer.augment_generator)
    loss = nn.functional.cross_entropy(trainer.model(inputs), targets, label_smoothing=recipe.label_smoothing)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    trainer.ema.update(trainer.model)
    trainer.step += 1
    trainer.loss_sum += loss.detach()


def test_the_eager_step_on_a_cpu_gives_exactly_todays_results(toy_dataset, tmp_path):
    settings = {
        "schedule": "onecycle",
        "warmup_epochs": 0.5,
        "ema_decay": 0.9,
        "aug_rotate": 5.0,
        "label_smoothing": 0.1,
        "epochs": 2,
        "model_kwargs": {"hidden": [32], "batch_norm": True},
    }
    new = _trainer(toy_dataset, tmp_path / "new", **settings)
    old = _trainer(toy_dataset, tmp_path / "old", **settings)
    new.model.train(), old.model.train()
    batches = list(new.loader.epoch(1))[:8]
    # One after the other, from the same global random state: the dropout masks come from it.
    torch.manual_seed(1)
    for inputs, targets in batches:
        new.train_step(inputs, targets)
    torch.manual_seed(1)
    for inputs, targets in batches:
        _reference_step(old, inputs, targets)
    assert new.step == old.step == 8 and torch.equal(new.loss_sum, old.loss_sum)
    for ours, theirs in [(new.model, old.model), (new.ema.module, old.ema.module)]:
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b)


class _ReplayOnCpu(CapturedStep):
    """A CapturedStep whose 'replay' is the recorded work run eagerly: the routing, on a machine without a GPU."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__(trainer.batch_step, trainer.optimizer, trainer.recipe.batch_size)
        self.sizes: list[int] = []
        self.lrs: list[float] = []

    def __call__(self, inputs, targets, lr):
        self.sizes.append(len(targets))
        if not self.fits(inputs, targets):
            return self.eager(inputs, targets, lr)
        self.lrs.append(lr)
        share = self.update(inputs, targets)
        # What the graph records for the EMA: the weight read from a tensor.
        ema_update_(ema_pairs(self.ema, self.model), torch.tensor(ema_weight(self.ema)))
        self.ema.updates += 1
        return share


def test_full_batches_go_to_the_graph_and_the_last_smaller_one_to_the_eager_step(toy_dataset, tmp_path):
    settings = {"schedule": "onecycle", "warmup_epochs": 0.5, "ema_decay": 0.9, "epochs": 2, "batch_size": 48}
    routed = _trainer(toy_dataset, tmp_path / "routed", **settings)
    eager = _trainer(toy_dataset, tmp_path / "eager", **settings)
    routed.batch_step = fake = _ReplayOnCpu(routed)
    for trainer in (routed, eager):
        torch.manual_seed(1)  # the same dropout masks for both
        for epoch in (1, 2):
            trainer.train_one_epoch(epoch)
    # 600 images in batches of 48: 12 full ones and a last one of 24, each epoch.
    assert fake.sizes == ([48] * 12 + [24]) * 2 and len(fake.lrs) == 24
    assert fake.lrs[0] == routed.recipe.lr * lr_factor("onecycle", 0, 26, routed.warmup_steps)
    assert routed.step == eager.step == 26 and routed.ema.updates == eager.ema.updates == 26
    assert torch.allclose(routed.loss_sum, eager.loss_sum, rtol=1e-6)
    for ours, theirs in [(routed.model, eager.model), (routed.ema.module, eager.ema.module)]:
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
            assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-7)


class _CountingStep:
    """An EagerStep that only counts the batch sizes it is given."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.ema = None
        self.sizes: list[int] = []
        self.step = lambda inputs, targets: torch.zeros(())

    def __call__(self, inputs, targets, lr):
        self.sizes.append(len(targets))
        return torch.zeros(())


def test_a_batch_of_another_size_is_left_to_the_eager_step():
    model = nn.Linear(4, 2)
    eager = _CountingStep(model)
    step = CapturedStep(eager, torch.optim.SGD(model.parameters()), 8)
    assert step.fits(torch.zeros(8, 4), torch.zeros(8)) and not step.fits(torch.zeros(5, 4), torch.zeros(5))
    step(torch.zeros(5, 4), torch.zeros(5), lr=0.1)
    assert eager.sizes == [5] and not step.captured
    step.failed = "capture failed"
    assert not step.fits(torch.zeros(8, 4), torch.zeros(8))
    step(torch.zeros(8, 4), torch.zeros(8), lr=0.1)
    assert eager.sizes == [5, 8]
    # The optimizer's state is created on its first step, which must not be recorded: one eager step at least.
    assert CapturedStep(eager, step.optimizer, 8, warmup=0).warmup_left == 1


def test_the_recorded_ema_update_is_model_emas():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    reference, recorded = ModelEMA(model, 0.99), ModelEMA(model, 0.99)
    pairs = ema_pairs(recorded, model)
    weight = torch.zeros(())
    for _ in range(12):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        model(torch.randn(4, 6))  # moves the batch-norm statistics and its integer counter
        reference.update(model)
        weight.fill_(ema_weight(recorded))
        ema_update_(pairs, weight)
        recorded.updates += 1
    assert recorded.updates == reference.updates == 12
    for a, b in zip(recorded.module.state_dict().values(), reference.module.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-6, atol=1e-7)
    assert recorded.module[1].num_batches_tracked.item() == 12


# ---------------------------------------------------------------------- the device "auto" picks


@pytest.fixture
def no_mps(monkeypatch):
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def _probe(seconds: dict[str, float], asked: list[str]):
    def probe(device: torch.device) -> float:
        asked.append(device.type)
        return seconds[device.type]

    return probe


def test_auto_stays_on_the_cpu_without_a_gpu_and_measures_nothing(monkeypatch, no_mps):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    asked: list[str] = []
    device, record = device_module.choose_training_device("auto", _probe({}, asked))
    assert device.type == "cpu" and record == {"asked": "auto", "chosen": "cpu", "reason": "no CUDA GPU"}
    assert asked == []


@pytest.mark.parametrize(
    ("cuda", "cpu", "chosen", "faster"), [(0.001, 0.004, "cuda", "CUDA GPU"), (0.003, 0.002, "cpu", "CPU")]
)
def test_auto_takes_the_gpu_only_where_a_step_of_the_recipe_is_faster_there(
    monkeypatch, no_mps, cuda, cpu, chosen, faster
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked: list[str] = []
    device, record = device_module.choose_training_device("auto", _probe({"cuda": cuda, "cpu": cpu}, asked))
    assert device.type == chosen and record["chosen"] == chosen and sorted(asked) == ["cpu", "cuda"]
    ratio = max(cuda, cpu) / min(cuda, cpu)
    assert record["reason"] == f"a training step of this recipe is {ratio:.1f}x faster on the {faster}"
    assert record["step_ms"] == {"cuda": cuda * 1000, "cpu": cpu * 1000}


def test_a_named_device_and_a_resumed_run_are_not_measured(monkeypatch, no_mps):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked: list[str] = []
    probe = _probe({"cuda": 1.0, "cpu": 0.001}, asked)
    device, record = device_module.choose_training_device("cuda", probe)
    assert device.type == "cuda" and record["reason"] == "asked for"
    device, record = device_module.choose_training_device("auto", probe, resumed_on="cpu")
    assert device.type == "cpu" and record["reason"] == "the device the resumed run started on"
    device, record = device_module.choose_training_device("auto", probe, resumed_on="cuda:0")
    assert device == torch.device("cuda:0") and asked == []
    # A run started on a GPU, resumed where there is none: the CPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device, record = device_module.choose_training_device("auto", probe, resumed_on="cuda:0")
    assert device.type == "cpu" and record["reason"] == "no CUDA GPU" and asked == []


def test_auto_on_this_machine_is_recorded_in_the_run(toy_dataset, tmp_path, monkeypatch, no_mps):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trainer = _trainer(toy_dataset, tmp_path / "run", device="auto")
    assert trainer.device.type == "cpu" and trainer.config["device_choice"]["reason"] == "no CUDA GPU"


def test_the_probe_times_real_steps_and_leaves_the_random_streams_alone():
    recipe = Recipe(name="x", description="x", model="mlp", model_kwargs={"hidden": [16]}, batch_size=8)
    before = torch.get_rng_state()
    seconds = measure_step_seconds(recipe, torch.device("cpu"), capture=False, steps=2)
    assert 0 < seconds < 60 and torch.equal(torch.get_rng_state(), before)


# ---------------------------------------------------------------------- on a CUDA GPU


@needs_cuda
@pytest.mark.parametrize(
    ("settings", "rel", "atol"),
    [
        ({"schedule": "onecycle", "warmup_epochs": 0.5, "ema_decay": 0.9,
          "model_kwargs": {"hidden": [32], "dropout": 0.0}}, 1e-2, 1e-3),
        ({"model": "cnn-fast", "model_kwargs": {"channels": [8, 16]}, "optimizer": "sgd", "lr": 0.05,
          "schedule": "cosine", "channels_last": True, "precision": "bf16", "aug_rotate": 5.0}, 5e-2, 5e-2),
    ],
)  # fmt: skip
def test_the_captured_step_trains_as_the_eager_one(toy_dataset, tmp_path, settings, rel, atol):
    settings = {**settings, "epochs": 3, "batch_size": 48}
    captured = _trainer(toy_dataset, tmp_path / "captured", device="cuda", **settings)
    eager = _trainer(toy_dataset, tmp_path / "eager", device="cuda", **settings)
    assert captured.config["cuda_graph"] is True and "cuda_graph_reason" not in captured.config
    eager.batch_step = eager.batch_step.eager
    losses = {"captured": [], "eager": []}
    for name, trainer in (("captured", captured), ("eager", eager)):
        for epoch in (1, 2, 3):
            losses[name].append(trainer.train_one_epoch(epoch))
    assert isinstance(captured.batch_step, CapturedStep)
    assert captured.batch_step.captured and captured.batch_step.failed is None
    assert captured.step == eager.step == 3 * 13
    assert losses["captured"] == pytest.approx(losses["eager"], rel=rel)
    # Outside the graph the optimizer is as an uncaptured run's: a float learning rate, not capturable.
    group = captured.optimizer.param_groups[0]
    assert isinstance(group["lr"], float) and group["lr"] == eager.optimizer.param_groups[0]["lr"]
    assert group.get("capturable", False) is False
    for a, b in zip(captured.eval_model.state_dict().values(), eager.eval_model.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=rel, atol=atol)
    assert captured.evaluate().accuracy == pytest.approx(eager.evaluate().accuracy, abs=0.03)


@needs_cuda
def test_a_captured_run_stopped_mid_epoch_resumes_to_the_uninterrupted_result(toy_dataset, tmp_path):
    settings = {"schedule": "onecycle", "warmup_epochs": 0.5, "ema_decay": 0.9, "epochs": 3, "batch_size": 48}
    whole = _trainer(toy_dataset, tmp_path / "whole", device="cuda", **settings).fit()
    cut = _trainer(toy_dataset, tmp_path / "cut", device="cuda", **settings)
    after_step = cut.after_step

    def stop_at_step_20(epoch: int, batch: int) -> None:
        if cut.step == 20:  # in epoch 2, after the graph was captured and replayed
            cut.stop.signum = signal.SIGTERM
        after_step(epoch, batch)

    cut.after_step = stop_at_step_20
    with pytest.raises(Interrupted):
        cut.fit()
    resumed = train(resume=tmp_path / "cut", data_dir=toy_dataset, device="cuda", quiet=True)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    for ours, theirs in zip(resumed.history, whole.history, strict=True):
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=2e-2)
        assert ours["eval_accuracy"] == pytest.approx(theirs["eval_accuracy"], abs=0.02)
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["cuda_graph"] is True


def test_captured_step_helpers_keep_a_model_copy_apart():
    # ema_pairs pairs the average with the live tensors by name, never the same tensor twice.
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = ModelEMA(copy.deepcopy(model), 0.5)
    pairs = ema_pairs(ema, model)
    assert len(pairs) == len(model.state_dict()) and all(a is not b for a, b in pairs)
