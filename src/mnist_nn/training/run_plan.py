"""From a recipe and the run options to what the training loop needs.

The run directory (new, or the one being resumed), the data on the device, the optimizer
and the run's recorded configuration. Each is decided once, before the first step.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_nn.core.errors import UserError, option
from mnist_nn.core.fsutil import ensure_writable_dir
from mnist_nn.core.version import __version__
from mnist_nn.data.datasets import Splits, load_dataset, normalize, split_indices
from mnist_nn.models.checkpoint import TrainState
from mnist_nn.models.networks import get_model_spec
from mnist_nn.training.distributed import Context, check_batch_size
from mnist_nn.training.recipe_files import lookup_recipe
from mnist_nn.training.recipes import Recipe
from mnist_nn.training.report import summary_writer_class
from mnist_nn.training.resume import STATE_NAME, check_disk_space, open_resume, saved_recipe


def resolve_recipe(recipe: str | Recipe, **overrides: Any) -> Recipe:
    """The recipe (a name, a recipe file or a Recipe) for its dataset, overrides applied; $MNIST_NN_MAX_EPOCHS
    caps its epochs (quick tries, docs tests)."""
    base = lookup_recipe(recipe)
    resolved = base.for_dataset(overrides.get("dataset") or base.dataset).replace(**overrides)
    cap = os.environ.get("MNIST_NN_MAX_EPOCHS", "").strip()
    if cap:
        if not cap.isdigit() or int(cap) < 1:
            raise UserError(f"MNIST_NN_MAX_EPOCHS must be a positive integer, got {cap!r}")
        resolved = resolved.replace(epochs=min(resolved.epochs, int(cap)))
    return resolved


def default_run_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path("runs") / f"{stamp}-{suffix}"
    return path


def check_output_dir(path: Path) -> None:
    """Refuse a folder that already holds files: a run never overwrites another run's results."""
    if path.exists() and not path.is_dir():
        raise UserError(f"output folder {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"output folder {path} already exists and is not empty; choose another {option('out')}")


@dataclass
class RunPlan:
    """What a run is: its folder, its resolved recipe, its saved state when resumed, and the options
    that a resumed run takes from its state rather than from the command line."""

    run_dir: Path
    recipe: Recipe
    saved: TrainState | None
    checkpoint_every: int
    deterministic: bool
    sync_bn: bool
    # The run's folder did not exist before: a run that fails before writing into it removes it again.
    new_dir: bool = False

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_NAME


def plan_run(
    recipe: str | Recipe | None,
    overrides: dict[str, Any],
    *,
    out: str | os.PathLike | None,
    resume: str | os.PathLike | None,
    checkpoint_every: int | None,
    deterministic: bool | None,
    sync_bn: bool | None,
    tensorboard: bool,
    world_size: int,
) -> RunPlan:
    """Decide the run (rank 0 alone decides: the default folder name holds a timestamp)."""
    saved = None
    if resume is not None:
        run_dir, saved = open_resume(resume, recipe, out, overrides)
        resolved = saved_recipe(run_dir / STATE_NAME, saved.recipe)
        options = saved.options
        checkpoint_every = options.get("checkpoint_every", 0) if checkpoint_every is None else checkpoint_every
        deterministic = options.get("deterministic", False) if deterministic is None else deterministic
        if sync_bn is not None and sync_bn != options.get("sync_bn", False):
            raise UserError(
                f"{option('resume')} continues {run_dir} with its saved options; {option('sync_bn')} would change "
                f"it (drop it, or start a new run with {option('out')})"
            )
        sync_bn = options.get("sync_bn", False)
    else:
        resolved = resolve_recipe("tutorial" if recipe is None else recipe, **overrides)
        run_dir = Path(out) if out is not None else default_run_dir()
        check_output_dir(run_dir)
    new_dir = saved is None and not run_dir.exists()
    checkpoint_every = checkpoint_every or 0
    if not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise UserError(f"checkpoint every must be a positive number of steps (or 0: off), got {checkpoint_every}")
    check_batch_size(resolved.batch_size, world_size)
    get_model_spec(resolved.model)
    if tensorboard:
        summary_writer_class()
    return RunPlan(run_dir, resolved, saved, checkpoint_every, bool(deterministic), bool(sync_bn), new_dir)


def discard_unstarted(plan: RunPlan) -> None:
    """After a run failed: its folder, when the run created it and wrote nothing into it, is removed."""
    if plan.new_dir:
        with contextlib.suppress(OSError):  # not empty (the run had started), or already gone
            plan.run_dir.rmdir()


def check_run_dir(run_dir: Path, model: nn.Module, recipe: Recipe, train_size: int, world_size: int) -> None:
    """Before the first step: room for the checkpoints, a writable folder, a last batch every process can share."""
    check_disk_space(run_dir, model, recipe, bool(recipe.ema_decay))
    ensure_writable_dir(run_dir)
    tail = train_size % recipe.batch_size
    if 0 < tail < world_size:
        raise UserError(
            f"the last batch of each epoch holds {tail} image(s), fewer than the {world_size} processes "
            f"that share it; choose another {option('batch_size')}"
        )


@dataclass
class RunData:
    """The dataset's splits, normalized once, on the training device."""

    splits: Splits
    mean: float
    std: float
    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_split: str  # "val", or "test" when the recipe holds nothing out
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_run_data(
    recipe: Recipe, data_dir: Any, saved: TrainState | None, run_dir: Path, device: torch.device
) -> RunData:
    """Read and verify the data (a resumed run: the files it was trained on) and put it on ``device``."""
    recorded = saved.config["data"] if saved is not None else None
    if recorded is not None and data_dir is None and Path(recorded["folder"]).is_dir():
        data_dir = recorded["folder"]
    splits = load_dataset(recipe.dataset, data_dir)
    spec = splits.spec
    if recorded is not None and splits.checksums != recorded["md5"]:
        raise UserError(
            f"the {spec.name} files in {splits.folder} differ from those run {run_dir} was trained on "
            f"(their MD5s do not match); pass {option('data_dir')} with the original files"
        )
    mean, std = (spec.mean, spec.std) if recipe.normalization == "standard" else (0.0, 1.0)
    train_index, val_index = split_indices(len(splits.train_labels), recipe.val_size, recipe.seed)
    train_x = normalize(splits.train_images[train_index], mean, std, device)
    train_y = splits.train_labels[train_index].to(device)
    test_x = normalize(splits.test_images, mean, std, device)
    test_y = splits.test_labels.to(device)
    if recipe.val_size:
        eval_split = "val"
        eval_x = normalize(splits.train_images[val_index], mean, std, device)
        eval_y = splits.train_labels[val_index].to(device)
    else:
        # No hold-out (the tutorial trains on all 60,000): the per-epoch curve reports the
        # test set, as the tutorial did; nothing is chosen from it.
        eval_split = "test"
        eval_x = test_x
        eval_y = test_y
    return RunData(splits, mean, std, train_x, train_y, eval_split, eval_x, eval_y, test_x, test_y)


def make_optimizer(recipe: Recipe, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernels update every parameter in one call instead of one small op per tensor.
    fused = device.type in ("cpu", "cuda")
    params = model.parameters()
    betas = (recipe.adam_beta1, recipe.adam_beta2)  # the defaults are PyTorch's: older recipes are unchanged
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, betas=betas, weight_decay=recipe.weight_decay, fused=fused)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, betas=betas, weight_decay=recipe.weight_decay, fused=fused)
    if recipe.optimizer == "rmsprop":
        # PyTorch's defaults (alpha 0.99, no momentum: the recipe's momentum is SGD's); no fused kernel exists.
        return torch.optim.RMSprop(params, lr=recipe.lr, weight_decay=recipe.weight_decay, foreach=True)
    return torch.optim.SGD(
        params,
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0,
        weight_decay=recipe.weight_decay,
        fused=fused,
    )


