"""mnist-nn: train, evaluate and use handwritten-digit classifiers with PyTorch.

    mnist_nn.train(recipe, **overrides)        train a recipe; see trainer.train
    mnist_nn.load_checkpoint(path)             a trained model and its metadata
    mnist_nn.predict(images[, checkpoint])     read digits in image files, PIL images or arrays
    mnist_nn.Predictor.from_checkpoint(path)   the class behind predict, export and serve

Importing the package does not import torch (about 1.5 s): the public names load on first use,
so that `mnist-nn --help` and the other commands that need no model answer at once.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .api import predict
    from .checkpoint import load_checkpoint
    from .predict import Predictor
    from .trainer import train

# Public name -> the module that defines it, imported on first use (module __getattr__, PEP 562).
_LAZY = {"train": "trainer", "load_checkpoint": "checkpoint", "Predictor": "predict"}

__all__ = ["Predictor", "__version__", "load_checkpoint", "predict", "train"]


def _flush_denormals() -> None:
    """Flush denormal floats to zero (see device.configure_cpu), once torch is loaded anyway.

    PyTorch's worker threads inherit the setting only if it is made before they start (the first
    parallel op): so it is made when this package is imported after torch, when a public name
    first loads torch, and again when training starts (configure_cpu), before any op of its own.
    """
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_flush_denormal"):
        torch.set_flush_denormal(True)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        # A submodule: `mnist_nn.trainer` after a bare `import mnist_nn` (as when the package imported
        # it eagerly), and `mnist_nn.predict`, which importing turns into the callable module below.
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    _flush_denormals()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _CallableModule(types.ModuleType):
    """The module mnist_nn.predict, callable as the function mnist_nn.predict (api.predict)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Read digits in images: see ``mnist_nn.api.predict``."""
        from .api import predict

        return predict(*args, **kwargs)


class _Package(types.ModuleType):
    """This package, so that ``mnist_nn.predict`` is always the function of api.py, whatever was imported first.

    Importing a submodule sets it as an attribute of its package: importing predict.py (the
    Predictor's module) makes ``mnist_nn.predict`` that module, hiding the function of the same
    name. Instead of renaming either, the module is made callable as the function: then
    ``mnist_nn.predict(images, checkpoint)`` works, and so do ``mnist_nn.predict.Predictor`` and
    ``from mnist_nn.predict import Predictor``, in any order.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "predict" and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
_flush_denormals()
