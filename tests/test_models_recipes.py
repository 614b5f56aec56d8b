from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_nn.core.errors import UserError
from mnist_nn.models.networks import build_model, count_parameters
from mnist_nn.training.recipes import Recipe, get_recipe
from mnist_nn.training.trainer import resolve_recipe


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
    known = "cnn-best, cnn-fast, cnn-speedrun, lenet5, mlp, tutorial-mlp"
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
    with pytest.raises(
        UserError,
        match="unknown recipe 'fast'; known recipes: cnn-best, cnn-fast, cnn-speedrun, mlp-best, robust, tutorial",
    ):
        get_recipe("fast")


def test_dataset_overrides_apply_to_their_dataset_before_flags():
    digits = resolve_recipe("cnn-best")
    clothes = resolve_recipe("cnn-best", dataset="fashion-mnist")
    assert digits.aug_flip == 0 and digits.aug_rotate == 10  # a mirrored digit is no digit
    assert clothes.dataset == "fashion-mnist"
    assert (
        clothes.aug_flip == 0.5
        and clothes.aug_rotate == 0
        and clothes.epochs == 20
        and clothes.model_kwargs == {"dropout": 0.1}
    )
    # A flag still wins over the dataset's override; fields the override leaves alone stay the recipe's.
    flagged = resolve_recipe("cnn-best", dataset="fashion-mnist", aug_rotate=5.0, epochs=3)
    assert (flagged.aug_rotate, flagged.epochs, flagged.aug_flip, flagged.lr) == (5.0, 3, 0.5, digits.lr)
    # A resolved recipe is final: resolving it again (as train() does) keeps the flags.
    assert flagged.dataset_overrides == {} and resolve_recipe(flagged) == flagged
    assert resolve_recipe("tutorial", dataset="fashion-mnist").replace(dataset="mnist") == get_recipe("tutorial")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fashion-mnist": {"epochs": 0}}, "epochs must be a positive integer, got 0"),
        ({"fashion-mnist": {"colour": 1}}, "dataset override for 'fashion-mnist' names unknown field"),
        ({"fashion-mnist": {"dataset": "mnist"}}, "may not change the recipe's identity"),
        ({"mnist": {"aug_flip": 1.5}}, "aug flip must be in \\[0, 1\\], got 1.5"),
    ],
)
def test_bad_dataset_overrides_are_refused(overrides, message):
    recipe = Recipe(name="x", description="x", model="cnn-fast", dataset_overrides=overrides)
    with pytest.raises(UserError, match=message):
        recipe.validate()
        recipe.for_dataset("fashion-mnist")
        recipe.for_dataset("mnist")


def test_adam_betas_default_to_pytorchs_and_older_recipes_build_the_same_optimizer():
    from mnist_nn.training.run_plan import make_optimizer

    cpu = torch.device("cpu")
    for name in ("tutorial", "mlp-best", "cnn-fast", "cnn-best", "robust"):
        recipe = get_recipe(name)
        assert (recipe.adam_beta1, recipe.adam_beta2) == (0.9, 0.999)
        model = build_model("mlp", hidden=[4])
        optimizer = make_optimizer(recipe, model, cpu)
        kind = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
        before = kind(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
        assert type(optimizer) is kind and optimizer.defaults == before.defaults
    for field in ("adam_beta1", "adam_beta2"):
        with pytest.raises(UserError, match=f"{field.replace('_', ' ')} must be in \\[0, 1\\), got 1.0"):
            get_recipe("tutorial").replace(**{field: 1.0})


def test_the_speedrun_recipe_has_the_speedrun_settings_and_a_tiny_pooled_cnn():
    from mnist_nn.training.run_plan import make_optimizer

    recipe = get_recipe("cnn-speedrun")
    assert (recipe.model, recipe.epochs, recipe.batch_size, recipe.optimizer, recipe.lr) == (
        "cnn-speedrun", 1, 256, "adam", 1e-2,
    )  # fmt: skip
    assert (recipe.schedule, recipe.warmup_epochs, recipe.precision, recipe.val_size) == ("onecycle", 0.3, "auto", 0)
    model = build_model("cnn-speedrun")
    assert count_parameters(model) == 215_194
    assert [type(m).__name__ for m in model if not isinstance(m, nn.ReLU)] == [
        "Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "Linear",
    ]  # fmt: skip
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    optimizer = make_optimizer(recipe, model, torch.device("cpu"))
    assert optimizer.defaults["betas"] == (0.7, 0.9) and optimizer.defaults["lr"] == 1e-2


def test_the_speedrun_recipe_trains_on_a_cpu(toy_dataset, tmp_path):
    import json

    from mnist_nn.training.trainer import train

    result = train("cnn-speedrun", dataset="toy", data_dir=toy_dataset, out=tmp_path / "run", device="cpu", quiet=True)
    assert result.summary["epochs"] == 1 and result.summary["test_accuracy"] > 0.5
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["adam_beta1"] == 0.7 and config["cuda_graph"] is False
