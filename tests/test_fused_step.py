"""The lean optimizer step is torch.optim's, bitwise, and steps aside wherever it would not be."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mnist_nn.models.networks import build_model
from mnist_nn.training.fused_adam import FusedAdamStep
from mnist_nn.training.recipes import Recipe
from mnist_nn.training.run_plan import make_optimizer


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, stepper, steps: int, lr_of=None) -> list[float]:
    torch.manual_seed(3)
    losses = []
    for step in range(steps):
        if lr_of is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_of(step)
        inputs, targets = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
        loss = nn.functional.cross_entropy(model(inputs), targets)
        if stepper is None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            stepper.zero_grad()
            loss.backward()
            stepper.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    "fields",
    [
        {"optimizer": "adam", "lr": 0.0045},
        {"optimizer": "adam", "lr": 0.01, "weight_decay": 1e-3, "adam_beta1": 0.7, "adam_beta2": 0.9},
        {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 5e-4},
    ],
)
def test_lean_step_is_bitwise_the_optimizers_step(fields):
    recipe = Recipe(name="t", description="", model="mlp", model_kwargs={"hidden": [32, 16]}, **fields)
    torch.manual_seed(0)
    reference = build_model("mlp", hidden=[32, 16])
    lean = copy.deepcopy(reference)
    ref_opt = make_optimizer(recipe, reference, torch.device("cpu"))
    lean_opt = make_optimizer(recipe, lean, torch.device("cpu"))
    stepper = FusedAdamStep(lean_opt)
    assert stepper.lean

    def schedule(step: int) -> float:  # the lr changes every step, as a schedule's does
        return fields["lr"] * (1 + step) / 8

    assert _train(lean, lean_opt, stepper, 8, schedule) == _train(reference, ref_opt, None, 8, schedule)
    for a, b in zip(reference.state_dict().values(), lean.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for p, q in zip(reference.parameters(), lean.parameters(), strict=True):
        assert torch.equal(ref_opt.state[p]["exp_avg_sq"], lean_opt.state[q]["exp_avg_sq"])
        assert torch.equal(ref_opt.state[p]["step"], lean_opt.state[q]["step"])

    # A resumed optimizer (new state tensors from a state dict) is stepped on the same way.
    saved = copy.deepcopy(lean_opt.state_dict())
    lean_opt.load_state_dict(saved)
    ref_opt.load_state_dict(copy.deepcopy(saved))
    assert _train(lean, lean_opt, stepper, 3) == _train(reference, ref_opt, None, 3)
    for a, b in zip(reference.parameters(), lean.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_first_step_and_missing_gradients_go_through_the_optimizer(monkeypatch):
    recipe = Recipe(name="t", description="", model="mlp", optimizer="adam", lr=1e-3)
    model = build_model("mlp", hidden=[8])
    optimizer = make_optimizer(recipe, model, torch.device("cpu"))
    stepper = FusedAdamStep(optimizer)
    calls = []
    real = optimizer.step
    monkeypatch.setattr(optimizer, "step", lambda: calls.append(1) or real())
    _train(model, optimizer, stepper, 3)
    assert calls == [1]  # the first step creates the state; the next two are lean
    stepper.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    stepper.step()  # no gradients at all: the optimizer's own step (which skips them)
    assert calls == [1, 1]


def test_sgd_and_non_fused_optimizers_are_left_to_torch():
    model = build_model("mlp", hidden=[8])
    sgd = make_optimizer(
        Recipe(name="t", description="", model="mlp", optimizer="sgd", lr=0.1), model, torch.device("cpu")
    )
    assert not FusedAdamStep(sgd).lean
    assert not FusedAdamStep(torch.optim.Adam(model.parameters(), fused=False)).lean
    assert not FusedAdamStep(torch.optim.Adam(model.parameters(), fused=True, amsgrad=True)).lean


@pytest.mark.parametrize(
    ("missing", "reason"),
    [
        ("_fused_adamw_", "torch._fused_adamw_ is missing"),
        ("_foreach_add_", "torch._foreach_add_ is missing"),
    ],
)
def test_a_pytorch_without_the_private_kernel_gets_the_optimizers_own_step(monkeypatch, missing, reason):
    # As on a PyTorch release that renamed or dropped the private kernel: the stepper must not call it.
    monkeypatch.delattr(torch, missing)
    recipe = Recipe(name="t", description="", model="mlp", model_kwargs={"hidden": [16]}, optimizer="adamw", lr=3e-3)
    torch.manual_seed(0)
    reference = build_model("mlp", hidden=[16])
    fallback = copy.deepcopy(reference)
    ref_opt = make_optimizer(recipe, reference, torch.device("cpu"))
    fallback_opt = make_optimizer(recipe, fallback, torch.device("cpu"))
    stepper = FusedAdamStep(fallback_opt)
    assert not stepper.lean and stepper.unavailable == reason
    # torch.optim's own fused step calls the same kernels: put them back, so that the fallback can run.
    monkeypatch.undo()
    assert not stepper.lean  # decided once, when the run starts
    assert _train(fallback, fallback_opt, stepper, 4) == _train(reference, ref_opt, None, 4)


def test_a_kernel_without_an_argument_the_stepper_passes_is_not_called(monkeypatch):
    from mnist_nn.training import fused_adam

    monkeypatch.setattr(fused_adam, "KERNEL_KEYWORDS", (*fused_adam.KERNEL_KEYWORDS, "capturable_lr"))
    assert fused_adam.private_kernels_missing() == "torch._fused_adam_ takes no capturable_lr"
    model = build_model("mlp", hidden=[8])
    optimizer = make_optimizer(Recipe(name="t", description="", model="mlp", lr=1e-3), model, torch.device("cpu"))
    assert not FusedAdamStep(optimizer).lean


def test_adamw_is_told_from_adam_without_the_groups_flag():
    # PyTorch before 2.6 has no "decoupled_weight_decay" in the groups: AdamW is then known by its class.
    from mnist_nn.training.fused_adam import _decoupled

    model = build_model("mlp", hidden=[8])
    adam = torch.optim.Adam(model.parameters(), fused=True)
    adamw = torch.optim.AdamW(model.parameters(), fused=True)
    for optimizer, decoupled in ((adam, False), (adamw, True)):
        group = {key: value for key, value in optimizer.param_groups[0].items() if key != "decoupled_weight_decay"}
        assert _decoupled(optimizer, group) is decoupled
        assert _decoupled(optimizer, optimizer.param_groups[0]) is decoupled
