"""``mnist-nn sweep``: search a recipe's fields with Optuna, prune bad trials, keep the best as a recipe file.

``run_sweep`` checks everything it is given (the recipe, the space file, the storage) before the first
trial, then runs trials until the study holds ``trials`` finished ones; each trial is an ordinary run
directory under ``out`` (``trial.py``). At the end, and on Ctrl-C, it prints the table of trials and writes
``best.toml`` and the pictures (``report.py``). Several workers, on one machine or many, share a study
through its storage (``study.py``).
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from mnist_nn.core.errors import Interrupted, UserError, option
from mnist_nn.training.recipes import Recipe

__all__ = ["SweepOptions", "run_sweep"]

# A sweep selects on held-out training images; a recipe that holds none out (the tutorial) gets this many.
DEFAULT_VAL_SIZE = 5000


@dataclass(frozen=True)
class SweepOptions:
    recipe: str
    space: str
    trials: int
    out: str
    epochs: int | None = None
    timeout: float | None = None
    pruner: str = "median"
    storage: str | None = None
    study: str = "sweep"
    seed: int | None = None
    data_dir: str | None = None
    device: str = "auto"
    heartbeat: int = 30
    sampler: str = "tpe"


def check_options(options: SweepOptions) -> None:
    from mnist_nn.lab.sweep.study import PRUNERS, SAMPLERS

    if options.trials < 1:
        raise UserError(f"{option('trials')} must be a positive integer, got {options.trials}")
    if options.timeout is not None and not options.timeout > 0:
        raise UserError(f"{option('timeout')} must be a positive number of seconds, got {options.timeout}")
    if options.sampler not in SAMPLERS:
        raise UserError(f"{option('sampler')} must be one of {', '.join(SAMPLERS)}, got {options.sampler!r}")
    if options.pruner not in PRUNERS:
        raise UserError(f"{option('pruner')} must be one of {', '.join(PRUNERS)}, got {options.pruner!r}")
    if options.heartbeat < 1:
        raise UserError(f"{option('heartbeat')} must be a positive number of seconds, got {options.heartbeat}")
    if not options.study:
        raise UserError(f"{option('study')} must not be empty")


def sweep_recipe(options: SweepOptions) -> Recipe:
    """The recipe every trial starts from: --epochs applied, and a validation split to select on."""
    from mnist_nn.training.run_plan import resolve_recipe

    recipe = resolve_recipe(options.recipe, **({"epochs": options.epochs} if options.epochs else {}))
    if not recipe.val_size:
        print(f"{recipe.name} holds no validation split: each trial holds out {DEFAULT_VAL_SIZE} training images")
        recipe = recipe.replace(val_size=DEFAULT_VAL_SIZE)
    return recipe


def run_sweep(options: SweepOptions) -> int:
    """The sweep; returns the number of finished trials in the study."""
    import optuna

    from mnist_nn.lab.sweep import report
    from mnist_nn.lab.sweep.space import grid, load_space
    from mnist_nn.lab.sweep.study import StudySettings, default_storage, open_study, work

    check_options(options)
    base = sweep_recipe(options)
    dimensions = load_space(options.space, base)
    space = grid(dimensions, options.space) if options.sampler == "grid" else None
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option('out')} {out} exists and is not a folder")
    created = not out.exists()
    url = options.storage or default_storage(out)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is printed here instead
    # Heartbeats are "experimental" in Optuna (since 2.9); the warning would repeat before every trial.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    settings = StudySettings(
        url, options.study, options.pruner, base.epochs, options.seed, options.heartbeat, options.sampler, space
    )
    try:
        if options.storage is None:
            out.mkdir(parents=True, exist_ok=True)  # the default storage lives in --out
        study = open_study(settings)
    except UserError:
        if created and out.exists():
            shutil.rmtree(out)  # nothing half-made is left behind
        raise
    out.mkdir(parents=True, exist_ok=True)
    print(f"study {options.study!r} in {report_url(url)}: {len(study.trials)} trials so far; searching")
    for dimension in dimensions:
        print(f"  {dimension.describe()}")
    objective = make_objective(base, dimensions, out, options)
    deadline = time.monotonic() + options.timeout if options.timeout else None
    try:
        work(study, objective, options.trials, deadline, report.progress_line, poll=min(options.heartbeat, 5))
    except KeyboardInterrupt:
        finish(study, base, out, dimensions)
        raise Interrupted(
            "sweep interrupted; its trials so far are kept: run the same command again to continue the study", 130
        ) from None
    return finish(study, base, out, dimensions)


def report_url(url: str) -> str:
    from mnist_nn.lab.sweep.study import redact

    return redact(url)


def make_objective(base: Recipe, dimensions: list, out: Path, options: SweepOptions):
    """Optuna's objective: draw the trial's values, train them in the trial's run directory, return val accuracy."""
    from mnist_nn.lab.sweep.space import recipe_values, suggest
    from mnist_nn.lab.sweep.study import check_not_surplus
    from mnist_nn.lab.sweep.trial import run_trial, trial_recipe

    def objective(trial) -> float:
        check_not_surplus(trial, options.trials)
        recipe = trial_recipe(base, recipe_values(suggest(trial, dimensions), dimensions), trial.number)
        # A worker's own folder name beside the number: workers on one --out never take each other's folder.
        run_dir = out / f"trial-{trial.number:04d}"
        if run_dir.exists():
            run_dir = out / f"trial-{trial.number:04d}-{os.getpid()}"
        accuracy, _ = run_trial(trial, recipe, run_dir, options.data_dir, options.device)
        return accuracy

    return objective


def finish(study, base: Recipe, out: Path, dimensions: list) -> int:
    from mnist_nn.lab.sweep import report
    from mnist_nn.lab.sweep.study import FINISHED, count

    print(report.trials_table(study))
    best = report.write_best(study, base, out, dimensions)
    pictures = report.write_pictures(study, out)
    if best is not None:
        number = report.best_trial(study).number
        print(f"best: trial {number}, written to {best}; train it: mnist-nn train --recipe {best}")
    else:
        print("no trial completed: no best.toml written")
    if pictures:
        print("pictures: " + ", ".join(str(p) for p in pictures))
    return count(study, FINISHED)
