"""The learning-rate range test (Smith 2015, "Cyclical Learning Rates for Training Neural Networks"), as
fastai's ``lr_find`` and Lightning's ``Tuner.lr_find`` run it.

Train a fresh copy of the recipe's model for a few hundred steps while the learning rate grows
exponentially, from far too small to far too large. At first the loss hardly moves; then it falls,
faster and faster; past some rate it turns and explodes. A good learning rate sits where the loss
falls fastest, before the explosion.

The steps are the trainer's own (``Trainer.train_step``): the recipe's model, data, augmentation,
optimizer and precision; only its learning-rate schedule is replaced by the sweep. Only training
images are used: the held-out and test images are released before the first step.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_nn.core.errors import UserError, option

if TYPE_CHECKING:
    import torch

    from mnist_nn.training.trainer import Trainer

# The losses' exponential moving average. fastai and Lightning use 0.98, an average over ~50 steps: on a
# sweep of 200 steps over 8 decades that lags the curve by two decades of learning rate, so that its
# minimum lands where the loss already explodes. 0.9 averages ~10 steps (a third of a decade).
SMOOTHING = 0.9
DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this many times its best
# A sweep whose smoothed loss never fell below this fraction of its first value found no learning rate
# that trains: the range lies too low (or the recipe cannot learn).
FELL = 0.9


def check_range(start: float, end: float, steps: int) -> None:
    """The sweep's settings, or a one-line error naming the option."""
    for name, value in (("start", start), ("end", end)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UserError(f"{option(name)} must be a positive learning rate, got {value}")
    if start >= end:
        raise UserError(
            f"the learning-rate range is backwards: {option('start')} {start:g} must be below {option('end')} {end:g}"
        )
    if not isinstance(steps, int) or steps < 10:
        raise UserError(f"{option('steps')} must be at least 10, got {steps}")


def sweep_lrs(start: float, end: float, steps: int) -> np.ndarray:
    """``steps`` learning rates growing exponentially from ``start`` to ``end`` (both included)."""
    return start * (end / start) ** (np.arange(steps) / (steps - 1))


def smooth(losses: Sequence[float], beta: float = SMOOTHING) -> list[float]:
    """The exponential moving average of the losses, bias-corrected (so the first values are not pulled to 0)."""
    average, smoothed = 0.0, []
    for step, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta**step))
    return smoothed


def suggest(lrs: Sequence[float], smoothed: Sequence[float]) -> float:
    """A tenth of the learning rate at which the smoothed loss was lowest (fastai's ``lr_min`` rule).

    At the minimum the network learns fastest that the sweep saw, but at the edge of divergence: a run
    at a constant rate must stay stable for thousands of steps, so it takes a tenth. The alternative,
    the steepest descent of the curve (Lightning's suggestion), moves with the sweep's length: on the
    tutorial it was 0.0017 with 200 steps and 0.012 with 100, against 0.0018 for this rule in both.
    """
    return float(lrs[int(np.argmin(smoothed))]) / 10


@dataclass
class LRFind:
    """A finished sweep: each step's learning rate and loss, the smoothed loss, why it stopped, the suggestion."""

    recipe: str
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    steps: int  # planned
    diverged: bool
    suggestion: float
    figure: Path

    @property
    def lowest(self) -> int:
        """The step with the lowest smoothed loss."""
        return int(np.argmin(self.smoothed))

    @property
    def fell(self) -> bool:
        """Whether the smoothed loss fell clearly below where it started."""
        return self.smoothed[self.lowest] < FELL * self.smoothed[0]


