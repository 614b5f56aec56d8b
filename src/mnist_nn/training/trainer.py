"""The training loop.

``train(recipe, **overrides)`` serves the CLI and the Python API. It builds a ``Trainer``, whose
methods are the loop's steps, in the shape of PyTorch's own examples:

- ``train_step``: one optimizer step on one batch (its forward, loss, backward and optimizer step are
  ``step.TrainStep``);
- ``train_one_epoch``: the batch loop;
- ``evaluate``: the per-epoch score;
- ``fit``: epochs until the recipe's last (or an early stop), then ``finish``: the test set and the results.

How a step runs is chosen once, when the run starts (``step.choose_step``): on CUDA the step on full
batches is replayed as one captured CUDA graph (``cuda_graph.CapturedStep``; config.json's "cuda_graph"
says whether, and why not), and ``--device auto`` takes the GPU only where a few timed steps of the
recipe's model are faster there ("device_choice").

The plain path is one process. The rest are layers around it: resuming (``restore`` from a
``state.pt`` and ``save_state``), stop signals and periodic saves (``after_step``), and data-parallel
training (the ``distributed.Context``: one process makes each of its calls a no-op).
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_nn.core.device import (
    choose_training_device,
    configure_cpu,
    make_deterministic,
    prepare_backend,
    resolve_device,
    resolve_precision,
)
from mnist_nn.core.errors import Interrupted, UserError, option
from mnist_nn.data.augment import augment_batch
from mnist_nn.data.datasets import DeviceLoader
from mnist_nn.models.calibration import fit_temperature
from mnist_nn.models.checkpoint import CheckpointMeta, Position, TrainState, load_weights, save_checkpoint
from mnist_nn.models.networks import build_model, convert_sync_batchnorm, count_parameters, get_model_spec
from mnist_nn.models.scoring import Evaluation, evaluate, model_outputs
from mnist_nn.training import distributed
from mnist_nn.training.cuda_graph import CapturedStep, can_capture
from mnist_nn.training.ema import ModelEMA
from mnist_nn.training.fused_adam import FusedAdamStep
from mnist_nn.training.recipes import Recipe
from mnist_nn.training.report import RunReport, sample_indices, show
from mnist_nn.training.resume import (
    StopRequest,
    damaged_state,
    remove_stale_temp_files,
    restore_rng_states,
    rng_states,
    stop_on_signals,
    write_errors,
)
from mnist_nn.training.run_plan import (
    RunData,
    RunPlan,
    check_run_dir,
    discard_unstarted,
    load_run_data,
    make_optimizer,
    plan_run,
    resolve_recipe,
    run_config,
)
from mnist_nn.training.schedules import lr_factor
from mnist_nn.training.step import EagerStep, TrainStep, autocast_for, choose_step, mean_loss, measure_step_seconds

__all__ = ["RunOptions", "RunResult", "Trainer", "resolve_recipe", "single_process_trainer", "train"]

CHECKPOINT_NAME = "model.pt"
LAST_CHECKPOINT_NAME = "last.pt"


@dataclass
class RunOptions:
    """How to run a recipe, as opposed to what it trains (the ``Recipe``): one value from the CLI or the
    Python API down to the loop.

    ``progress`` None shows a progress bar only on a terminal; ``quiet`` prints only the result.
    ``resume`` is a run directory to continue, with its own recipe. ``checkpoint_every`` also saves the
    resumable state every that many optimizer steps. ``deterministic`` makes CUDA kernels repeatable.
    ``compile_model`` uses torch.compile. ``sync_bn`` and ``dist_backend`` matter under torchrun only.
    """

    data_dir: str | os.PathLike | None = None
    out: str | os.PathLike | None = None
    device: str = "auto"
    quiet: bool = False
    progress: bool | None = None
    show: bool = False
    tensorboard: bool = False
    resume: str | os.PathLike | None = None
    checkpoint_every: int | None = None
    deterministic: bool | None = None
    compile_model: bool = False
    sync_bn: bool | None = None
    dist_backend: str = "auto"

    @classmethod
    def split(cls, options: RunOptions | None, keywords: dict[str, Any]) -> tuple[RunOptions, dict[str, Any]]:
        """``options`` with any run options among ``keywords`` applied, and the rest: the recipe overrides."""
        names = {field.name for field in fields(cls)}
        given = {key: value for key, value in keywords.items() if key in names}
        return replace(options or cls(), **given), {k: v for k, v in keywords.items() if k not in names}


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    model: nn.Module


def train(recipe: str | Recipe | None = None, options: RunOptions | None = None, **overrides: Any) -> RunResult:
    """Train a recipe (by name or a Recipe; default "tutorial") with optional field overrides; write and return the run.

    Run options (``RunOptions``'s fields: ``data_dir``, ``out``, ``device``, ``resume``, ...) may be given
    as keywords too. With a validation split, the epoch with the best validation accuracy is the one kept as
    ``model.pt`` (the final weights go to ``last.pt``); the test set is scored once, at the end.

    The run directory's ``state.pt`` is rewritten atomically at the end of every epoch (and every
    ``checkpoint_every`` optimizer steps): ``resume=RUN_DIR`` continues from it, bitwise-identically to an
    uninterrupted run on the same device. SIGINT and SIGTERM save the state and raise ``Interrupted``; a
    NaN or infinite loss raises a UserError and keeps the last good state.

    Under ``torchrun --nproc-per-node N`` (or inside a process group the caller started) the same call
    trains data-parallel: the recipe's batch size is the global one, each process takes its contiguous
    shard of every global batch, DDP averages the gradients, evaluation is sharded and its counts summed,
    and rank 0 alone prints and writes the run directory (see ``distributed``).
    """
    options, overrides = RunOptions.split(options, overrides)
    wall_start = time.perf_counter()
    threads = configure_cpu()
    context, device = distributed.setup(resolve_device(options.device), options.dist_backend)
    plan = None
    try:
        plan = context.run_on_main(
            lambda: plan_run(
                recipe,
                overrides,
                out=options.out,
                resume=options.resume,
                checkpoint_every=options.checkpoint_every,
                deterministic=options.deterministic,
                sync_bn=options.sync_bn,
                tensorboard=options.tensorboard,
                world_size=context.world_size,
            )
        )
        device, choice = training_device(options, plan, context, device)
        result = Trainer(plan, options, context, device, threads, choice).fit(wall_start)
    except BaseException:
        context.close(clean=False)
        if plan is not None and not context.rank:
            discard_unstarted(plan)
        raise
    context.close()
    return result


def single_process_trainer(recipe: str | Recipe | None, options: RunOptions, **overrides: Any) -> Trainer:
    """A one-process Trainer for a new run, built as ``train`` builds it, for code that drives the steps
    itself (``lr_find``, tests): ``options.out`` is its run directory."""
    threads = configure_cpu()
    plan = plan_run(
        recipe,
        overrides,
        out=options.out,
        resume=None,
        checkpoint_every=options.checkpoint_every,
        deterministic=options.deterministic,
        sync_bn=None,
        tensorboard=options.tensorboard,
        world_size=1,
    )
    context = distributed.Context()
    device, choice = training_device(options, plan, context, resolve_device(options.device))
    return Trainer(plan, options, context, device, threads, choice)


def training_device(
    options: RunOptions, plan: RunPlan, context: distributed.Context, device: torch.device
) -> tuple[torch.device, dict[str, Any]]:
    """The device a run trains on and the record of why (config.json's "device_choice"): ``--device auto``
    on one process times a few steps of the recipe's model on the GPU and on the CPU (see
    ``device.choose_training_device``); under torchrun each rank keeps the device its launch gave it."""
    if context.enabled:
        return device, {"asked": options.device, "chosen": str(device), "reason": "the device of this process's rank"}
    recipe = plan.recipe
    resumed_on = str(plan.saved.config.get("device", "")) if plan.saved is not None else None

    def probe(candidate: torch.device) -> float:
        capture, _ = can_capture(
            candidate,
            distributed=False,
            grad_clip=recipe.grad_clip,
            compile_model=options.compile_model,
            deterministic=plan.deterministic,
        )
        return measure_step_seconds(recipe, candidate, capture=capture)

    return choose_training_device(options.device, probe, resumed_on=resumed_on)


class Trainer:
    """One training run. Its fields are the run's parts and progress; its methods, the loop's steps."""

    def __init__(
        self,
        plan: RunPlan,
        options: RunOptions,
        context: distributed.Context,
        device: torch.device,
        threads: int,
        device_choice: dict[str, Any] | None = None,
    ) -> None:
        self.plan = plan
        self.options = options
        self.context = context
        self.device = device
        self.threads = threads
        self.recipe = plan.recipe
        self.run_dir = plan.run_dir
        self.state_path = plan.state_path
        prepare_backend(device)
        if plan.deterministic:
            make_deterministic()
        self.report = RunReport(
            plan.run_dir,
            quiet=options.quiet,
            progress=options.progress,
            tensorboard=options.tensorboard,
            main=context.is_main(),
        )
        self.data: RunData = load_run_data(self.recipe, options.data_dir, plan.saved, plan.run_dir, device)
        self.model, model_kwargs = self._build_model()
        self._build_optimizer()
        self._build_batches()
        self._build_ema()
        self._record_run(model_kwargs, device_choice)
        self.stop = StopRequest(self.state_path, self.run_dir)
        self._start_fresh()
        if plan.saved is not None:
            self.restore(plan.saved)
        self.batch_step = self._choose_step()

    def _build_optimizer(self) -> None:
        """The optimizer, its step (the lean fused one where that is exact: see fused_adam) and the precision."""
        self.parameters = count_parameters(self.model)
        self.optimizer = make_optimizer(self.recipe, self.model, self.device)
        self.optimizer_step = FusedAdamStep(self.optimizer)
        self.precision = resolve_precision(self.recipe.precision, self.device)

    def _build_batches(self) -> None:
        """The batches: index slices of the training set on the device, and their augmentation."""
        recipe = self.recipe
        self.loader = DeviceLoader(
            self.data.train_x, self.data.train_y, recipe.batch_size, shuffle=recipe.shuffle, seed=recipe.seed
        )
        self.batches = len(self.loader)
        self.augmentation = recipe.augmentation(self.data.mean, self.data.std)
        # Rank 0 draws the single-process streams; the other ranks get streams of their own, so that their
        # shards see independent dropout masks and distortions (derived from the seed, hence repeatable).
        rank_seed = distributed.rank_seed(recipe.seed, self.context.rank)
        self.augment_generator = torch.Generator(device=self.device).manual_seed(rank_seed)
        if self.context.rank:
            torch.manual_seed(rank_seed)

    def _build_ema(self) -> None:
        """The moving average of the weights, when the recipe keeps one: then it is what is evaluated and saved."""
        self.ema = ModelEMA(self.model, self.recipe.ema_decay) if self.recipe.ema_decay else None
        self.eval_model = self.ema.module if self.ema is not None else self.model

    def _record_run(self, model_kwargs: dict[str, Any], device_choice: dict[str, Any] | None) -> None:
        """What the checkpoints carry (``meta``) and config.json records, including whether the step is captured."""
        recipe, data = self.recipe, self.data
        self.meta = CheckpointMeta(
            recipe.model, model_kwargs, data.splits.spec.name, data.mean, data.std, recipe.to_dict()
        )
        self.config = run_config(
            self.plan, data, model_kwargs, self.parameters, self.context, self.device, self.threads, self.precision
        )
        if device_choice is not None:
            self.config["device_choice"] = device_choice
        capture, reason = can_capture(
            self.device,
            distributed=self.context.enabled,
            grad_clip=recipe.grad_clip,
            compile_model=self.options.compile_model,
            deterministic=self.plan.deterministic,
        )
        # Kept apart from config: a resumed run's config.json is the saved one (older ones lack the key).
        self.capture = capture
        self.config["cuda_graph"] = capture
        if not capture:
            self.config["cuda_graph_reason"] = reason

    def _choose_step(self) -> EagerStep | CapturedStep:
        """The run's step, chosen once: ``TrainStep`` (forward, loss, backward, optimizer step) on the model as
        trained, run eagerly or replayed as one CUDA graph on full batches (config.json's "cuda_graph")."""
        recipe, context = self.recipe, self.context
        # The wrapped and compiled modules share the model's parameters: optimizer, EMA and checkpoints see one set.
        self.train_model = context.wrap(self.model, self.device)
        if self.options.compile_model:
            self.train_model = _compile(self.train_model, self.device)
        if context.enabled:
            loss_fn = distributed.ShardLoss(recipe.label_smoothing, context.world_size)
            loss_scale = torch.tensor(float(context.world_size), device=self.device)
        else:
            loss_fn = mean_loss(recipe.label_smoothing)
            loss_scale = None
        step = TrainStep(
            self.train_model,
            loss_fn,
            self.optimizer_step,
            grad_clip=recipe.grad_clip,
            channels_last=recipe.channels_last,
            autocast=autocast_for(self.precision, self.device),
            shard=context.shard,
            loss_scale=loss_scale,
        )
        return choose_step(step, self.model, self.ema, recipe.batch_size, capture=self.capture)

    def _build_model(self) -> tuple[nn.Module, dict[str, Any]]:
        recipe, device = self.recipe, self.device
        torch.manual_seed(recipe.seed)
        model_kwargs = dict(get_model_spec(recipe.model).defaults, **recipe.model_kwargs)
        model = build_model(recipe.model, **model_kwargs).to(device)
        train_size, world_size = len(self.data.train_y), self.context.world_size
        self.context.run_on_main(lambda: check_run_dir(self.run_dir, model, recipe, train_size, world_size))
        if self.plan.sync_bn and self.context.enabled:
            model = convert_sync_batchnorm(model, device)
        if recipe.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model, model_kwargs

    def _start_fresh(self) -> None:
        """The progress of a run that has not started: what ``restore`` replaces when resuming."""
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"accuracy": -1.0, "epoch": 0, "state": None}
        self.step = 0
        self.start = Position(epoch=1, batch=0, step=0, finished=False)
        self.last_saved = (1, 0)
        self.train_seconds = 0.0
        # The running loss sum and time of the epoch in progress: carried over when it was cut mid-way.
        self.loss_sum = torch.zeros((), device=self.device)
        self.epoch_seconds = 0.0
        self.checked = 0  # batches of this epoch whose losses are known to be finite
        self.total_steps = self.recipe.epochs * self.batches
        self.warmup_steps = round(self.recipe.warmup_epochs * self.batches)
        self.scheduled = self.recipe.schedule != "constant" or self.warmup_steps > 0

    # ----------------------------------------------------------------- the loop

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a batch; returns this process's share of the batch's mean loss (on the device).

        The learning rate of the schedule, the batch augmented on the device, then the step chosen when the
        run started (``step.TrainStep``: forward, loss, backward, optimizer step; then the EMA), replayed as
        one CUDA graph on a GPU (its returned share is then overwritten by the next step)."""
        self.set_learning_rate()
        if self.augmentation.enabled:
            inputs = augment_batch(inputs, self.augmentation, self.augment_generator)
        loss = self.batch_step(inputs, targets, self.optimizer.param_groups[0]["lr"])
        self.step += 1
        # Summed on the device: reading a loss back (.item()) would stall every step. A NaN or inf anywhere
        # poisons the sum, so reading it where the loss is printed anyway (and at every save) catches a
        # divergence at no extra cost.
        self.loss_sum += loss.detach()
        return loss

    def set_learning_rate(self) -> None:
        """The schedule's learning rate for this step, in every parameter group (a constant one is left alone)."""
        if not self.scheduled:
            return
        recipe = self.recipe
        factor = lr_factor(
            recipe.schedule,
            self.step,
            self.total_steps,
            self.warmup_steps,
            recipe.step_epochs * self.batches,
            recipe.gamma,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = recipe.lr * factor

    def train_one_epoch(self, epoch: int, first_batch: int = 0) -> float:
        """One pass over the training set (from ``first_batch`` in an epoch cut short); returns its mean loss."""
        self.model.train()
        if not first_batch:
            self.loss_sum = torch.zeros((), device=self.device)
            self.epoch_seconds = 0.0
        self._clock = (time.perf_counter(), self.epoch_seconds)
        self.checked = first_batch
        self.report.start_epoch(epoch, self.recipe.epochs, self.batches, first_batch)
        for batch, (inputs, targets) in enumerate(self.loader.epoch(epoch, first_batch), start=first_batch + 1):
            loss = self.train_step(inputs, targets)
            if batch % self.recipe.log_every == 0:
                self.check_finite(epoch, batch)
                # Under DDP every rank takes part in the sum (only rank 0 prints and records it).
                value = self.context.all_reduce_sum(loss.detach().clone()).item()
                self.report.log(f"  loss: {value:>8f}  [batch {batch:>5}/{self.batches}]")
                self.report.log_point(epoch, batch, self.step, value)
            self.report.advance()
            self.after_step(epoch, batch)
        total = self.check_finite(epoch, self.batches)
        self.report.end_epoch()
        self.epoch_seconds = self._elapsed()
        return total / self.batches

    def evaluate(self) -> Evaluation:
        """The score after an epoch: on the validation split, or the test set when the recipe holds none out."""
        self.context.broadcast_buffers(self.eval_model)
        data = self.data
        return evaluate(self.eval_model, data.eval_x, data.eval_y, self.recipe.eval_batch_size, context=self.context)

    def end_epoch(self, epoch: int, train_loss: float) -> bool:
        """Score the epoch, record it, keep the best weights and save the state; True to stop early."""
        recipe = self.recipe
        seconds = self.epoch_seconds
        self.train_seconds += seconds
        result = self.evaluate()
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "eval_split": self.data.eval_split,
            "eval_loss": result.loss,
            "eval_accuracy": result.accuracy,
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": seconds,
            "train_seconds": self.train_seconds,
        }
        self.history.append(row)
        self.report.epoch_line(row, recipe.epochs)
        self.context.run_on_main(lambda: self._record_samples(epoch))
        if recipe.val_size and result.accuracy > self.best["accuracy"]:
            self.best = {"accuracy": result.accuracy, "epoch": epoch, "state": _copy_state(self.eval_model)}
        early_stop = bool(recipe.patience and recipe.val_size and epoch - self.best["epoch"] >= recipe.patience)
        self.epoch_seconds = 0.0
        self.save_state(epoch + 1, 0, done=early_stop or epoch == recipe.epochs, row=row)
        if early_stop:
            self.report.say(f"early stop: no better validation accuracy for {recipe.patience} epochs")
            return True
        signum = self.context.settle_stop(self.stop.signum)
        if signum is not None:
            raise self.interrupted(signum, f"after epoch {epoch}/{recipe.epochs}")
        return False

    def _record_samples(self, epoch: int) -> None:
        """What the model now answers for the run's sample test digits (for a live view of the run)."""
        index = sample_indices(len(self.data.test_y), self.recipe.seed)
        logits = model_outputs(self.eval_model, self.data.test_x[index], len(index))
        digits = self.data.splits.test_images[index]
        self.report.record_samples(epoch, digits, self.data.splits.test_labels[index], logits.softmax(1).cpu())

    def fit(self, wall_start: float | None = None) -> RunResult:
        """Train the epochs left, then score the test set and write the results."""
        wall_start = time.perf_counter() if wall_start is None else wall_start
        try:
            with write_errors(self.run_dir, self.state_path):
                # Signals are caught from the first save on: one that comes before the first step stops after it.
                with stop_on_signals(self.stop):
                    self.begin()
                    first = self.start
                    epochs = range(first.epoch, self.recipe.epochs + 1) if not first.finished else range(0)
                    with self.report.metrics_file():
                        for epoch in epochs:
                            train_loss = self.train_one_epoch(epoch, first.batch if epoch == first.epoch else 0)
                            if self.end_epoch(epoch, train_loss):
                                break
                summary, figures = self.finish(wall_start)
        except KeyboardInterrupt as exc:
            # Ctrl-C outside the loop's own handlers (the results being written): the saved state still resumes.
            if isinstance(exc, Interrupted) or not self.state_path.exists():
                raise
            raise self.interrupted(signal.SIGINT, "while writing the results") from exc
        if self.context.is_main():
            chosen = f" (epoch {summary['selected_epoch']}, best on validation)" if self.recipe.val_size else ""
            print(
                f"test accuracy {100 * summary['test_accuracy']:.2f}%{chosen}  test loss {summary['test_loss']:.4f}  "
                f"training {summary['train_seconds']:.1f}s  run directory {self.run_dir}",
                flush=True,
            )
            if self.options.show:
                show(figures)
        return RunResult(run_dir=self.run_dir, summary=summary, history=self.history, model=self.eval_model)

    def begin(self) -> None:
        """The first state, config.json and metrics.jsonl, and the run's opening lines."""
        resumed = self.plan.saved is not None
        if not resumed:
            self.save_state(1, 0)

        def write_start() -> None:
            if resumed:
                remove_stale_temp_files(self.run_dir)
            self.report.start(self.config, self.history, self.step, resumed)

        self.context.run_on_main(write_start)
        recipe, first = self.recipe, self.start
        data = self.data
        if not resumed:
            epochs = f"{recipe.epochs} epoch{'s' if recipe.epochs != 1 else ''}"
            self.report.say(
                f"training {recipe.name}: {recipe.model} ({self.parameters:,} parameters) on {data.splits.spec.name} "
                f"({len(data.train_y):,} train / {len(data.eval_y):,} {data.eval_split}) for {epochs} on {self.device}"
            )
        else:
            self.report.say(
                f"resuming {self.run_dir}: {recipe.name}, epoch {min(first.epoch, recipe.epochs)}/{recipe.epochs}, "
                f"batch {first.batch}/{self.batches} on {self.device}"
            )
        if self.context.enabled:
            world = self.context.world_size
            self.report.say(
                f"data-parallel on {world} processes ({self.context.backend}): global batch "
                f"{recipe.batch_size}, {recipe.batch_size // world} per process"
                + (", synchronized batch norm" if self.plan.sync_bn else "")
            )
        self.report.open_board(self.history)

    def finish(self, wall_start: float) -> tuple[dict[str, Any], list[Path]]:
        """Keep the selected epoch's weights, score the test set once, write model.pt, figures and summary."""
        recipe, context = self.recipe, self.context
        last_epoch = self.history[-1]["epoch"]
        if self.best["state"] is not None and self.best["epoch"] != last_epoch:
            context.run_on_main(
                lambda: save_checkpoint(
                    self.run_dir / LAST_CHECKPOINT_NAME, self.eval_model, self.meta, metrics={"epoch": last_epoch}
                )
            )
            self.eval_model.load_state_dict(self.best["state"])
        selected_epoch = self.best["epoch"] or last_epoch
        context.broadcast_buffers(self.eval_model)
        # Rank 0 gathers every slice's logits: the predictions figure needs them.
        data = self.data
        test = evaluate(self.eval_model, data.test_x, data.test_y, recipe.eval_batch_size, context=context, gather=True)
        summary = {
            "recipe": recipe.name,
            "model": recipe.model,
            "dataset": data.splits.spec.name,
            "parameters": self.parameters,
            "epochs": last_epoch,
            "selected_epoch": selected_epoch,
            "selected_by": "best validation accuracy" if recipe.val_size else "last epoch",
            "val_accuracy": self.best["accuracy"] if recipe.val_size else None,
            "device": str(self.device),
            "threads": self.threads,
            "precision": self.precision,
            "test_accuracy": test.accuracy,
            "test_loss": test.loss,
            "final_train_loss": self.history[-1]["train_loss"],
            "train_seconds": self.train_seconds,
            "checkpoint": CHECKPOINT_NAME,
        }
        if context.enabled:
            summary["processes"] = context.world_size

        def write_results() -> list[Path]:
            scored = self.calibrate(summary, test)
            metrics = {"test_accuracy": scored.accuracy, "test_loss": scored.loss, "parameters": self.parameters}
            save_checkpoint(
                self.run_dir / CHECKPOINT_NAME, self.eval_model, self.meta, metrics={**metrics, "epoch": selected_epoch}
            )
            summary["wall_seconds"] = time.perf_counter() - wall_start
            images, classes = data.splits.test_images, data.splits.spec.classes
            return self.report.write_results(self.history, scored, images, classes, recipe.seed, summary)

        return summary, context.run_on_main(write_results)

    def calibrate(self, summary: dict[str, Any], test: Evaluation) -> Evaluation:
        """Fit the kept weights' temperature on the validation split, into the model.pt's metadata (Guo et al.
        2017; see models.calibration), and return the test scores of the model.pt as saved: its logits divided
        by the temperature (the same labels; the loss is what `mnist-nn evaluate` then reports). A recipe that
        holds nothing out keeps T = 1: the test set is for judging, and ``mnist-nn calibrate`` can fit one later."""
        if self.data.eval_split != "val":
            return test
        logits = model_outputs(self.eval_model, self.data.eval_x, self.recipe.eval_batch_size, to_cpu=True)
        fit = fit_temperature(logits, self.data.eval_y)
        self.meta.calibration = fit.record("validation")
        summary["temperature"] = fit.temperature
        self.report.say(
            f"calibrated on {fit.images:,} validation digits: temperature {fit.temperature:.4g} "
            f"(NLL {fit.nll_before:.4f} -> {fit.nll_after:.4f}, ECE {100 * fit.ece_before:.2f}% -> "
            f"{100 * fit.ece_after:.2f}%)"
        )
        logits = test.logits / fit.temperature
        loss = nn.functional.cross_entropy(logits, test.labels, reduction="sum").double().item() / len(test.labels)
        summary["test_loss"] = loss
        return replace(test, logits=logits, loss=loss)

    # ----------------------------------------------------------------- divergence, stops and saves

    def running_loss(self) -> float:
        """The epoch's loss sum so far, over all processes: read only where the loop reads it anyway (log
        lines, saves, the epoch's end), so DDP adds no per-step host sync; every rank sees the same value
        and so stops on a divergence at the same batch."""
        return self.context.all_reduce_sum(self.loss_sum.detach().clone()).item()

    def check_finite(self, epoch: int, batch: int) -> float:
        """The one divergence check: the running loss sum, or a UserError naming the batches since the last check."""
        total = self.running_loss()
        if not math.isfinite(total):
            lr = self.optimizer.param_groups[0]["lr"]
            saved_epoch, saved_batch = self.last_saved
            raise UserError(
                f"training diverged: the loss became NaN or infinite in epoch {epoch}, batches {self.checked + 1}-"
                f"{batch} of {self.batches} (learning rate {lr:g}); the last good state (epoch {saved_epoch}, batch "
                f"{saved_batch}) is kept in {self.state_path}; try a lower learning rate, e.g. "
                f"{option('lr', metavar=f'{self.recipe.lr / 10:g}')}, or {option('grad_clip', 1)}"
            )
        self.checked = batch
        return total

    def after_step(self, epoch: int, batch: int) -> None:
        """The resume and signal layer: save the state every ``checkpoint_every`` steps, and after a
        SIGINT/SIGTERM save it and stop. Under DDP the ranks agree on a signal one step late, so that
        all stop after the same step."""
        every = self.plan.checkpoint_every
        due = every and self.step % every == 0 and batch < self.batches
        signum = self.context.agree_stop(self.stop.signum)
        if due or signum is not None:
            self.check_finite(epoch, batch)
            self.epoch_seconds = self._elapsed()
            self.save_state(epoch, batch)
            if signum is not None:
                self.report.end_epoch()
                raise self.interrupted(
                    signum, f"in epoch {epoch}/{self.recipe.epochs}, after batch {batch}/{self.batches}"
                )

    def interrupted(self, signum: int, where: str) -> Interrupted:
        return Interrupted(
            f"interrupted by {signal.Signals(signum).name} {where}; state saved in {self.state_path}; "
            f"resume with: mnist-nn train --resume {shlex.quote(str(self.run_dir))}",
            128 + signum,
        )

    def save_state(self, epoch: int, batch: int, *, done: bool = False, row: dict[str, Any] | None = None) -> None:
        """Everything the loop needs to continue from (epoch, batch done), written atomically by rank 0,
        after the epoch's metrics ``row`` when one is given.

        Under DDP, model, optimizer and EMA are the same on every rank; each rank's random streams and
        running loss are gathered, so that every rank resumes exactly where it stopped.
        """
        ranks = None
        total_loss = self.loss_sum.detach().clone()
        if self.context.enabled:
            ranks = self.context.gather_objects(
                {"rng": rng_states(self.augment_generator), "loss_sum": self.loss_sum.detach().cpu().clone()}
            )
            self.context.all_reduce_sum(total_loss)
        position = Position(epoch=epoch, batch=batch, step=self.step, finished=done)
        self.context.run_on_main(lambda: self._write_state(position, row, ranks, total_loss))
        self.last_saved = (epoch, batch)

    def _write_state(
        self, position: Position, row: dict[str, Any] | None, ranks: list[Any] | None, total_loss: torch.Tensor
    ) -> None:
        if row is not None:
            self.report.record(row)
        state = TrainState(
            checkpoint=self.meta,
            recipe=self.recipe.to_dict(),
            config=self.config,
            options={
                "checkpoint_every": self.plan.checkpoint_every,
                "deterministic": self.plan.deterministic,
                "sync_bn": self.plan.sync_bn,
            },
            position=position,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            rng=rng_states(self.augment_generator),
            # The epoch's running loss over all ranks (what a resume on one process continues from).
            loss_sum=total_loss,
            ranks=ranks,
            history=self.history,
            best=self.best,
            train_seconds=self.train_seconds,
            epoch_seconds=self.epoch_seconds,
        )
        state.save(self.state_path)

    def restore(self, saved: TrainState) -> None:
        """Continue from a saved state: weights, optimizer, EMA, random streams, running loss and history."""
        start, rank = saved.position, self.context.rank
        if start.finished and (self.run_dir / "summary.json").exists():
            raise UserError(f"run {self.run_dir} has already finished (see its summary.json); nothing to resume")
        self.config = saved.config
        self.start, self.step = start, start.step
        self.last_saved = (start.epoch, start.batch)
        with damaged_state(self.state_path):
            load_weights(self.model, saved.model, self.state_path, self.recipe.model)
            self.optimizer.load_state_dict(saved.optimizer)
            if self.ema is not None:
                self.ema.load_state_dict(saved.ema)
            # A data-parallel state holds every rank's random streams and running loss; a rank the state
            # does not know (resumed on more processes) starts fresh streams from (seed, rank, step).
            if self.context.enabled and saved.ranks is not None and rank < len(saved.ranks):
                restore_rng_states(saved.ranks[rank]["rng"], self.augment_generator)
                self.loss_sum = saved.ranks[rank]["loss_sum"].to(self.device)
            elif rank == 0:
                restore_rng_states(saved.rng, self.augment_generator)
                self.loss_sum = saved.loss_sum.to(self.device)
            else:
                fresh = distributed.rank_seed(self.recipe.seed + self.step, rank)
                torch.manual_seed(fresh)
                self.augment_generator.manual_seed(fresh)
            self.history = [dict(row) for row in saved.history]
            self.best = dict(saved.best)
            self.train_seconds, self.epoch_seconds = float(saved.train_seconds), float(saved.epoch_seconds)
            if not 0 <= start.batch <= self.batches or not 1 <= start.epoch <= self.recipe.epochs + 1:
                raise ValueError(f"position epoch {start.epoch}, batch {start.batch} is outside the run")

    def _elapsed(self) -> float:
        """Seconds spent in the epoch in progress, including those before a resume."""
        started, before = self._clock
        return before + time.perf_counter() - started


def _compile(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile for the training forward/backward; on CUDA "max-autotune" also captures CUDA graphs,
    which removes the per-kernel launch cost that dominates these tiny networks' steps."""
    mode = "max-autotune" if device.type == "cuda" else "default"
    return torch.compile(model, mode=mode)


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}
