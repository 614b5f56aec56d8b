"""The training loop and the run directory it writes.

One function, ``train``, serves the CLI and the Python API: resolve the recipe,
load the data onto the device once, train, evaluate, write the run directory.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from . import plots
from .augment import augment_batch
from .checkpoint import save_checkpoint
from .data import DeviceLoader, load_dataset, normalize, split_indices
from .device import configure_cpu, prepare_backend, resolve_device
from .ema import ModelEMA
from .errors import UserError
from .evaluate import evaluate
from .fsutil import ensure_writable_dir, write_json
from .models import build_model, count_parameters, get_model_spec
from .recipes import Recipe, get_recipe
from .schedules import lr_factor
from .version import __version__

CHECKPOINT_NAME = "model.pt"
LAST_CHECKPOINT_NAME = "last.pt"


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    model: nn.Module


def resolve_recipe(recipe: str | Recipe, **overrides: Any) -> Recipe:
    base = get_recipe(recipe) if isinstance(recipe, str) else recipe
    return base.replace(**overrides)


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
        raise UserError(f"output folder {path} already exists and is not empty; choose another --out")


def make_optimizer(recipe: Recipe, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernels update every parameter in one call instead of one small op per tensor.
    fused = device.type in ("cpu", "cuda")
    params = model.parameters()
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=fused)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=fused)
    return torch.optim.SGD(
        params,
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0,
        weight_decay=recipe.weight_decay,
        fused=fused,
    )


def library_versions() -> dict[str, str]:
    import torchvision

    return {
        "mnist_nn": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def train(
    recipe: str | Recipe = "tutorial",
    *,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    quiet: bool = False,
    progress: bool | None = None,
    show: bool = False,
    tensorboard: bool = False,
    **overrides: Any,
) -> RunResult:
    """Train a recipe (by name or a Recipe) with optional field overrides; write and return the run.

    ``progress`` None shows a progress bar only on a terminal; ``quiet`` prints only the result.
    With a validation split, the epoch with the best validation accuracy is the one kept as
    ``model.pt`` (the final weights go to ``last.pt``); the test set is scored once, at the end.
    """
    wall_start = time.perf_counter()
    threads = configure_cpu()
    recipe = resolve_recipe(recipe, **overrides)
    model_spec = get_model_spec(recipe.model)
    run_dir = Path(out) if out is not None else default_run_dir()
    check_output_dir(run_dir)
    torch_device = resolve_device(device)
    prepare_backend(torch_device)
    board_class = _summary_writer_class() if tensorboard else None

    splits = load_dataset(recipe.dataset, data_dir)
    spec = splits.spec
    mean, std = (spec.mean, spec.std) if recipe.normalization == "standard" else (0.0, 1.0)
    train_index, val_index = split_indices(len(splits.train_labels), recipe.val_size, recipe.seed)
    train_x = normalize(splits.train_images[train_index], mean, std, torch_device)
    train_y = splits.train_labels[train_index].to(torch_device)
    test_x = normalize(splits.test_images, mean, std, torch_device)
    test_y = splits.test_labels.to(torch_device)
    if recipe.val_size:
        eval_split = "val"
        eval_x = normalize(splits.train_images[val_index], mean, std, torch_device)
        eval_y = splits.train_labels[val_index].to(torch_device)
    else:
        # No hold-out (the tutorial trains on all 60,000): the per-epoch curve reports the
        # test set, as the tutorial did; nothing is chosen from it.
        eval_split, eval_x, eval_y = "test", test_x, test_y

    torch.manual_seed(recipe.seed)
    model_kwargs = dict(model_spec.defaults, **recipe.model_kwargs)
    model = build_model(recipe.model, **model_kwargs).to(torch_device)
    ensure_writable_dir(run_dir)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    parameters = count_parameters(model)
    optimizer = make_optimizer(recipe, model, torch_device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    loader = DeviceLoader(train_x, train_y, recipe.batch_size, shuffle=recipe.shuffle, seed=recipe.seed)
    augmentation = recipe.augmentation()
    augment_generator = torch.Generator(device=torch_device).manual_seed(recipe.seed)
    ema = ModelEMA(model, recipe.ema_decay) if recipe.ema_decay else None
    # What is evaluated and saved: the EMA of the weights when enabled, else the weights.
    eval_model = ema.module if ema is not None else model

    config = {
        "recipe": recipe.to_dict(),
        "model_kwargs": model_kwargs,
        "parameters": parameters,
        "data": {
            "dataset": spec.name,
            "folder": str(splits.folder),
            "found_by": splits.source,
            "md5": splits.checksums,
            "train_size": len(train_y),
            "val_size": len(val_index),
            "test_size": len(test_y),
            "normalization": {"mean": mean, "std": std},
        },
        "device": str(torch_device),
        "threads": threads,
        "versions": library_versions(),
        "command": sys.argv if sys.argv and sys.argv[0] else None,
    }
    write_json(run_dir / "config.json", config)
    board = board_class(str(run_dir / "tensorboard")) if board_class else None

    show_bar = (sys.stderr.isatty() if progress is None else progress) and not quiet
    say = _printer(quiet)
    say(
        f"training {recipe.name}: {recipe.model} ({parameters:,} parameters) on {spec.name} "
        f"({len(train_y):,} train / {len(eval_y):,} {eval_split}) for {recipe.epochs} epochs on {torch_device}"
    )

    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    batches = len(loader)
    total_steps = recipe.epochs * batches
    warmup_steps = round(recipe.warmup_epochs * batches)
    scheduled = recipe.schedule != "constant" or warmup_steps > 0
    best: dict[str, Any] = {"accuracy": -1.0, "epoch": 0, "state": None}
    step = 0
    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as metrics_file:
        for epoch in range(1, recipe.epochs + 1):
            model.train()
            epoch_start = time.perf_counter()
            loss_sum = torch.zeros((), device=torch_device)
            bar = tqdm(
                total=batches, desc=f"epoch {epoch}/{recipe.epochs}", unit="batch", leave=False, disable=not show_bar
            )
            log = bar.write if show_bar else say
            for batch, (inputs, targets) in enumerate(loader.epoch(epoch), start=1):
                if scheduled:
                    factor = lr_factor(
                        recipe.schedule, step, total_steps, warmup_steps, recipe.step_epochs * batches, recipe.gamma
                    )
                    for group in optimizer.param_groups:
                        group["lr"] = recipe.lr * factor
                if augmentation.enabled:
                    inputs = augment_batch(inputs, augmentation, augment_generator)
                if recipe.channels_last:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                loss = loss_fn(model(inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                optimizer.step()
                if ema is not None:
                    ema.update(model)
                step += 1
                # Summed on the device: reading a loss back (.item()) would stall every step.
                loss_sum += loss.detach()
                if batch % recipe.log_every == 0 and not quiet:
                    log(f"  loss: {loss.item():>8f}  [batch {batch:>5}/{batches}]")
                bar.update()
            train_loss = loss_sum.item() / batches
            bar.close()
            seconds = time.perf_counter() - epoch_start
            train_seconds += seconds
            result = evaluate(eval_model, eval_x, eval_y, recipe.eval_batch_size)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "eval_split": eval_split,
                "eval_loss": result.loss,
                "eval_accuracy": result.accuracy,
                "lr": optimizer.param_groups[0]["lr"],
                "epoch_seconds": seconds,
                "train_seconds": train_seconds,
            }
            history.append(row)
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            if board is not None:
                for key in ("train_loss", "eval_loss", "eval_accuracy", "lr"):
                    board.add_scalar(key, row[key], epoch)
            say(
                f"epoch {epoch:>3}/{recipe.epochs}  train loss {train_loss:.4f}  {eval_split} loss {result.loss:.4f}  "
                f"{eval_split} accuracy {100 * result.accuracy:.2f}%  {seconds:.2f}s"
            )
            if recipe.val_size and result.accuracy > best["accuracy"]:
                best = {"accuracy": result.accuracy, "epoch": epoch, "state": _copy_state(eval_model)}
            if recipe.patience and recipe.val_size and epoch - best["epoch"] >= recipe.patience:
                say(f"early stop: no better validation accuracy for {recipe.patience} epochs")
                break

    checkpoint_args = {
        "model_name": recipe.model,
        "model_kwargs": model_kwargs,
        "dataset": spec.name,
        "mean": mean,
        "std": std,
        "recipe": recipe.to_dict(),
    }
    last_epoch = history[-1]["epoch"]
    if best["state"] is not None and best["epoch"] != last_epoch:
        save_checkpoint(run_dir / LAST_CHECKPOINT_NAME, eval_model, **checkpoint_args, metrics={"epoch": last_epoch})
        eval_model.load_state_dict(best["state"])
    selected_epoch = best["epoch"] or last_epoch
    test = evaluate(eval_model, test_x, test_y, recipe.eval_batch_size)
    summary = {
        "recipe": recipe.name,
        "model": recipe.model,
        "dataset": spec.name,
        "parameters": parameters,
        "epochs": last_epoch,
        "selected_epoch": selected_epoch,
        "selected_by": "best validation accuracy" if recipe.val_size else "last epoch",
        "val_accuracy": best["accuracy"] if recipe.val_size else None,
        "device": str(torch_device),
        "threads": threads,
        "test_accuracy": test.accuracy,
        "test_loss": test.loss,
        "final_train_loss": history[-1]["train_loss"],
        "train_seconds": train_seconds,
        "checkpoint": CHECKPOINT_NAME,
    }
    save_checkpoint(
        run_dir / CHECKPOINT_NAME,
        eval_model,
        **checkpoint_args,
        metrics={
            "test_accuracy": test.accuracy,
            "test_loss": test.loss,
            "parameters": parameters,
            "epoch": selected_epoch,
        },
    )
    figures = _write_plots(run_dir, history, eval_split, splits.test_images, test, spec.classes, recipe.seed)
    if board is not None:
        board.add_scalar("test_accuracy", test.accuracy, last_epoch)
        board.add_image("predictions", _png_as_chw(figures[-1]), last_epoch)
        board.close()
    summary["wall_seconds"] = time.perf_counter() - wall_start
    write_json(run_dir / "summary.json", summary)
    chosen = f" (epoch {selected_epoch}, best on validation)" if recipe.val_size else ""
    print(
        f"test accuracy {100 * test.accuracy:.2f}%{chosen}  test loss {test.loss:.4f}  "
        f"training {train_seconds:.1f}s  run directory {run_dir}",
        flush=True,
    )
    if show:
        _show(figures)
    return RunResult(run_dir=run_dir, summary=summary, history=history, model=eval_model)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _summary_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'mnist-nn[tensorboard]'") from None
    return SummaryWriter


def _png_as_chw(path: Path) -> torch.Tensor:
    import matplotlib.image

    pixels = torch.from_numpy(matplotlib.image.imread(path)[..., :3].copy())
    return pixels.permute(2, 0, 1)


def _printer(quiet: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    return say


def _write_plots(run_dir, history, eval_split, test_images, test, classes, seed) -> list[Path]:
    sample = torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(seed))[:10]
    return [
        plots.save_figure(plots.loss_curve(history, eval_split), run_dir / "loss.png"),
        plots.save_figure(plots.accuracy_curve(history, eval_split), run_dir / "accuracy.png"),
        plots.save_figure(
            plots.digit_grid(
                test_images[sample],
                test.labels[sample].tolist(),
                test.predictions[sample].tolist(),
                classes,
                title="10 random test images: true and predicted labels",
            ),
            run_dir / "predictions.png",
        ),
    ]


def _show(figures: list[Path]) -> None:
    try:
        plots.show_saved(figures)
    except Exception as exc:  # no display or no GUI toolkit: the PNGs are written regardless
        print(f"mnist-nn: warning: cannot open a window ({exc}); the plots are in the run directory", file=sys.stderr)