def _batches(trainer: Trainer) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches, epoch after epoch, in the order training would see them."""
    for epoch in itertools.count(1):
        yield from trainer.loader.epoch(epoch)


def run_sweep(trainer: Trainer, lrs: Sequence[float]) -> tuple[list[float], list[float], bool]:
    """One ``train_step`` per learning rate; stop when the smoothed loss passes ``DIVERGENCE`` times its best
    or is not a number. Returns (losses, smoothed losses, diverged)."""
    losses: list[float] = []
    smoothed: list[float] = []
    average, best = 0.0, math.inf
    # strict=False: the batches never end (epoch after epoch); the learning rates do.
    for step, (lr, (inputs, targets)) in enumerate(zip(lrs, _batches(trainer), strict=False), start=1):
        for group in trainer.optimizer.param_groups:
            group["lr"] = float(lr)
        loss = trainer.train_step(inputs, targets).item()
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        value = average / (1 - SMOOTHING**step)
        if not math.isfinite(value):
            return losses, smoothed, True
        losses.append(loss)
        smoothed.append(value)
        best = min(best, value)
        if value > DIVERGENCE * best:
            return losses, smoothed, True
    return losses, smoothed, False


def make_trainer(
    recipe: str, data_dir: str | os.PathLike | None, device: str, run_dir: Path, overrides: dict[str, Any] | None = None
) -> Trainer:
    """A Trainer for the recipe (``overrides``: recipe fields to change), in a throwaway run directory, with
    the sweep in place of its schedule."""
    from mnist_nn.training.trainer import RunOptions, single_process_trainer

    # A constant schedule without warm-up leaves the learning rate to the sweep; the weights' average
    # (EMA) is only evaluated, never trained on, so it is left out.
    overrides = {**(overrides or {}), "schedule": "constant", "warmup_epochs": 0.0, "ema_decay": 0.0}
    options = RunOptions(data_dir=data_dir, out=run_dir, device=device, quiet=True, progress=False)
    trainer = single_process_trainer(recipe, options, **overrides)
    # The sweep never scores: release the held-out and test images, so that no step can see them.
    data = trainer.data
    empty_x, empty_y = data.train_x[:0], data.train_y[:0]
    trainer.data = dataclasses.replace(data, eval_x=empty_x, eval_y=empty_y, test_x=empty_x, test_y=empty_y)
    trainer.model.train()
    return trainer


def default_figure(recipe: str) -> Path:
    """runs/lr-find-RECIPE-TIME.png: where the runs go, and a later sweep never overwrites an earlier one."""
    from mnist_nn.training.recipe_files import is_recipe_file

    name = Path(recipe).stem if is_recipe_file(recipe) else recipe
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, suffix = Path("runs") / f"lr-find-{name}-{stamp}.png", 1
    while path.exists():
        suffix += 1
        path = Path("runs") / f"lr-find-{name}-{stamp}-{suffix}.png"
    return path


def lr_find(
    recipe: str = "tutorial",
    *,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 200,
    out: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    **overrides: Any,
) -> LRFind:
    """Run the range test on a fresh model of ``recipe`` (``overrides``: recipe fields to change, e.g.
    ``batch_size=128``); write the loss-against-lr PNG (default: ``default_figure``); return the sweep."""
    from mnist_nn.core import plots
    from mnist_nn.core.fsutil import png_destination

    check_range(start, end, steps)
    figure = png_destination(default_figure(recipe), default=True) if out is None else png_destination(out)
    lrs = sweep_lrs(start, end, steps)
    with tempfile.TemporaryDirectory(prefix="mnist-nn-lr-find-") as scratch:
        trainer = make_trainer(recipe, data_dir, device, Path(scratch) / "run", overrides)
        losses, smoothed, diverged = run_sweep(trainer, lrs)
    if len(smoothed) < 10:
        raise UserError(
            f"the loss diverged within {len(smoothed) + 1} steps, at learning rate {lrs[len(smoothed)]:.2g}; "
            f"start the sweep lower ({option('start')})"
        )
    tried = lrs[: len(smoothed)].tolist()
    result = LRFind(recipe, tried, losses, smoothed, steps, diverged, suggest(tried, smoothed), figure)
    plots.save_figure(sweep_figure(result), figure)
    return result


def sweep_figure(result: LRFind) -> Any:
    """Loss against learning rate (log scale): each step's loss, the smoothed curve, its minimum and the
    suggestion marked."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(result.lrs, result.losses, color="tab:blue", alpha=0.25, linewidth=1, label="loss of each step")
    axes.plot(result.lrs, result.smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    lowest = result.lowest
    axes.plot(
        [result.lrs[lowest]],
        [result.smoothed[lowest]],
        "v",
        color="black",
        markersize=8,
        label=f"lowest smoothed loss, at {result.lrs[lowest]:.2g}",
    )
    near = int(np.argmin(np.abs(np.log(result.lrs) - math.log(result.suggestion))))
    axes.axvline(result.suggestion, color="tab:red", linestyle="--", linewidth=1)
    axes.plot(
        [result.suggestion],
        [result.smoothed[near]],
        "o",
        color="tab:red",
        markersize=8,
        label=f"suggested: {result.suggestion:.2g} (a tenth of it)",
    )
    # Most of the curve lies below its start; the explosion at the end would squash it.
    top = max(result.smoothed[:10])
    low = min(min(result.smoothed), min(result.losses))
    axes.set_ylim(low - 0.05 * (top - low), top + 0.25 * (top - low))
    axes.set_xscale("log")
    ending = "the loss exploded" if result.diverged else "the end of the range"
    axes.set(
        xlabel="learning rate (log scale)",
        ylabel="training loss",
        title=f"Learning-rate range test: {result.recipe}, {len(result.lrs)} steps (until {ending})",
    )
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8, loc="lower left")
    return figure


def format_result(result: LRFind) -> str:
    """What ``mnist-nn lr-find`` prints: how the sweep went, the suggestion as a command, and a warning where the
    range did not show the loss falling or turning."""
    lr = f"{result.suggestion:.2g}"
    ending = (
        f"stopped after {len(result.lrs)} of {result.steps} steps, at learning rate {result.lrs[-1]:.2g}: "
        "the loss exploded"
        if result.diverged
        else f"{result.steps} steps, up to learning rate {result.lrs[-1]:.2g}"
    )
    lines = [
        f"lr-find on {result.recipe}: {ending}",
        f"lowest smoothed loss {result.smoothed[result.lowest]:.4f} (from {result.smoothed[0]:.4f}), "
        f"at learning rate {result.lrs[result.lowest]:.2g}",
    ]
    if not result.fell:
        lines.append("warning: the loss hardly fell; the range may lie too low (try a larger --end)")
    elif result.lowest == len(result.lrs) - 1 and not result.diverged:
        lines.append("note: the loss was still falling at the end of the range (try a larger --end)")
    lines += [
        f"suggested learning rate: {lr}  (mnist-nn train --recipe {result.recipe} --lr {lr})",
        f"plot: {result.figure}",
    ]
    return "\n".join(lines)
