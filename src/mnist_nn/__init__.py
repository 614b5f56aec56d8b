"""mnist-nn: train, evaluate and use handwritten-digit classifiers with PyTorch."""

__version__ = "0.1.0"

from .checkpoint import load_checkpoint
from .trainer import train

__all__ = ["__version__", "load_checkpoint", "train"]