def library_versions() -> dict[str, str]:
    """The versions config.json records. torchvision's is read from its installed metadata, not by importing
    it: a torchvision built for another torch fails on import, and a training run does not need it."""
    try:
        torchvision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        torchvision = "not installed"
    # Plain strings: torch.__version__ is a str subclass that weights-only loading of state.pt would refuse.
    return {
        "mnist_nn": __version__,
        "torch": str(torch.__version__),
        "torchvision": torchvision,
        "python": platform.python_version(),
    }


def run_config(
    plan: RunPlan,
    data: RunData,
    model_kwargs: dict[str, Any],
    parameters: int,
    context: Context,
    device: torch.device,
    threads: int,
    precision: str,
) -> dict[str, Any]:
    """config.json: everything that decided the run, so that two runs can be compared by reading files."""
    recipe = plan.recipe
    config = {
        "recipe": recipe.to_dict(),
        "model_kwargs": model_kwargs,
        "parameters": parameters,
        "data": {
            "dataset": data.splits.spec.name,
            "folder": str(data.splits.folder),
            "found_by": data.splits.source,
            "md5": data.splits.checksums,
            "train_size": len(data.train_y),
            "val_size": len(data.eval_y) if data.eval_split == "val" else 0,
            "test_size": len(data.test_y),
            "normalization": {"mean": data.mean, "std": data.std},
        },
        "device": str(device),
        "threads": threads,
        "precision": precision,
        "versions": library_versions(),
        "command": sys.argv if sys.argv and sys.argv[0] else None,
        "checkpoint_every": plan.checkpoint_every,
        "deterministic": plan.deterministic,
    }
    if context.enabled:
        config["distributed"] = {
            "world_size": context.world_size,
            "backend": context.backend,
            "sync_bn": plan.sync_bn,
            "global_batch_size": recipe.batch_size,
            "per_process_batch_size": recipe.batch_size // context.world_size,
        }
    return config
