"""One trial of a sweep: an ordinary training run, in its own run directory, that reports to Optuna.

The run is the project's ``Trainer``, unchanged but for two hooks: after each epoch's evaluation (on the
validation split: a sweep never selects on the test set) it reports the accuracy to the trial and stops
when the pruner says so; and a loss that turns NaN or infinite prunes the trial instead of ending the
sweep. So ``watch``, ``compare`` and ``evaluate`` work on a trial's run directory as on any run.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import optuna

from mnist_nn.core.device import configure_cpu, resolve_device
from mnist_nn.core.errors import UserError
from mnist_nn.training import distributed
from mnist_nn.training.recipe_files import FIELD_TYPES
from mnist_nn.training.recipes import Recipe
from mnist_nn.training.run_plan import plan_run
from mnist_nn.training.trainer import RunOptions, RunResult, Trainer, training_device

# Trial attributes the progress lines and the report read.
PRUNED_AT = "pruned_at_epoch"
DIVERGED = "diverged"
RUN_DIR = "run_dir"


class TrialTrainer(Trainer):
    """The Trainer with the trial's two hooks (see the module's docstring)."""

    trial: optuna.Trial

    def end_epoch(self, epoch: int, train_loss: float) -> bool:
        stop = super().end_epoch(epoch, train_loss)
        accuracy = self.history[-1]["eval_accuracy"]
        self.trial.report(accuracy, epoch)
        # After the last epoch the training is done: pruning would save nothing and lose a finished result.
        if epoch < self.recipe.epochs and self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_AT, epoch)
            self.report.say(f"pruned after epoch {epoch}: validation accuracy {100 * accuracy:.2f}%")
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")
        return stop

    def check_finite(self, epoch: int, batch: int) -> float:
        try:
            return super().check_finite(epoch, batch)
        except UserError:
            self.trial.set_user_attr(PRUNED_AT, epoch)
            self.trial.set_user_attr(DIVERGED, True)
            raise optuna.TrialPruned(f"diverged in epoch {epoch}") from None


def run_trial(
    trial: optuna.Trial, recipe: Recipe, run_dir: Path, data_dir: str | None, device: str
) -> tuple[float, RunResult]:
    """Train ``recipe`` as the trial: its best validation accuracy (raises TrialPruned when pruned)."""
    options = RunOptions(data_dir=data_dir, out=run_dir, device=device, quiet=True, progress=False)
    trial.set_user_attr(RUN_DIR, str(run_dir))
    trainer = _trainer(trial, recipe, options)
    # The run's closing line names its test accuracy: the sweep prints its own line per trial instead,
    # and chooses on the validation accuracy alone.
    with contextlib.redirect_stdout(io.StringIO()):
        result = trainer.fit()
    return float(result.summary["val_accuracy"]), result


def _trainer(trial: optuna.Trial, recipe: Recipe, options: RunOptions) -> TrialTrainer:
    """Built as ``trainer.single_process_trainer`` builds a Trainer, but of the trial's class."""
    threads = configure_cpu()
    plan = plan_run(
        recipe,
        {},
        out=options.out,
        resume=None,
        checkpoint_every=None,
        deterministic=None,
        sync_bn=None,
        tensorboard=False,
        world_size=1,
    )
    context = distributed.Context()
    device, choice = training_device(options, plan, context, resolve_device(options.device))
    trainer = TrialTrainer(plan, options, context, device, threads, choice)
    trainer.trial = trial  # read by the hooks, which run from the first epoch on
    return trainer


def trial_recipe(base: Recipe, params: dict[str, Any], number: int) -> Recipe:
    """The base recipe with the trial's values (a number drawn for a float field as a float)."""
    values = {k: float(v) if FIELD_TYPES[k] == "float" else v for k, v in params.items()}
    return base.replace(**values, description=f"sweep trial {number}: {base.description}")
