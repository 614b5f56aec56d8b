"""mnist-nn: train, evaluate and use handwritten-digit classifiers with PyTorch.

    mnist_nn.train(recipe, **overrides)        train a recipe; see mnist_nn.training.trainer.train
    mnist_nn.load_checkpoint(path)             a trained model and its metadata
    mnist_nn.predict(images[, checkpoint])     read digits in image files, PIL images or arrays
    mnist_nn.Predictor.from_checkpoint(path)   the class behind predict, export and serve

The rooms below the root: ``core`` (errors, files, devices, figures), ``data``, ``models``,
``training``, ``inference``, ``lab`` and ``apps`` (serve, watch); docs/ARCHITECTURE.md draws them.

Importing the package does not import torch (about 1.5 s): the public names load on first use,
so that `mnist-nn --help` and the other commands that need no model answer at once.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from mnist_nn.core.version import __version__

if TYPE_CHECKING:
    from mnist_nn.api import predict
    from mnist_nn.inference.predictor import Predictor
    from mnist_nn.models.checkpoint import load_checkpoint
    from mnist_nn.training.trainer import train

# Public name -> the module that defines it, imported on first use (module __getattr__, PEP 562).
_LAZY = {
    "train": "mnist_nn.training.trainer",
    "load_checkpoint": "mnist_nn.models.checkpoint",
    "predict": "mnist_nn.api",
    "Predictor": "mnist_nn.inference.predictor",
}

__all__ = ["Predictor", "__version__", "load_checkpoint", "predict", "train"]


def _flush_denormals() -> None:
    """Flush denormal floats to zero (see core.device.configure_cpu), once torch is loaded anyway.

    PyTorch's worker threads inherit the setting only if it is made before they start (the first
    parallel op): so it is made when this package is imported after torch, when a public name
    first loads torch, and again when training starts (configure_cpu), before any op of its own.
    """
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_flush_denormal"):
        torch.set_flush_denormal(True)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    _flush_denormals()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


_flush_denormals()
