"""What a sweep leaves: a line per trial while it runs, then a table, ``best.toml`` and pictures."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_nn.core.fsutil import atomic_write
from mnist_nn.lab.sweep.space import Dimension, recipe_values
from mnist_nn.lab.sweep.study import SURPLUS
from mnist_nn.lab.sweep.trial import DIVERGED, PRUNED_AT, RUN_DIR, trial_recipe
from mnist_nn.training.recipe_files import recipe_to_toml
from mnist_nn.training.recipes import Recipe

BEST_NAME = "best.toml"
CURVES_SHOWN = 5  # the best trials whose curves are overlaid


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={_short(value)}" for key, value in params.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def outcome(trial: FrozenTrial) -> str:
    """What became of a trial, in a few words: its value, or where and why it stopped."""
    attrs = trial.user_attrs
    if trial.state == TrialState.COMPLETE:
        return f"val {100 * trial.value:.2f}%"
    if trial.state == TrialState.PRUNED:
        why = " (diverged: NaN or infinite loss)" if attrs.get(DIVERGED) else ""
        return f"pruned at epoch {attrs.get(PRUNED_AT, trial.last_step)}{why}"
    if trial.state == TrialState.FAIL and attrs.get(SURPLUS):
        return "not run: the study reached --trials meanwhile"
    return trial.state.name.lower()


def progress_line(study: optuna.Study, trial: FrozenTrial) -> None:
    """The line printed as each trial ends (Optuna calls it after every trial of this worker)."""
    seconds = _seconds(trial)
    took = f"  ({seconds:.1f} s)" if seconds is not None else ""
    print(f"trial {trial.number:>3}  {params_text(trial.params):<60}  {outcome(trial)}{took}", flush=True)


def _seconds(trial: FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def trials_table(study: optuna.Study) -> str:
    """Every trial of the study: number, state, validation accuracy, values, seconds; best first."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]
    names = sorted({name for t in trials for name in t.params})
    header = ["trial", "state", "val acc", *names, "seconds"]
    rows = []
    for trial in sorted(trials, key=lambda t: (-(t.value if t.value is not None else -math.inf), t.number)):
        value = f"{100 * trial.value:.2f}%" if trial.value is not None else "-"
        state = trial.state.name.lower()
        if trial.state == TrialState.PRUNED:
            state += f"@{trial.user_attrs.get(PRUNED_AT, trial.last_step)}"
        seconds = _seconds(trial)
        rows.append(
            [
                str(trial.number),
                state,
                value,
                *(_short(trial.params.get(n, "-")) for n in names),
                f"{seconds:.0f}" if seconds is not None else "-",
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *rows]]
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    lines.append(
        f"{len(trials)} trials: {counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running"
    )
    return "\n".join(lines)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


def write_best(study: optuna.Study, base: Recipe, out: Path, dimensions: list[Dimension]) -> Path | None:
    """best.toml: the best trial's recipe, as a file `mnist-nn train --recipe` takes."""
    best = best_trial(study)
    if best is None:
        return None
    recipe = trial_recipe(base, recipe_values(best.params, dimensions), best.number).replace(
        name="best", description=f"the best trial ({best.number}) of sweep {study.study_name}"
    )
    header = (
        f"the best trial of study {study.study_name!r}: trial {best.number}, validation accuracy "
        f"{100 * best.value:.2f}%\n{params_text(best.params)}\ntrain it: mnist-nn train --recipe {out / BEST_NAME}"
    )
    text = recipe_to_toml(recipe, base=base.name, header=header)
    return atomic_write(out / BEST_NAME, lambda handle: handle.write(text.encode()))


def write_pictures(study: optuna.Study, out: Path) -> list[Path]:
    """Optuna's history, importances and parallel coordinates, and the best trials' curves overlaid."""
    from optuna.visualization import matplotlib as optuna_plots

    from mnist_nn.core import plots

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    drawers = {"sweep-history.png": optuna_plots.plot_optimization_history}
    if len(complete) >= 2 and any(len({str(t.params.get(n)) for t in complete}) > 1 for n in complete[0].params):
        drawers["sweep-importances.png"] = optuna_plots.plot_param_importances
        drawers["sweep-parallel.png"] = optuna_plots.plot_parallel_coordinate
    written = []
    for name, draw in drawers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            axes = draw(study)
        written.append(plots.save_figure(axes.figure, out / name))
    curves = _best_curves(complete, out)
    return written + ([curves] if curves is not None else [])


def _best_curves(complete: list[FrozenTrial], out: Path) -> Path | None:
    """The best trials' loss and accuracy per epoch, overlaid by `compare` (those whose run is on this machine)."""
    from mnist_nn.lab.compare import compare_runs

    best = sorted(complete, key=lambda t: -t.value)[:CURVES_SHOWN]
    runs = [t.user_attrs[RUN_DIR] for t in best if RUN_DIR in t.user_attrs and Path(t.user_attrs[RUN_DIR]).is_dir()]
    if not runs:
        return None
    compare_runs(runs, out=out / "sweep-best-curves.png")
    return out / "sweep-best-curves.png"
