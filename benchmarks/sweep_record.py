"""Record a finished `mnist-nn sweep` as a result file, and draw the optimizers lesson's picture from it.

    python benchmarks/sweep_record.py SWEEP_OUT --name tutorial
    python benchmarks/sweep_record.py SWEEP_OUT --name optimizers --figure docs/images/tutorial-optimizers-sweep.png

Reads the study in SWEEP_OUT/study.db and its trials' run directories; writes
benchmarks/results/sweep-NAME.json: every trial (state, values, validation accuracy, where it was pruned,
seconds, its per-epoch curve), the sweep's wall time from the first trial's start to the last one's end,
and the best trial of each optimizer. ``--compare FILE``: runs trained after the sweep (the lesson's
five-epoch runs, each optimizer at its best learning rate), as ``mnist-nn compare --json`` printed them.
``--figure``: validation accuracy against learning rate, one line per optimizer, beside each optimizer's
training loss at its best learning rate (the trials' batches.jsonl).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import write_result


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trial_record(trial: Any) -> dict[str, Any]:
    run = Path(trial.user_attrs.get("run_dir", "/nonexistent"))
    seconds = None
    if trial.datetime_start and trial.datetime_complete:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    keys = ("epoch", "train_loss", "eval_accuracy", "eval_loss", "lr", "epoch_seconds")
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "params": trial.params,
        "val_accuracy": trial.value,
        "pruned_at_epoch": trial.user_attrs.get("pruned_at_epoch"),
        "diverged": bool(trial.user_attrs.get("diverged")),
        "seconds": seconds,
        "run_dir": run.name,
        "epochs": [{k: row[k] for k in keys if k in row} for row in read_lines(run / "metrics.jsonl")],
        "batches": [[row["step"], row["train_loss"]] for row in read_lines(run / "batches.jsonl")],
    }


def record(out: Path, study_name: str) -> dict[str, Any]:
    import optuna

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{out.resolve() / 'study.db'}")
    trials = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    timed = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    wall = (max(t.datetime_complete for t in timed) - min(t.datetime_start for t in timed)).total_seconds()
    best_by_optimizer: dict[str, dict[str, Any]] = {}
    for trial in trials:
        label = str(trial["params"].get("optimizer"))
        if trial["state"] == "complete" and (
            label not in best_by_optimizer or trial["val_accuracy"] > best_by_optimizer[label]["val_accuracy"]
        ):
            best_by_optimizer[label] = trial
    states = [t["state"] for t in trials]
    return {
        "study": study_name,
        "trials": trials,
        "counts": {state: states.count(state) for state in sorted(set(states))},
        "wall_seconds": wall,
        "best": max((t for t in trials if t["state"] == "complete"), key=lambda t: t["val_accuracy"], default=None),
        "best_by_optimizer": {k: {"number": v["number"], **v["params"]} for k, v in best_by_optimizer.items()},
        "best_toml": (out / "best.toml").read_text() if (out / "best.toml").exists() else None,
    }


def draw(result: dict[str, Any], figure_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_lr, losses) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = list(dict.fromkeys(str(t["params"].get("optimizer")) for t in result["trials"]))
    colours = plt.get_cmap("tab10")
    for index, label in enumerate(labels):
        mine = sorted(
            (t for t in result["trials"] if str(t["params"].get("optimizer")) == label and t["state"] == "complete"),
            key=lambda t: t["params"]["lr"],
        )
        if not mine:
            continue
        colour = colours(index)
        by_lr.plot(
            [t["params"]["lr"] for t in mine], [100 * t["val_accuracy"] for t in mine], "o-", color=colour, label=label
        )
        best = max(mine, key=lambda t: t["val_accuracy"])
        steps = [point[0] for point in best["batches"]]
        losses.plot(
            steps, [point[1] for point in best["batches"]], color=colour, label=f"{label}, lr {best['params']['lr']:g}"
        )
    by_lr.set(xscale="log", xlabel="learning rate", ylabel="validation accuracy after 1 epoch (%)", ylim=(0, 100))
    by_lr.set_title("Each optimizer at each learning rate")
    by_lr.grid(alpha=0.3)
    by_lr.legend()
    losses.set(xlabel="step (batch of 256)", ylabel="training loss", yscale="log")
    losses.set_title("Each optimizer at its best learning rate")
    losses.grid(alpha=0.3)
    losses.legend()
    figure.tight_layout()
    figure.savefig(figure_path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the sweep's --out folder")
    parser.add_argument("--name", required=True, help="the result file is benchmarks/results/sweep-NAME.json")
    parser.add_argument("--study", default="sweep", help="the study's name (default: sweep)")
    parser.add_argument("--figure", type=Path, help="also draw the optimizers lesson's picture here")
    parser.add_argument(
        "--compare", type=Path, help="also keep a `mnist-nn compare --json` of runs trained after the sweep"
    )
    args = parser.parse_args()
    result = record(args.out, args.study)
    if args.compare:
        result["compare"] = json.loads(args.compare.read_text())
    print(f"{len(result['trials'])} trials {result['counts']}, wall {result['wall_seconds'] / 60:.1f} min")
    for label, best in result["best_by_optimizer"].items():
        print(f"  best {label}: {best}")
    if args.figure:
        draw(result, args.figure)
        print(f"wrote {args.figure}")
    print(f"wrote {write_result(f'sweep-{args.name}', result)}")


if __name__ == "__main__":
    main()
