"""The tutorial's own script vs `mnist-nn train --recipe tutorial`, alternately, N times, same epochs.

    python benchmarks/tutorial.py                  # 25 epochs, 3 repetitions of each
    python benchmarks/tutorial.py --epochs 2 --repeats 1

Reports the median training seconds of each, min–max, the ratio, and both test accuracies;
writes benchmarks/results/tutorial.json with the host
(CPU model, cores, AMX, AVX-512, torch; the GPU's name when one is used). On a machine with a CUDA
GPU the baseline script trains on it, and `mnist-nn train --device auto` wherever a step of the recipe
is faster: the result records both sides' devices. `CUDA_VISIBLE_DEVICES=` measures the CPU.
"""

from __future__ import annotations

import argparse
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
    run,
    sides_devices,
    train_cli,
    write_result,
)

BASELINE = ROOT.parent / "shared" / "baselines" / "tutorial_mlp.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--baseline", type=Path, default=BASELINE, help="the tutorial's script")
    parser.add_argument("--name", default="tutorial", help="result file name (benchmarks/results/NAME.json)")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    announce_host("auto")

    baseline, ours = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            stdout, wall = run(
                [sys.executable, str(args.baseline), "--data-dir", args.data_dir, "--epochs", str(args.epochs)]
            )
            result = parse_fields([line for line in stdout.splitlines() if line.startswith("RESULT")][-1])
            baseline.append(
                {
                    "train_seconds": result["train_seconds"],
                    "wall_seconds": wall,
                    "test_accuracy": result["test_accuracy"],
                }
            )
            out = Path(scratch) / f"run{repeat}"
            summary, wall = train_cli("tutorial", out, args.data_dir, "--epochs", str(args.epochs))
            ours.append(
                {
                    "train_seconds": summary["train_seconds"],
                    "wall_seconds": wall,
                    "test_accuracy": summary["test_accuracy"],
                    "device": summary["device"],
                }
            )
            print(
                f"repeat {repeat + 1}/{args.repeats}: tutorial script {baseline[-1]['train_seconds']:.1f}s "
                f"({100 * baseline[-1]['test_accuracy']:.2f}%), mnist-nn {ours[-1]['train_seconds']:.1f}s "
                f"({100 * ours[-1]['test_accuracy']:.2f}%)",
                flush=True,
            )

    def summarize(rows):
        return {key: describe([r[key] for r in rows]) for key in ("train_seconds", "wall_seconds", "test_accuracy")}

    data = {
        "epochs": args.epochs,
        "repeats": args.repeats,
        "baseline": summarize(baseline),
        "ours": summarize(ours),
        "baseline_runs": baseline,
        "ours_runs": ours,
        "devices": sides_devices(ours),
    }
    data["ratio_train_seconds"] = data["ours"]["train_seconds"]["median"] / data["baseline"]["train_seconds"]["median"]
    data["speedup"] = 1 / data["ratio_train_seconds"]
    cuda = any(d.startswith("cuda") for d in [data["devices"]["baseline"], *data["devices"]["ours"]])
    path = write_result(args.name, data, args.results or RESULTS, device="cuda" if cuda else "cpu")
    b, o = data["baseline"]["train_seconds"], data["ours"]["train_seconds"]
    print(
        f"training time, median of {args.repeats}: tutorial script {b['median']:.1f}s ({b['min']:.1f}–{b['max']:.1f}), "
        f"mnist-nn {o['median']:.1f}s ({o['min']:.1f}–{o['max']:.1f}); ratio {data['ratio_train_seconds']:.3f} "
        f"({data['speedup']:.1f}x faster) -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
