"""Named training recipes: one dataclass, defined once, used by the CLI, tests and benchmarks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    model: str
    dataset: str = "mnist"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    shuffle: bool = True
    # "unit": pixels scaled to [0, 1] (the tutorial's ToTensor); "standard": then (x - mean) / std.
    normalization: str = "standard"
    val_size: int = 5000
    seed: int = 0
    eval_batch_size: int = 10000
    log_every: int = 100

    def replace(self, **overrides: Any) -> Recipe:
        """A copy with the given fields changed; None values mean "keep the recipe's"."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
        recipe = dataclasses.replace(self, **changes)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name.replace('_', ' ')} must be a positive integer, got {value}")
        if not self.lr > 0:
            raise UserError(f"learning rate must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise UserError(f"weight decay must not be negative, got {self.weight_decay}")
        if self.val_size < 0:
            raise UserError(f"validation size must not be negative, got {self.val_size}")
        if self.normalization not in ("unit", "standard"):
            raise UserError(f"normalization must be 'unit' or 'standard', got {self.normalization!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OPTIMIZERS = ("adam", "adamw", "sgd")

RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    recipe.validate()
    RECIPES[recipe.name] = recipe
    return recipe


# The tutorial's numbers exactly: its DataLoader(batch_size=64) without shuffling,
# ToTensor's [0, 1] scaling, Adam(lr=0.0045), 25 epochs, all 60,000 images for training.
register_recipe(
    Recipe(
        name="tutorial",
        description="the tutorial: MLP, Adam lr 0.0045, batch 64, 25 epochs, no shuffling",
        model="tutorial-mlp",
        epochs=25,
        batch_size=64,
        lr=0.0045,
        optimizer="adam",
        shuffle=False,
        normalization="unit",
        val_size=0,
    )
)


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        known = ", ".join(sorted(RECIPES))
        raise UserError(f"unknown recipe {name!r}; known recipes: {known}") from None
