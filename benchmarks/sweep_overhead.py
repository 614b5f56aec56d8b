"""Optuna's overhead per trial of `mnist-nn sweep`: a one-epoch trial against the same training run alone.

    python benchmarks/sweep_overhead.py              # 3 pairs, the tutorial's network, 1 epoch, batch 512
    python benchmarks/sweep_overhead.py --pairs 5

Two figures, both in this process (torch and the data files already warm):

- **per trial, measured inside the sweep**: the wall time of one trial (Optuna's ``optimize`` call: the
  storage's trial row, the heartbeat, the sampler, the per-epoch ``report``/``should_prune``, the result
  written back) minus the time of the training inside it (``lab.sweep.trial.run_trial``: the run's plan, data,
  Trainer and ``fit``, exactly what ``mnist_nn.train`` does). This is the cost a sweep adds to each trial,
  free of the noise of the training itself.
- **end to end**: a one-trial sweep (study created in a new SQLite file, the trial, then the table, best.toml
  and the pictures) against ``mnist_nn.train`` of the same recipe, alternated, median of the differences.
  The one-off end-of-sweep report is part of it.

Writes benchmarks/results/sweep-overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import DEFAULT_DATA, announce_host, describe, write_result

RECIPE = 'base = "tutorial"\nshuffle = true\nbatch_size = 512\nval_size = 5000\nepochs = 1\n'
SPACE = "[lr]\nchoices = [0.003]\n"


def timed_trials() -> list[tuple[float, float]]:
    """Wrap the sweep's trial and training functions: each trial's (optimize wall, training wall)."""
    import optuna

    from mnist_nn.lab.sweep import trial as trial_module

    pairs: list[tuple[float, float]] = []
    inner: list[float] = []
    run_trial = trial_module.run_trial
    optimize = optuna.Study.optimize

    def timed_run_trial(*args, **kwargs):
        start = time.perf_counter()
        try:
            return run_trial(*args, **kwargs)
        finally:
            inner.append(time.perf_counter() - start)

    def timed_optimize(self, *args, **kwargs):
        start = time.perf_counter()
        optimize(self, *args, **kwargs)
        pairs.append((time.perf_counter() - start, inner.pop()))

    trial_module.run_trial = timed_run_trial
    optuna.Study.optimize = timed_optimize
    return pairs


def one_sweep(folder: Path, data_dir: str) -> float:
    from mnist_nn.lab.sweep import SweepOptions, run_sweep

    options = SweepOptions(
        recipe=str(folder / "recipe.toml"),
        space=str(folder / "space.toml"),
        trials=1,
        out=str(folder / f"sweep-{time.monotonic_ns()}"),
        data_dir=data_dir,
        device="cpu",
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run_sweep(options)
    return time.perf_counter() - start


def one_train(folder: Path, data_dir: str) -> float:
    import mnist_nn

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        mnist_nn.train(
            str(folder / "recipe.toml"), data_dir=data_dir, out=folder / f"train-{time.monotonic_ns()}", quiet=True
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="alternated sweep/train pairs (default: 3)")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_NN_DATA") or str(DEFAULT_DATA))
    args = parser.parse_args()
    host = announce_host("cpu")
    pairs = timed_trials()
    sweeps, trains = [], []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "recipe.toml").write_text(RECIPE)
        (folder / "space.toml").write_text(SPACE)
        one_train(folder, args.data_dir)  # warm-up: the data files in the OS cache, torch's first calls
        for index in range(args.pairs):
            print(f"pair {index + 1}/{args.pairs}", flush=True)
            sweeps.append(one_sweep(folder, args.data_dir))
            trains.append(one_train(folder, args.data_dir))
    per_trial = [outer - inner for outer, inner in pairs]
    end_to_end = [s - t for s, t in zip(sweeps, trains, strict=True)]
    result = {
        "recipe": RECIPE,
        "pairs": args.pairs,
        "per_trial_overhead_seconds": describe(per_trial),
        "end_to_end_difference_seconds": describe(end_to_end),
        "sweep_seconds": describe(sweeps),
        "train_seconds": describe(trains),
        "host": host,
    }
    print(f"Optuna per trial (trial wall - training inside it): median {statistics.median(per_trial):.3f} s")
    print(
        f"one-trial sweep {statistics.median(sweeps):.2f} s vs train {statistics.median(trains):.2f} s: "
        f"median difference {statistics.median(end_to_end):+.2f} s (includes the end-of-sweep table and pictures)"
    )
    print(f"wrote {write_result('sweep-overhead', result)}")


if __name__ == "__main__":
    main()
