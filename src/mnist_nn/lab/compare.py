"""Compare training runs: their curves overlaid in one PNG, and a table of what differs and what it gave.

Everything is read from the run directories' files (``config.json``, ``metrics.jsonl``,
``summary.json``), so a run still training, one that stopped, one resumed or a data-parallel run
(rank 0's directory) compare alike. ``mnist-nn compare RUN_DIR...`` prints ``format_table``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_nn.core.errors import UserError
from mnist_nn.core.fsutil import png_destination

# Recipe fields that say nothing about how a run trains: the name has its own row, the description follows it.
NOT_COMPARED = ("name", "description")
# The files a training run writes as it goes: the newest of them says when the run last made progress.
PROGRESS_FILES = ("batches.jsonl", "metrics.jsonl", "state.pt", "config.json")
# What compare reads of each metrics.jsonl row and of summary.json.
ROW_KEYS = ("epoch", "train_loss", "eval_split", "eval_loss", "eval_accuracy", "train_seconds")
SUMMARY_KEYS = ("test_accuracy", "test_loss", "train_seconds")
# A run with no summary.json whose files were written within this many seconds (or three of its epochs,
# when longer) is taken to be training still; an older one has stopped (interrupted, diverged or killed).
RUNNING_WINDOW = 120.0
# The runs' names in the default figure's file name, at most this long (then the first two, a count and a hash).
MAX_NAME_CHARS = 80


@dataclass
class Run:
    """One run directory as its files describe it."""

    path: Path
    name: str
    recipe: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any] | None
    status: str  # "finished", "running" or "stopped"

    @property
    def train_seconds(self) -> float | None:
        if self.summary is not None:
            return float(self.summary["train_seconds"])
        return float(self.history[-1]["train_seconds"]) if self.history else None

    def result(self) -> dict[str, Any]:
        """The run's score: the test set for a finished run, else the last epoch's evaluation (or nothing yet)."""
        if self.summary is not None:
            return {
                "accuracy": self.summary["test_accuracy"],
                "loss": self.summary["test_loss"],
                "split": "test",
                "epoch": self.summary.get("selected_epoch", self.summary.get("epochs")),
            }
        if not self.history:
            return {"accuracy": None, "loss": None, "split": None, "epoch": None}
        last = self.history[-1]
        return {
            "accuracy": last["eval_accuracy"],
            "loss": last["eval_loss"],
            "split": last["eval_split"],
            "epoch": last["epoch"],
        }


def read_run(path: str | os.PathLike, now: float | None = None) -> Run:
    """Read a run directory; a folder that is not one is a UserError. ``now``: the time to judge "running" by."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such run directory")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a run directory (a folder written by mnist-nn train)")
    config = _read_json(path / "config.json", path)
    if config is None:
        raise UserError(f"{path} is not a run directory: it has no config.json (mnist-nn train writes one first)")
    if not isinstance(config, dict) or not isinstance(config.get("recipe"), dict):
        raise UserError(f"{path}/config.json is not a run's configuration (it has no recipe)")
    history = read_metrics(path / "metrics.jsonl")
    summary = _read_json(path / "summary.json", path)
    if summary is not None and not (isinstance(summary, dict) and all(key in summary for key in SUMMARY_KEYS)):
        raise UserError(f"{path}/summary.json is not a run's summary (it lacks the test accuracy, loss or time)")
    status = "finished" if summary is not None else _progress(path, history, time.time() if now is None else now)
    return Run(path, path.resolve().name, config["recipe"], history, summary, status)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows; a last line still being written (or cut short by a kill) ends them."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            break
        if not (isinstance(row, dict) and all(key in row for key in ROW_KEYS)):
            break
        rows.append(row)
    return rows


def _read_json(path: Path, run: Path) -> Any:
    """A JSON file of a run, or None when it does not exist."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is damaged (not valid JSON); is {run} a run directory?") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None


def _progress(path: Path, history: list[dict[str, Any]], now: float) -> str:
    """Whether an unfinished run is "running" (it wrote a progress file recently) or "stopped": a guess from
    the files' times, since a run leaves no mark of the process that trains it."""
    times = [(path / name).stat().st_mtime for name in PROGRESS_FILES if (path / name).exists()]
    longest_epoch = max((float(row.get("epoch_seconds", 0.0)) for row in history), default=0.0)
    window = max(RUNNING_WINDOW, 3 * longest_epoch)
    return "running" if times and now - max(times) <= window else "stopped"


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Each run's folder name; where two share a name, the path as given tells them apart."""
    names = [path.resolve().name for path in paths]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths, strict=True)]


def differing_fields(runs: Sequence[Run]) -> list[str]:
    """The recipe fields whose values are not the same in every run (in the recipe's field order)."""
    order: list[str] = []
    for run in runs:
        order += [key for key in run.recipe if key not in order and key not in NOT_COMPARED]
    missing = object()

    def canonical(value: Any) -> str:
        return "<missing>" if value is missing else json.dumps(value, sort_keys=True)

    return [key for key in order if len({canonical(run.recipe.get(key, missing)) for run in runs}) > 1]


