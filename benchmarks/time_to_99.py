"""Seconds of training until 99.0% test accuracy: PyTorch's MNIST example recipe vs the `cnn-fast` recipe.

    python benchmarks/time_to_99.py                      # 3 repetitions of each
    python benchmarks/time_to_99.py --repeats 1 --baseline-epochs 4

The example's time is that of its first epoch whose test accuracy is >= 99.0% (its EPOCH lines
give cumulative training seconds, evaluation excluded). `cnn-fast` is a fixed short schedule:
its time is the training time of the whole run, counted only if its test accuracy is >= 99.0%.
Writes benchmarks/results/time-to-99.json with the host
(CPU model, cores, AMX, AVX-512, torch; the GPU's name when one is used). On a machine with a CUDA
GPU the baseline script trains on it, and `mnist-nn train --device auto` wherever a step of the recipe
is faster: the result records both sides' devices. `CUDA_VISIBLE_DEVICES=` measures the CPU.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    RESULTS,
    ROOT,
    announce_host,
    default_data_dir,
    describe,
    parse_fields,
    sides_devices,
    train_cli,
    write_result,
)

BASELINE = ROOT.parent / "shared" / "baselines" / "examples_cnn.py"
TARGET = 0.99


def baseline_epochs(command: list[str]) -> list[dict[str, float]]:
    """Run the example, reading its EPOCH lines as they come; stop it once one reaches the target.

    Later epochs cannot change its time to 99%, and each costs minutes on a small CPU.
    """
    epochs = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        for line in process.stdout:
            if line.startswith("EPOCH"):
                epochs.append(parse_fields(line))
                if epochs[-1]["test_accuracy"] >= TARGET:
                    process.terminate()
                    break
        _, stderr = process.communicate()
        if process.returncode not in (0, -signal.SIGTERM):
            raise SystemExit(f"benchmark: {' '.join(command)} failed ({process.returncode}):\n{stderr[-2000:]}")
    return epochs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--baseline-epochs", type=int, default=6, help="most epochs the example may take to reach 99%% (it stops there)"
    )
    parser.add_argument("--recipe", default="cnn-fast")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (smoke runs)")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="PyTorch's MNIST example recipe")
    parser.add_argument("--name", default="time-to-99")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    announce_host("auto")

    baseline, ours = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            epochs = baseline_epochs(
                [
                    sys.executable,
                    str(args.baseline),
                    "--data-dir",
                    args.data_dir,
                    "--epochs",
                    str(args.baseline_epochs),
                    "--seed",
                    str(repeat + 1),
                ]
            )
            reached = next((e for e in epochs if e["test_accuracy"] >= TARGET), None)
            baseline.append(
                {
                    "seconds_to_99": reached["seconds"] if reached else None,
                    "epochs": [{"seconds": e["seconds"], "test_accuracy": e["test_accuracy"]} for e in epochs],
                }
            )
            out = Path(scratch) / f"run{repeat}"
            epochs_flag = ["--epochs", str(args.epochs)] if args.epochs else []
            summary, _ = train_cli(args.recipe, out, args.data_dir, "--seed", str(repeat), *epochs_flag)
            ok = summary["test_accuracy"] >= TARGET
            ours.append(
                {
                    "seconds_to_99": summary["train_seconds"] if ok else None,
                    "train_seconds": summary["train_seconds"],
                    "test_accuracy": summary["test_accuracy"],
                    "device": summary["device"],
                }
            )
            print(
                f"repeat {repeat + 1}/{args.repeats}: example {baseline[-1]['seconds_to_99']}s, "
                f"{args.recipe} {summary['train_seconds']:.1f}s at {100 * summary['test_accuracy']:.2f}%",
                flush=True,
            )

    def times(rows):
        values = [r["seconds_to_99"] for r in rows if r["seconds_to_99"] is not None]
        return describe(values) if values else None

    data = {
        "recipe": args.recipe,
        "target": TARGET,
        "repeats": args.repeats,
        "baseline": times(baseline),
        "ours": times(ours),
        "baseline_reached": sum(r["seconds_to_99"] is not None for r in baseline),
        "ours_reached": sum(r["seconds_to_99"] is not None for r in ours),
        "baseline_runs": baseline,
        "ours_runs": ours,
        "devices": sides_devices(ours),
    }
    if data["baseline"] and data["ours"]:
        data["speedup"] = data["baseline"]["median"] / data["ours"]["median"]
    cuda = any(d.startswith("cuda") for d in [data["devices"]["baseline"], *data["devices"]["ours"]])
    path = write_result(args.name, data, args.results or RESULTS, device="cuda" if cuda else "cpu")
    if "speedup" in data:
        print(
            f"time to 99% (median of {args.repeats}): example {data['baseline']['median']:.1f}s, "
            f"{args.recipe} {data['ours']['median']:.1f}s: {data['speedup']:.1f}x sooner -> {path}"
        )
    else:
        print(
            f"99% not reached by both (example {data['baseline_reached']}/{args.repeats}, "
            f"{args.recipe} {data['ours_reached']}/{args.repeats}) -> {path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
