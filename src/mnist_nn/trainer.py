"""The training loop and the run directory it writes.

One function, ``train``, serves the CLI and the Python API: resolve the recipe,
load the data onto the device once, train, evaluate, write the run directory.
The same function resumes a run from its ``state.pt``, stops cleanly on SIGINT/SIGTERM
and stops on a diverging loss.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shlex
import signal
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

from . import distributed, plots
from .augment import augment_batch
from .checkpoint import load_weights, save_checkpoint, save_train_state
from .data import DeviceLoader, load_dataset, normalize, split_indices
from .device import configure_cpu, make_deterministic, prepare_backend, resolve_device, resolve_precision
from .ema import ModelEMA
from .errors import Interrupted, UserError
from .evaluate import evaluate
from .fsutil import atomic_write, ensure_writable_dir, write_json
from .models import build_model, count_parameters, get_model_spec
from .recipes import Recipe, get_recipe
from .resume import (
    STATE_NAME,
    StopRequest,
    check_disk_space,
    damaged_state,
    open_resume,
    remove_stale_temp_files,
    restore_rng_states,
    rng_states,
    saved_recipe,
    stop_on_signals,
    write_errors,
)
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
    """The recipe for its dataset, overrides applied; $MNIST_NN_MAX_EPOCHS caps its epochs (quick tries, docs tests)."""
    base = get_recipe(recipe) if isinstance(recipe, str) else recipe
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

    # Plain strings: torch.__version__ is a str subclass that weights-only loading of state.pt would refuse.
    return {
        "mnist_nn": __version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def train(
    recipe: str | Recipe | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    quiet: bool = False,
    progress: bool | None = None,
    show: bool = False,
    tensorboard: bool = False,
    resume: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    deterministic: bool | None = None,
    compile_model: bool = False,
    sync_bn: bool | None = None,
    dist_backend: str = "auto",
    **overrides: Any,
) -> RunResult:
    """Train a recipe (by name or a Recipe; default "tutorial") with optional field overrides; write and return the run.

    ``progress`` None shows a progress bar only on a terminal; ``quiet`` prints only the result.
    With a validation split, the epoch with the best validation accuracy is the one kept as
    ``model.pt`` (the final weights go to ``last.pt``); the test set is scored once, at the end.

    The run directory's ``state.pt`` is rewritten atomically at the end of every epoch (and every
    ``checkpoint_every`` optimizer steps): ``resume=RUN_DIR`` continues from it, with the run's own
    recipe, bitwise-identically to an uninterrupted run on the same device. SIGINT and SIGTERM save
    the state and raise ``Interrupted``; a NaN or infinite loss raises a UserError and keeps the last
    good state. ``deterministic`` makes CUDA kernels repeatable (see ``device.make_deterministic``).

    Under ``torchrun --nproc-per-node N`` (or inside a process group the caller started) the same call
    trains data-parallel: the recipe's batch size is the global one, each process takes its contiguous
    shard of every global batch, DDP averages the gradients, evaluation is sharded and its counts summed,
    and rank 0 alone prints and writes the run directory (see ``distributed``). ``sync_bn`` synchronizes
    batch-norm statistics across processes; ``dist_backend`` is "auto" (gloo on CPU, NCCL on CUDA),
    "gloo" or "nccl".
    """
    wall_start = time.perf_counter()
    threads = configure_cpu()
    context, torch_device = distributed.setup(resolve_device(device), dist_backend)
    try:
        result = _train(
            recipe,
            context=context,
            torch_device=torch_device,
            threads=threads,
            wall_start=wall_start,
            data_dir=data_dir,
            out=out,
            quiet=quiet,
            progress=progress,
            show=show,
            tensorboard=tensorboard,
            resume=resume,
            checkpoint_every=checkpoint_every,
            deterministic=deterministic,
            compile_model=compile_model,
            sync_bn=sync_bn,
            overrides=overrides,
        )
    except BaseException:
        context.close(clean=False)
        raise
    context.close()
    return result


def _train(
    recipe: str | Recipe | None,
    *,
    context: distributed.Context,
    torch_device: torch.device,
    threads: int,
    wall_start: float,
    data_dir: str | os.PathLike | None,
    out: str | os.PathLike | None,
    quiet: bool,
    progress: bool | None,
    show: bool,
    tensorboard: bool,
    resume: str | os.PathLike | None,
    checkpoint_every: int | None,
    deterministic: bool | None,
    compile_model: bool,
    sync_bn: bool | None,
    overrides: dict[str, Any],
) -> RunResult:
    """``train`` once the process group (if any) is up; ``context`` says which rank this is."""
    main = context.is_main()

    def open_run() -> tuple[Path, dict[str, Any] | None, Recipe, int, bool, bool]:
        """The run directory, its saved state and the resolved options: decided by rank 0 alone (the
        default folder name holds a timestamp) and broadcast, so every rank trains the same run."""
        saved: dict[str, Any] | None = None
        every, exact, synced = checkpoint_every, deterministic, sync_bn
        if resume is not None:
            run_dir, saved = open_resume(resume, recipe, out, overrides)
            resolved = saved_recipe(run_dir / STATE_NAME, saved["recipe"])
            options = saved["options"]
            every = options.get("checkpoint_every", 0) if every is None else every
            exact = options.get("deterministic", False) if exact is None else exact
            if synced is not None and synced != options.get("sync_bn", False):
                raise UserError(
                    f"--resume continues {run_dir} with its saved options; --sync-bn would change it "
                    "(drop it, or start a new run with --out)"
                )
            synced = options.get("sync_bn", False)
        else:
            resolved = resolve_recipe("tutorial" if recipe is None else recipe, **overrides)
            run_dir = Path(out) if out is not None else default_run_dir()
            check_output_dir(run_dir)
        every = every or 0
        if not isinstance(every, int) or every < 0:
            raise UserError(f"checkpoint every must be a positive number of steps (or 0: off), got {every}")
        distributed.check_batch_size(resolved.batch_size, context.world_size)
        get_model_spec(resolved.model)
        if tensorboard:
            _summary_writer_class()
        return run_dir, saved, resolved, every, bool(exact), bool(synced)

    run_dir, saved, recipe, checkpoint_every, deterministic, sync_bn = context.run_on_main(open_run)
    state_path = run_dir / STATE_NAME
    model_spec = get_model_spec(recipe.model)
    prepare_backend(torch_device)
    if deterministic:
        make_deterministic()
    board_class = _summary_writer_class() if tensorboard and main else None

    if saved is not None and data_dir is None and Path(saved["config"]["data"]["folder"]).is_dir():
        data_dir = saved["config"]["data"]["folder"]
    splits = load_dataset(recipe.dataset, data_dir)
    spec = splits.spec
    if saved is not None and splits.checksums != saved["config"]["data"]["md5"]:
        raise UserError(
            f"the {spec.name} files in {splits.folder} differ from those run {run_dir} was trained on "
            "(their MD5s do not match); pass --data-dir with the original files"
        )
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

    def prepare_run_dir() -> None:
        check_disk_space(run_dir, model, recipe, bool(recipe.ema_decay))
        ensure_writable_dir(run_dir)
        # The last global batch is split across the processes: each needs at least one image of it.
        tail = len(train_y) % recipe.batch_size
        if 0 < tail < context.world_size:
            raise UserError(
                f"the last batch of each epoch holds {tail} image(s), fewer than the {context.world_size} processes "
                "that share it; choose another --batch-size"
            )

    context.run_on_main(prepare_run_dir)
    if sync_bn and context.enabled:
        model = distributed.convert_sync_batchnorm(model, torch_device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    parameters = count_parameters(model)
    optimizer = make_optimizer(recipe, model, torch_device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    # Under DDP each rank sums its shard's losses and scales by world size / global batch: DDP's gradient
    # average is then the gradient of the mean over the whole global batch, as with one process.
    shard_loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing, reduction="sum")
    loader = DeviceLoader(train_x, train_y, recipe.batch_size, shuffle=recipe.shuffle, seed=recipe.seed)
    augmentation = recipe.augmentation()
    # Rank 0 draws the single-process streams; the other ranks get streams of their own, so that their
    # shards see independent dropout masks and distortions (derived from the seed, hence repeatable).
    rank_seed = distributed.rank_seed(recipe.seed, context.rank)
    augment_generator = torch.Generator(device=torch_device).manual_seed(rank_seed)
    if context.rank:
        torch.manual_seed(rank_seed)
    ema = ModelEMA(model, recipe.ema_decay) if recipe.ema_decay else None
    # What is evaluated and saved: the EMA of the weights when enabled, else the weights.
    eval_model = ema.module if ema is not None else model
    computed_in = resolve_precision(recipe.precision, torch_device)
    precision = _autocast(computed_in, torch_device)

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
        "precision": computed_in,
        "versions": library_versions(),
        "command": sys.argv if sys.argv and sys.argv[0] else None,
        "checkpoint_every": checkpoint_every,
        "deterministic": deterministic,
    }
    if context.enabled:
        config["distributed"] = {
            "world_size": context.world_size,
            "backend": context.backend,
            "sync_bn": sync_bn,
            "global_batch_size": recipe.batch_size,
            "per_process_batch_size": recipe.batch_size // context.world_size,
        }
    checkpoint_args = {
        "model_name": recipe.model,
        "model_kwargs": model_kwargs,
        "dataset": spec.name,
        "mean": mean,
        "std": std,
        "recipe": recipe.to_dict(),
    }

    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    batches = len(loader)
    total_steps = recipe.epochs * batches
    warmup_steps = round(recipe.warmup_epochs * batches)
    scheduled = recipe.schedule != "constant" or warmup_steps > 0
    best: dict[str, Any] = {"accuracy": -1.0, "epoch": 0, "state": None}
    step = 0
    first_epoch, first_batch, finished = 1, 0, False
    # The running loss sum and time of the epoch in progress: carried over when it was cut mid-way.
    loss_sum = torch.zeros((), device=torch_device)
    epoch_seconds = 0.0
    if saved is not None:
        config = saved["config"]
        position = saved["position"]
        first_epoch, first_batch, finished, step = (
            int(position["epoch"]),
            int(position["batch"]),
            bool(position["finished"]),
            int(position["step"]),
        )
        if finished and (run_dir / "summary.json").exists():
            raise UserError(f"run {run_dir} has already finished (see its summary.json); nothing to resume")
        with damaged_state(state_path):
            load_weights(model, saved["model"], state_path, recipe.model)
            optimizer.load_state_dict(saved["optimizer"])
            if ema is not None:
                ema.load_state_dict(saved["ema"])
            # A data-parallel state holds every rank's random streams and running loss; a rank the state
            # does not know (resumed on more processes) starts fresh streams from (seed, rank, step).
            ranks = saved.get("ranks")
            if context.enabled and ranks is not None and context.rank < len(ranks):
                restore_rng_states(ranks[context.rank]["rng"], augment_generator)
                loss_sum = ranks[context.rank]["loss_sum"].to(torch_device)
            elif context.rank == 0:
                restore_rng_states(saved["rng"], augment_generator)
                loss_sum = saved["loss_sum"].to(torch_device)
            else:
                fresh = distributed.rank_seed(recipe.seed + step, context.rank)
                torch.manual_seed(fresh)
                augment_generator.manual_seed(fresh)
            history = [dict(row) for row in saved["history"]]
            best = dict(saved["best"])
            train_seconds, epoch_seconds = float(saved["train_seconds"]), float(saved["epoch_seconds"])
            if not 0 <= first_batch <= batches or not 1 <= first_epoch <= recipe.epochs + 1:
                raise ValueError(f"position epoch {first_epoch}, batch {first_batch} is outside the run")
    board = None
    last_saved = {"epoch": first_epoch, "batch": first_batch}
    # Wrapped once the weights are final (loaded from a state): DDP starts by broadcasting rank 0's.
    train_model: nn.Module = model
    if context.enabled:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [torch_device] if torch_device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids)
    # The compiled module shares the model's parameters: optimizer, EMA and checkpoints see one set.
    if compile_model:
        train_model = _compile(train_model, torch_device)

    metrics_path = run_dir / "metrics.jsonl"
    # Rank 0's open metrics.jsonl while the loop runs (None on the other ranks).
    metrics_file: list[Any] = [None]

    def save_state(epoch: int, batch: int, *, done: bool = False, row: dict[str, Any] | None = None) -> None:
        """Everything the loop needs to continue from (epoch, batch done), written atomically by rank 0,
        after the epoch's metrics ``row`` when one is given.

        Under DDP, model, optimizer and EMA are the same on every rank; each rank's random streams and
        running loss are gathered, so that every rank resumes exactly where it stopped.
        """
        ranks = None
        total_loss = loss_sum.detach().clone()
        if context.enabled:
            ranks = context.gather_objects(
                {"rng": rng_states(augment_generator), "loss_sum": loss_sum.detach().cpu().clone()}
            )
            context.all_reduce_sum(total_loss)
        context.run_on_main(lambda: write_state(epoch, batch, done, row, ranks, total_loss))
        last_saved.update(epoch=epoch, batch=batch)

    def write_state(
        epoch: int,
        batch: int,
        done: bool,
        row: dict[str, Any] | None,
        ranks: list[Any] | None,
        total_loss: torch.Tensor,
    ) -> None:
        if row is not None:
            metrics_file[0].write(json.dumps(row) + "\n")
            metrics_file[0].flush()
        state = {
            "checkpoint": {
                "model": {"name": recipe.model, "kwargs": model_kwargs},
                "dataset": spec.name,
                "normalization": {"mean": mean, "std": std},
                "recipe": recipe.to_dict(),
                "mnist_nn_version": __version__,
            },
            "recipe": recipe.to_dict(),
            "config": config,
            "options": {"checkpoint_every": checkpoint_every, "deterministic": deterministic, "sync_bn": sync_bn},
            "position": {"epoch": epoch, "batch": batch, "step": step, "finished": done},
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "rng": rng_states(augment_generator),
            # The epoch's running loss over all ranks (what a resume on one process continues from).
            "loss_sum": total_loss,
            "ranks": ranks,
            "history": history,
            "best": best,
            "train_seconds": train_seconds,
            "epoch_seconds": epoch_seconds,
        }
        save_train_state(state_path, state)

    def diverged(epoch: int, first: int, last: int) -> UserError:
        lr = optimizer.param_groups[0]["lr"]
        return UserError(
            f"training diverged: the loss became NaN or infinite in epoch {epoch}, batches {first}-{last} of "
            f"{batches} (learning rate {lr:g}); the last good state (epoch {last_saved['epoch']}, batch "
            f"{last_saved['batch']}) is kept in {state_path}; try a lower learning rate, e.g. --lr {recipe.lr / 10:g}, "
            "or --grad-clip 1"
        )

    def interrupted(signum: int, where: str) -> Interrupted:
        return Interrupted(
            f"interrupted by {signal.Signals(signum).name} {where}; state saved in {state_path}; "
            f"resume with: mnist-nn train --resume {shlex.quote(str(run_dir))}",
            128 + signum,
        )

    def running_loss() -> float:
        """The epoch's loss sum so far, over all ranks: read where the loop reads it anyway (log lines,
        saves, the epoch's end), so DDP adds no per-step host sync; every rank sees the same value and
        so stops on a divergence at the same batch."""
        if not context.enabled:
            return loss_sum.item()
        return context.all_reduce_sum(loss_sum.detach().clone()).item()

    # Only rank 0 prints: every rank runs the same loop, so its lines would repeat.
    show_bar = (sys.stderr.isatty() if progress is None else progress) and not quiet and main
    say = _printer(quiet or not main)
    stop = StopRequest(state_path, run_dir)

    def write_start() -> None:
        if saved is None:
            write_json(run_dir / "config.json", config)
        else:
            remove_stale_temp_files(run_dir)
            if not (run_dir / "config.json").exists():
                write_json(run_dir / "config.json", config)
        # The state decides which epochs are done: rows written after it (a kill between the
        # metrics line and the state) are dropped here and recorded again.
        text = "".join(json.dumps(row) + "\n" for row in history)
        atomic_write(metrics_path, lambda handle: handle.write(text.encode()))

    with write_errors(run_dir, state_path):
        if saved is None:
            save_state(1, 0)
        context.run_on_main(write_start)
        if saved is None:
            say(
                f"training {recipe.name}: {recipe.model} ({parameters:,} parameters) on {spec.name} "
                f"({len(train_y):,} train / {len(eval_y):,} {eval_split}) for {recipe.epochs} epochs on {torch_device}"
            )
        else:
            say(
                f"resuming {run_dir}: {recipe.name}, epoch {min(first_epoch, recipe.epochs)}/{recipe.epochs}, "
                f"batch {first_batch}/{batches} on {torch_device}"
            )
        if context.enabled:
            say(
                f"data-parallel on {context.world_size} processes ({context.backend}): global batch "
                f"{recipe.batch_size}, {recipe.batch_size // context.world_size} per process"
                + (", synchronized batch norm" if sync_bn else "")
            )
        if board_class is not None:
            board = board_class(str(run_dir / "tensorboard"), purge_step=len(history) + 1 if history else None)

        epochs_left = range(first_epoch, recipe.epochs + 1) if not finished else range(0)
        metrics_handle = open(metrics_path, "a", encoding="utf-8") if main else contextlib.nullcontext()  # noqa: SIM115
        with stop_on_signals(stop), metrics_handle as metrics_file[0]:
            for epoch in epochs_left:
                model.train()
                resumed_batch = first_batch if epoch == first_epoch else 0
                if not resumed_batch:
                    loss_sum = torch.zeros((), device=torch_device)
                    epoch_seconds = 0.0
                epoch_start, seconds_before = time.perf_counter(), epoch_seconds
                checked = resumed_batch  # batches whose losses are known to be finite
                bar = tqdm(
                    total=batches,
                    initial=resumed_batch,
                    desc=f"epoch {epoch}/{recipe.epochs}",
                    unit="batch",
                    leave=False,
                    disable=not show_bar,
                )
                log = bar.write if show_bar else say
                for batch, (inputs, targets) in enumerate(loader.epoch(epoch, resumed_batch), start=resumed_batch + 1):
                    if scheduled:
                        factor = lr_factor(
                            recipe.schedule, step, total_steps, warmup_steps, recipe.step_epochs * batches, recipe.gamma
                        )
                        for group in optimizer.param_groups:
                            group["lr"] = recipe.lr * factor
                    if augmentation.enabled:
                        inputs = augment_batch(inputs, augmentation, augment_generator)
                    if context.enabled:
                        # This rank's contiguous shard of the global batch (the same permutation on every rank).
                        size = len(targets)
                        low, high = distributed.shard_bounds(size, context.rank, context.world_size)
                        inputs, targets = inputs[low:high], targets[low:high]
                    if recipe.channels_last:
                        inputs = inputs.contiguous(memory_format=torch.channels_last)
                    with precision():
                        if context.enabled:
                            shard_loss = shard_loss_fn(train_model(inputs), targets) / size
                            loss = shard_loss * context.world_size
                        else:
                            loss = loss_fn(train_model(inputs), targets)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if recipe.grad_clip:
                        nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                    optimizer.step()
                    if ema is not None:
                        ema.update(model)
                    step += 1
                    # Summed on the device: reading a loss back (.item()) would stall every step. A NaN or
                    # inf anywhere poisons the sum, so reading it where the loss is printed anyway (and at
                    # every save) catches a divergence at no extra cost.
                    # Under DDP this rank's share of the global batch's mean loss: the ranks' sums add up.
                    loss_sum += shard_loss.detach() if context.enabled else loss.detach()
                    if batch % recipe.log_every == 0:
                        if not math.isfinite(running_loss()):
                            raise diverged(epoch, checked + 1, batch)
                        checked = batch
                        if not quiet:
                            batch_loss = (
                                context.all_reduce_sum(shard_loss.detach().clone()).item()
                                if context.enabled
                                else loss.item()
                            )
                            log(f"  loss: {batch_loss:>8f}  [batch {batch:>5}/{batches}]")
                    bar.update()
                    due = checkpoint_every and step % checkpoint_every == 0 and batch < batches
                    # Under DDP the ranks agree on a signal (one step late) so that all stop after the same step.
                    signum = context.agree_stop(stop.signum)
                    if due or signum is not None:
                        if not math.isfinite(running_loss()):
                            raise diverged(epoch, checked + 1, batch)
                        checked = batch
                        epoch_seconds = seconds_before + time.perf_counter() - epoch_start
                        save_state(epoch, batch)
                        if signum is not None:
                            bar.close()
                            raise interrupted(
                                signum, f"in epoch {epoch}/{recipe.epochs}, after batch {batch}/{batches}"
                            )
                train_total = running_loss()
                bar.close()
                if not math.isfinite(train_total):
                    raise diverged(epoch, checked + 1, batches)
                train_loss = train_total / batches
                seconds = seconds_before + time.perf_counter() - epoch_start
                train_seconds += seconds
                if context.enabled:
                    distributed.broadcast_buffers(context, eval_model)
                    result = distributed.evaluate_sharded(context, eval_model, eval_x, eval_y, recipe.eval_batch_size)
                else:
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
                if board is not None:
                    for key in ("train_loss", "eval_loss", "eval_accuracy", "lr"):
                        board.add_scalar(key, row[key], epoch)
                say(
                    f"epoch {epoch:>3}/{recipe.epochs}  train loss {train_loss:.4f}  {eval_split} loss "
                    f"{result.loss:.4f}  {eval_split} accuracy {100 * result.accuracy:.2f}%  {seconds:.2f}s"
                )
                if recipe.val_size and result.accuracy > best["accuracy"]:
                    best = {"accuracy": result.accuracy, "epoch": epoch, "state": _copy_state(eval_model)}
                early_stop = bool(recipe.patience and recipe.val_size and epoch - best["epoch"] >= recipe.patience)
                epoch_seconds = 0.0
                save_state(epoch + 1, 0, done=early_stop or epoch == recipe.epochs, row=row)
                if early_stop:
                    say(f"early stop: no better validation accuracy for {recipe.patience} epochs")
                    break
                signum = context.settle_stop(stop.signum)
                if signum is not None:
                    raise interrupted(signum, f"after epoch {epoch}/{recipe.epochs}")

        last_epoch = history[-1]["epoch"]
        if best["state"] is not None and best["epoch"] != last_epoch:
            context.run_on_main(
                lambda: save_checkpoint(
                    run_dir / LAST_CHECKPOINT_NAME, eval_model, **checkpoint_args, metrics={"epoch": last_epoch}
                )
            )
            eval_model.load_state_dict(best["state"])
        selected_epoch = best["epoch"] or last_epoch
        if context.enabled:
            distributed.broadcast_buffers(context, eval_model)
            # Rank 0 gathers every slice's logits: the predictions figure needs them.
            test = distributed.evaluate_sharded(
                context, eval_model, test_x, test_y, recipe.eval_batch_size, gather=True
            )
        else:
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
            "precision": computed_in,
            "test_accuracy": test.accuracy,
            "test_loss": test.loss,
            "final_train_loss": history[-1]["train_loss"],
            "train_seconds": train_seconds,
            "checkpoint": CHECKPOINT_NAME,
        }
        if context.enabled:
            summary["processes"] = context.world_size

        def write_results() -> list[Path]:
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
            return figures

        figures = context.run_on_main(write_results)
    chosen = f" (epoch {selected_epoch}, best on validation)" if recipe.val_size else ""
    if main:
        print(
            f"test accuracy {100 * test.accuracy:.2f}%{chosen}  test loss {test.loss:.4f}  "
            f"training {train_seconds:.1f}s  run directory {run_dir}",
            flush=True,
        )
    if show and main:
        _show(figures)
    return RunResult(run_dir=run_dir, summary=summary, history=history, model=eval_model)


def _compile(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile for the training forward/backward; on CUDA "max-autotune" also captures CUDA graphs,
    which removes the per-kernel launch cost that dominates these tiny networks' steps."""
    mode = "max-autotune" if device.type == "cuda" else "default"
    return torch.compile(model, mode=mode)


def _autocast(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast for the forward pass and loss (matmuls and convolutions in bf16, reductions in fp32)."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


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