def default_figure(runs: Sequence[Run]) -> Path:
    """compare-A+B.png in the runs' common folder: beside them, and another set of runs gets another file."""
    parents = [str(run.path.parent) for run in runs]
    try:
        folder = Path(os.path.commonpath(parents))
    except ValueError:  # relative and absolute paths mixed
        folder = Path(os.path.commonpath([os.path.abspath(parent) for parent in parents]))
    names = [run.name.replace("/", "_") for run in runs]
    joined = "+".join(names)
    if len(joined) > MAX_NAME_CHARS:
        digest = hashlib.sha1("\0".join(str(run.path.resolve()) for run in runs).encode()).hexdigest()[:8]
        joined = f"{'+'.join(names[:2])[:MAX_NAME_CHARS]}+{len(names) - 2}-more-{digest}"
    return folder / f"compare-{joined}.png"


def compare_runs(paths: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read the runs, write the overlaid curves to ``out`` (default: ``default_figure``) and return the comparison
    (what --json prints)."""
    if not paths:
        raise UserError("compare needs at least one run directory")
    runs = [read_run(path) for path in paths]
    for run, label in zip(runs, run_labels([run.path for run in runs]), strict=True):
        run.name = label
    out = png_destination(default_figure(runs) if out is None else out, default=out is None)
    fields = differing_fields(runs)
    rows = []
    for run in runs:
        rows.append(
            {
                "run": run.name,
                "path": str(run.path),
                "status": run.status,
                "recipe": run.recipe.get("name"),
                "epochs_done": len(run.history),
                "epochs": run.recipe.get("epochs"),
                "differing": {key: run.recipe.get(key) for key in fields},
                **run.result(),
                "train_seconds": run.train_seconds,
            }
        )
    from mnist_nn.core import plots  # loads matplotlib and torch: after the input is known to be good

    plots.save_figure(comparison_figure(runs), out)
    return {"runs": rows, "differing_fields": fields, "figure": str(out)}


def comparison_figure(runs: Sequence[Run]) -> Any:
    """Loss per epoch (train solid, evaluation dashed) and evaluation accuracy per epoch, one colour per run."""
    import matplotlib.pyplot as plt

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.get_cmap("tab10")
    for index, run in enumerate(runs):
        colour = colours(index % 10)
        epochs = [row["epoch"] for row in run.history]
        split = run.history[-1]["eval_split"] if run.history else "eval"
        label = run.name if run.status == "finished" else f"{run.name} ({run.status})"
        loss_axes.plot(epochs, [row["train_loss"] for row in run.history], color=colour, marker="o", label=label)
        loss_axes.plot(epochs, [row["eval_loss"] for row in run.history], color=colour, marker="s", linestyle="--")
        accuracy = [100 * row["eval_accuracy"] for row in run.history]
        accuracy_axes.plot(epochs, accuracy, color=colour, marker="o", label=f"{label}, on {split}")
    loss_axes.plot([], [], color="grey", marker="o", label="train loss (solid)")
    loss_axes.plot([], [], color="grey", marker="s", linestyle="--", label="evaluation loss (dashed)")
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss per epoch")
    accuracy_axes.set(xlabel="epoch", ylabel="evaluation accuracy (%)", title="Evaluation accuracy per epoch")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        axes.xaxis.get_major_locator().set_params(integer=True)
    return figure


def _value(value: Any) -> str:
    """A recipe field's value in a table cell; "-" for one the run's recipe does not have (an older version's)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list, bool)):
        return json.dumps(value)
    return str(value)


def format_table(report: dict[str, Any]) -> str:
    """The comparison for a terminal: one column per run, one row per property, the differing recipe fields
    in a block of their own."""
    runs = report["runs"]

    def optional(key: str, form: str) -> list[str]:
        return [form.format(row[key]) if row[key] is not None else "-" for row in runs]

    head = [
        ("run", [row["run"] for row in runs]),
        ("status", [row["status"] for row in runs]),
        ("recipe", [str(row["recipe"]) for row in runs]),
        ("epochs", [f"{row['epochs_done']}/{row['epochs']}" for row in runs]),
    ]
    differing = [(key, [_value(row["differing"][key]) for row in runs]) for key in report["differing_fields"]]
    results = [
        ("accuracy", [f"{100 * row['accuracy']:.2f}%" if row["accuracy"] is not None else "-" for row in runs]),
        ("loss", optional("loss", "{:.4f}")),
        ("scored on", [_scored_on(row) for row in runs]),
        ("training time", optional("train_seconds", "{:.1f} s")),
    ]
    rows = head + differing + results
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(values[i]) for _, values in rows) for i in range(len(runs))]

    def line(label: str, values: list[str]) -> str:
        cells = "  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True))
        return f"{label.ljust(label_width)}  {cells}".rstrip()

    lines = [line(label, values) for label, values in head]
    if differing:
        lines.append("-- recipe fields that differ:")
        lines += [line(label, values) for label, values in differing]
        lines.append("--")
    elif len(runs) > 1:
        lines.append("-- recipe fields: the same in every run")
    lines += [line(label, values) for label, values in results]
    lines.append(f"curves: {report['figure']}")
    return "\n".join(lines)


def _scored_on(row: dict[str, Any]) -> str:
    if row["split"] is None:
        return "no epoch yet"
    if row["status"] == "finished":
        return f"test set (epoch {row['epoch']})"
    return f"{row['split']}, epoch {row['epoch']}"
