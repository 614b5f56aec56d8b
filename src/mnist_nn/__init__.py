"""mnist-nn: train, evaluate and use handwritten-digit classifiers with PyTorch."""

import torch as _torch

from .checkpoint import load_checkpoint
from .trainer import train
from .version import __version__

# Flush denormal floats to zero from import on (see device.configure_cpu): PyTorch's CPU
# worker threads inherit this setting only if it is made before they are started.
_torch.set_flush_denormal(True)

__all__ = ["__version__", "load_checkpoint", "train"]
