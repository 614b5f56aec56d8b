"""Pretrained models shipped inside the package: a fresh install reads digits without training first.

The files live in ``mnist_nn/pretrained/``; ``models.json`` beside them says, for each, the recipe and
seed it was trained with, its sha256, its clean MNIST test accuracy and its mean accuracy over
MNIST-C's corruptions. ``scripts/make_pretrained.py`` makes them all from our own recipes, and
tests/test_bundled.py re-checks the hashes and re-scores the accuracies.

Wherever a checkpoint is asked for (``predict``, ``serve``, ``evaluate``, ``export``, ...), a bundled
model's name does too: ``resolve_model`` turns "robust" into its file. A path that exists always wins.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mnist_nn.core.errors import UserError

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
INDEX_NAME = "models.json"
# Read real handwriting out of the box: the model trained on ink as pens, paper and cameras change it.
DEFAULT_MODEL = "robust"


@dataclass(frozen=True)
class BundledModel:
    name: str
    file: str  # inside PRETRAINED_DIR
    recipe: str
    seed: int
    sha256: str
    parameters: int
    clean_accuracy: float  # on the 10,000 MNIST test digits
    mnist_c_mean: float  # mean accuracy over MNIST-C's 15 corruptions (mnist-nn robustness)
    description: str

    @property
    def path(self) -> Path:
        return PRETRAINED_DIR / self.file


@lru_cache(maxsize=1)
def bundled_models() -> dict[str, BundledModel]:
    """The bundled models by name, in the index's order (the default first)."""
    index = PRETRAINED_DIR / INDEX_NAME
    if not index.is_file():
        return {}
    entries = json.loads(index.read_text(encoding="utf-8"))["models"]
    return {entry["name"]: BundledModel(**entry) for entry in entries}


def resolve_model(model: str | os.PathLike | None) -> Path:
    """The checkpoint file for ``model``: a path to one, a bundled model's name, or None for the default.

    A path that exists is taken as it is, and so is one that looks like a path (a suffix or a
    folder): its loader says what is wrong with it. A bare name that is neither is one line saying
    which bundled models there are.
    """
    if model is None:
        model = DEFAULT_MODEL
    path = Path(model)
    models = bundled_models()
    if path.exists() or (str(model) not in models and (path.suffix or len(path.parts) > 1)):
        return path
    if str(model) in models:
        return models[str(model)].path
    known = ", ".join(models) or "none in this install"
    raise UserError(f"{model}: no such file, and not a bundled model (bundled: {known})")


def bundled_name(checkpoint: str | os.PathLike) -> str | None:
    """The bundled model's name when ``checkpoint`` is one of the package's own files, else None."""
    path = Path(checkpoint).resolve()
    return next((name for name, model in bundled_models().items() if model.path.resolve() == path), None)


def model_name(checkpoint: str | os.PathLike | None, network: str) -> str:
    """What a user calls a model: a bundled model by its own name ("robust", what --model takes), else its network."""
    return (bundled_name(checkpoint) if checkpoint else None) or network


def model_title(checkpoint: str | os.PathLike | None, network: str) -> str:
    """A model named for people: a bundled model's name with its network beside it ("robust (cnn-best)")."""
    name = model_name(checkpoint, network)
    return name if name == network else f"{name} ({network})"


def looks_like_model(argument: str) -> bool:
    """Whether a command-line argument names a checkpoint rather than an image: a .pt/.pth file or a bundled name."""
    return Path(argument).suffix.lower() in (".pt", ".pth") or (
        argument in bundled_models() and not Path(argument).exists()
    )
