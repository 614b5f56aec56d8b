"""The model registry: every network by name, each built from plain keyword arguments.

A checkpoint stores (name, kwargs), so any registered model rebuilds from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mnist_nn.core.errors import UserError
from mnist_nn.core.registry import Registry


class MLP(nn.Sequential):
    """Flatten, then for each hidden width Linear [+ BatchNorm] + ReLU [+ Dropout], then a Linear to the classes.

    With the defaults it is exactly the tutorial's network (same layers, same
    order, same default PyTorch initialization, so the same weights for a seed).
    """

    def __init__(
        self,
        hidden: Sequence[int] = (128, 256, 128, 64),
        dropout: float = 0.0,
        batch_norm: bool = False,
        in_features: int = 28 * 28,
        num_classes: int = 10,
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers.append(nn.Linear(width, size, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class LeNet5(nn.Sequential):
    """LeCun et al. (1998): conv 6@5x5 (padded to keep 28x28), pool, conv 16@5x5, pool, 120, 84, 10.

    Kept classic in shape and size (61,706 parameters); ReLU and max-pooling
    replace the original's scaled tanh and trainable sub-sampling, as is usual today.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )


def conv_bn(channels_in: int, channels_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(channels_in, channels_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(),
    ]


class FastCNN(nn.Sequential):
    """Two strided convolutions (28 -> 14 -> 7) and one linear layer.

    Strides instead of pooling: on a CPU the pooling and full-resolution
    activations cost more than the arithmetic of such a small net.
    """

    def __init__(self, channels: Sequence[int] = (32, 64), hidden: int = 0, num_classes: int = 10) -> None:
        c1, c2 = channels
        head: list[nn.Module] = (
            [nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
            if hidden
            else [nn.Linear(c2 * 7 * 7, num_classes)]
        )
        super().__init__(
            *conv_bn(1, c1, 5, stride=2),
            *conv_bn(c1, c2, 3, stride=2),
            nn.Flatten(),
            *head,
        )


class StrongCNN(nn.Sequential):
    """Three stages of 3x3 conv+BN+ReLU blocks with max-pooling between them, dropout, one linear layer."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), dropout: float = 0.3, num_classes: int = 10) -> None:
        c1, c2, c3 = channels
        super().__init__(
            *conv_bn(1, c1, 3),
            *conv_bn(c1, c1, 3),
            nn.MaxPool2d(2),
            *conv_bn(c1, c2, 3),
            *conv_bn(c2, c2, 3),
            nn.MaxPool2d(2),
            *conv_bn(c2, c3, 3),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c3 * 3 * 3, num_classes),
        )


class SpeedrunCNN(nn.Sequential):
    """Two unpadded convolutions, each max-pooled then ReLU'd (28 -> 24 -> 12 -> 10 -> 5), and a two-layer head.

    The shape of tuomaso/train_mnist_fast's network (5x5 then 3x3 kernels, 24 and 32 channels, 256
    hidden): on a GPU its cost is the number of kernels, not their size, so it is few layers, wide
    enough to reach 99% in one epoch, without batch norm (a few kernels less per step).
    """

    def __init__(self, channels: Sequence[int] = (24, 32), hidden: int = 256, num_classes: int = 10) -> None:
        c1, c2 = channels
        super().__init__(
            nn.Conv2d(1, c1, 5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * 5 * 5, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[..., nn.Module]
    defaults: dict[str, Any] = field(default_factory=dict)


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(spec: ModelSpec) -> ModelSpec:
    return MODELS.add(spec.name, spec)


register_model(
    ModelSpec(
        name="tutorial-mlp",
        description="the tutorial's MLP: 784-128-256-128-64-10 with ReLU",
        build=MLP,
        defaults={"hidden": [128, 256, 128, 64]},
    )
)
register_model(
    ModelSpec(
        name="mlp",
        description="MLP with configurable widths, batch norm and dropout (default 784-1024-1024-10)",
        build=MLP,
        defaults={"hidden": [1024, 1024], "dropout": 0.2, "batch_norm": True},
    )
)
register_model(
    ModelSpec(name="lenet5", description="LeNet-5, the classic CNN (LeCun et al. 1998), with ReLU", build=LeNet5)
)
register_model(
    ModelSpec(
        name="cnn-fast",
        description="small fast CNN: two strided conv+BN+ReLU layers (32, 64 channels) and a linear layer",
        build=FastCNN,
        defaults={"channels": [32, 64]},
    )
)
register_model(
    ModelSpec(
        name="cnn-speedrun",
        description="tiny GPU speed-run CNN: conv 5x5 (24) and 3x3 (32), each max-pooled, then 256 hidden units",
        build=SpeedrunCNN,
        defaults={"channels": [24, 32], "hidden": 256},
    )
)
register_model(
    ModelSpec(
        name="cnn-best",
        description="stronger CNN: five 3x3 conv+BN+ReLU blocks (32-32, 64-64, 128) in three pooled stages, dropout",
        build=StrongCNN,
        defaults={"channels": [32, 64, 128], "dropout": 0.3},
    )
)


def get_model_spec(name: str) -> ModelSpec:
    return MODELS.lookup(name)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    spec = get_model_spec(name)
    try:
        return spec.build(**{**spec.defaults, **kwargs})
    except (TypeError, ValueError) as exc:
        raise UserError(f"model {name!r} cannot be built with {kwargs}: {exc}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- synchronized batch norm


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with a gradient: the gradient of every rank's loss flows back to each rank's input."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch, on any device.

    PyTorch's ``nn.SyncBatchNorm`` runs only on GPUs; this one all-reduces each channel's count, sum
    and sum of squares (one all-reduce per layer per step, differentiable: ``_SumOverRanks``) and
    normalizes with them, so an N-process run normalizes as a one-process run with the same global
    batch (up to rounding: the variance is E[x^2] - E[x]^2 here, two passes in batch norm). Its state
    dict is batch norm's: checkpoints load into the plain model.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        count = torch.full((1,), input.numel() // max(1, input.shape[1]), dtype=input.dtype, device=input.device)
        local = torch.cat([input.sum(dims), (input * input).sum(dims), count])
        channels = input.shape[1]
        total = _SumOverRanks.apply(local)
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(unbiased.detach(), factor)
        shape = [1, channels] + [1] * (input.dim() - 2)
        output = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every batch-norm layer synchronized across processes: PyTorch's fused SyncBatchNorm on CUDA,
    ``CPUSyncBatchNorm`` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        synced = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        anchor = next(iter(module.state_dict().values()), None)
        if anchor is not None:
            synced = synced.to(anchor.device)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module
