"""One training step as the tutorial writes it, and the one place where its faster forms are chosen.

``TrainStep`` is the step a learner reads: forward pass, loss, backward pass, optimizer step. How it runs
is chosen once, when the run starts (``choose_step``): eagerly, followed by the EMA update (``EagerStep``),
or recorded as one CUDA graph and replayed (``cuda_graph.CapturedStep``). Its optimizer step is
``fused_adam.FusedAdamStep``, which takes a lean path where that is exact. ``measure_step_seconds`` times
this same step for ``--device auto``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from mnist_nn.training.cuda_graph import WARMUP_STEPS, CapturedStep
from mnist_nn.training.fused_adam import FusedAdamStep

if TYPE_CHECKING:
    from mnist_nn.training.ema import ModelEMA
    from mnist_nn.training.recipes import Recipe

__all__ = ["EagerStep", "TrainStep", "autocast_for", "choose_step", "mean_loss", "measure_step_seconds"]

# (logits, targets, size of the whole batch) -> the loss to minimize: ``mean_loss``, or under DDP
# ``distributed.ShardLoss``, which needs the whole batch's size to weigh this process's shard.
LossFunction = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def mean_loss(label_smoothing: float) -> LossFunction:
    """The loss of one process: cross-entropy, the mean over the batch."""
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss(logits: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
        return criterion(logits, targets)

    return loss


def autocast_for(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast for the forward pass and loss (matmuls and convolutions in bf16, reductions in fp32).

    Without autocast's cache of cast weights: these networks use each weight once per forward, so it
    saves nothing, and a CUDA graph must not capture it (PyTorch's advice for autocast under capture)."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext


def _whole_batch(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tensors


@dataclass
class TrainStep:
    """One optimizer step on one batch. ``model`` is the model as trained (wrapped by DDP or compiled: the
    same parameters); ``shard`` takes this process's part of a batch under DDP (the whole batch otherwise),
    and ``loss_scale`` multiplies the gradients there (see ``distributed.ShardLoss``; None for one process)."""

    model: nn.Module
    loss_fn: LossFunction
    optimizer: FusedAdamStep
    grad_clip: float = 0.0
    channels_last: bool = False
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    shard: Callable[..., tuple[torch.Tensor, ...]] = _whole_batch
    loss_scale: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward, loss, backward, optimizer step; returns the batch's mean loss (under DDP, this process's share)."""
        batch_size = len(targets)
        inputs, targets = self.shard(inputs, targets)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            logits = self.model(inputs)
            loss = self.loss_fn(logits, targets, batch_size)
        self.optimizer.zero_grad()
        loss.backward(self.loss_scale)
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.optimizer.parameters, self.grad_clip)
        self.optimizer.step()
        return loss


class EagerStep:
    """The step as written, then the EMA of the weights. Called as a captured step is: ``lr`` is already set."""

    def __init__(self, step: TrainStep, model: nn.Module, ema: ModelEMA | None) -> None:
        self.step = step
        self.model = model
        self.ema = ema

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, lr: float) -> torch.Tensor:
        loss = self.step(inputs, targets)
        if self.ema is not None:
            self.ema.update(self.model)
        return loss


def choose_step(
    step: TrainStep, model: nn.Module, ema: ModelEMA | None, batch_size: int, *, capture: bool
) -> EagerStep | CapturedStep:
    """How a run takes its steps, decided once: replayed as a CUDA graph (full batches; the rest eager), or eager."""
    eager = EagerStep(step, model, ema)
    if not capture:
        return eager
    return CapturedStep(eager, step.optimizer.optimizer, batch_size)


def measure_step_seconds(recipe: Recipe, device: torch.device, *, capture: bool, steps: int = 5) -> float:
    """Seconds per training step of ``recipe``'s model at its batch size on ``device``, on random digits.

    The step is the run's (``TrainStep`` with the recipe's optimizer, precision and memory format, captured
    as a graph when the run would capture it). Augmentation and evaluation are left out: they are not what
    decides between a CPU and a GPU for these networks, the per-step cost of launching small kernels is.
    The random streams are restored afterwards, so the run draws the same numbers as without it.
    """
    from mnist_nn.core.device import prepare_backend, resolve_precision
    from mnist_nn.models.networks import build_model, get_model_spec
    from mnist_nn.training.run_plan import make_optimizer

    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        prepare_backend(device)
        torch.manual_seed(recipe.seed)
        model = build_model(recipe.model, **dict(get_model_spec(recipe.model).defaults, **recipe.model_kwargs))
        model = model.to(device).train()
        if recipe.channels_last:
            model = model.to(memory_format=torch.channels_last)
        step = TrainStep(
            model,
            mean_loss(recipe.label_smoothing),
            FusedAdamStep(make_optimizer(recipe, model, device)),
            channels_last=recipe.channels_last,
            autocast=autocast_for(resolve_precision(recipe.precision, device), device),
        )
        run = choose_step(step, model, None, recipe.batch_size, capture=capture)
        inputs = torch.randn(recipe.batch_size, 1, 28, 28, device=device)
        targets = torch.randint(0, 10, (recipe.batch_size,), device=device)
        # Untimed: the warm-up (and the capture) of a graph, cuDNN's autotuning, the optimizer's state.
        for _ in range(WARMUP_STEPS + 1):
            run(inputs, targets, recipe.lr)
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            run(inputs, targets, recipe.lr)
        _synchronize(device)
        return (time.perf_counter() - start) / steps


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
