from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_nn.errors import UserError
from mnist_nn.models import build_model, count_parameters
from mnist_nn.recipes import get_recipe


def test_tutorial_mlp_is_the_tutorials_network():
    model = build_model("tutorial-mlp")
    assert count_parameters(model) == 175_306
    layers = list(model)
    assert isinstance(layers[0], nn.Flatten)
    linears = [(m.in_features, m.out_features) for m in layers if isinstance(m, nn.Linear)]
    assert linears == [(784, 128), (128, 256), (256, 128), (128, 64), (64, 10)]
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["Flatten"] + ["Linear", "ReLU"] * 4 + ["Linear"]
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_unknown_model():
    known = "cnn-best, cnn-fast, lenet5, mlp, tutorial-mlp"
    with pytest.raises(UserError, match=f"unknown model 'resnet'; known models: {known}"):
        build_model("resnet")


def test_tutorial_recipe_has_the_tutorials_numbers():
    recipe = get_recipe("tutorial")
    assert recipe.model == "tutorial-mlp" and recipe.dataset == "mnist"
    assert recipe.optimizer == "adam" and recipe.lr == 0.0045
    assert recipe.batch_size == 64 and recipe.epochs == 25
    assert recipe.shuffle is False
    assert recipe.normalization == "unit"  # ToTensor's [0, 1] scaling, no mean/std
    assert recipe.val_size == 0  # trains on all 60,000 images
    assert recipe.log_every == 100


def test_overrides_and_their_validation():
    recipe = get_recipe("tutorial").replace(epochs=2, lr=0.01, batch_size=128, shuffle=True, seed=None)
    assert (recipe.epochs, recipe.lr, recipe.batch_size, recipe.shuffle) == (2, 0.01, 128, True)
    assert get_recipe("tutorial").epochs == 25  # the registered recipe is untouched
    for field, value, message in [
        ("epochs", 0, "epochs must be a positive integer, got 0"),
        ("epochs", -3, "epochs must be a positive integer, got -3"),
        ("batch_size", 0, "batch size must be a positive integer, got 0"),
        ("batch_size", -64, "batch size must be a positive integer, got -64"),
        ("lr", 0.0, "learning rate must be positive"),
        ("val_size", -1, "val size must not be negative, got -1"),
        ("label_smoothing", 1.0, "label smoothing must be in \\[0, 1\\)"),
        ("schedule", "linear", "unknown schedule .linear."),
        ("optimizer", "lbfgs", "unknown optimizer .lbfgs."),
    ]:
        with pytest.raises(UserError, match=message):
            get_recipe("tutorial").replace(**{field: value})


def test_unknown_recipe():
    with pytest.raises(UserError, match="unknown recipe 'fast'; known recipes: cnn-best, cnn-fast, mlp-best, tutorial"):
        get_recipe("fast")
