"""The model registry: every network by name, each built from plain keyword arguments.

A checkpoint stores (name, kwargs), so any registered model rebuilds from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .errors import UserError


class MLP(nn.Sequential):
    """Flatten, then Linear+ReLU for each hidden width, then a Linear to the classes.

    With the defaults it is exactly the tutorial's network (same layers, same
    order, same default PyTorch initialization).
    """

    def __init__(
        self,
        hidden: Sequence[int] = (128, 256, 128, 64),
        in_features: int = 28 * 28,
        num_classes: int = 10,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    MODELS[spec.name] = spec
    return spec


register_model(
    ModelSpec(
        name="tutorial-mlp",
        description="the tutorial's MLP: 784-128-256-128-64-10 with ReLU",
        build=MLP,
        defaults={"hidden": [128, 256, 128, 64]},
    )
)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise UserError(f"unknown model {name!r}; known models: {known}") from None


def build_model(name: str, **kwargs: Any) -> nn.Module:
    spec = get_model_spec(name)
    return spec.build(**{**spec.defaults, **kwargs})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
