"""One process vs N data-parallel processes (torchrun, gloo on the CPU), alternately, same recipe and epochs.

    python benchmarks/ddp.py                                  # cnn-fast, 1 epoch, 1 vs 2 processes, 3 repeats
    python benchmarks/ddp.py --recipe tutorial --epochs 2 --repeats 2

Three sides, alternately: one process with one thread per core, one process with one thread, and
N processes sharing the cores (cores // N threads each, at least 1). The one-thread side is there
because on a small, busy machine intra-op threads can cost more than they give: the speed-up is
quoted against the faster single-process side. The global batch is the recipe's on every side, so
all train the same trajectory (up to each rank's own dropout and augmentation draws). Reports the
median training seconds (summary.json's train_seconds: the epochs, without start-up and data
loading), the median wall seconds of the whole command, the speed-ups and the test accuracies;
writes benchmarks/results/ddp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

from common import default_data_dir, describe, run, write_result


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train(processes: int, threads: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    train = ["train", "--recipe", args.recipe, "--epochs", str(args.epochs), "--out", str(out), "--quiet"]
    if args.data_dir:
        train += ["--data-dir", args.data_dir]
    if processes == 1:
        command = [sys.executable, "-m", "mnist_nn", *train]
    else:
        port = str(_free_port())
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
        command = [*launcher, "--master-addr", "127.0.0.1", "--master-port", port, "-m", "mnist_nn", *train]
    _, wall = run(command, env={"MNIST_NN_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)})
    summary = json.loads((out / "summary.json").read_text())
    return {"train_seconds": summary["train_seconds"], "wall_seconds": wall, "test_accuracy": summary["test_accuracy"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cnn-fast")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2, help="the data-parallel side (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--name", default="ddp", help="result file name (benchmarks/results/NAME.json)")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    sides = [(1, cores), *([(1, 1)] if cores > 1 else []), (args.processes, max(1, cores // args.processes))]
    runs: dict[str, list[dict[str, float]]] = {f"{n}x{t}": [] for n, t in sides}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for processes, threads in sides:
                result = _train(processes, threads, args, Path(scratch) / f"p{processes}x{threads}-{repeat}")
                runs[f"{processes}x{threads}"].append(result)
                print(
                    f"repeat {repeat + 1}: {processes} process(es) x {threads} thread(s): training "
                    f"{result['train_seconds']:.1f}s, wall {result['wall_seconds']:.1f}s, "
                    f"test accuracy {100 * result['test_accuracy']:.2f}%",
                    flush=True,
                )
    stats = {side: {key: describe([r[key] for r in results]) for key in results[0]} for side, results in runs.items()}
    single = [side for side in stats if side.startswith("1x")]
    best_single = min(single, key=lambda side: stats[side]["train_seconds"]["median"])
    data = {
        "recipe": args.recipe,
        "epochs": args.epochs,
        "cores": cores,
        "processes": args.processes,
        "sides": stats,
        "best_single_process": best_single,
        "one_process": stats[best_single],
        "data_parallel": stats[f"{sides[-1][0]}x{sides[-1][1]}"],
        "runs": runs,
    }
    data["speedup_train_seconds"] = (
        data["one_process"]["train_seconds"]["median"] / data["data_parallel"]["train_seconds"]["median"]
    )
    data["speedup_wall_seconds"] = (
        data["one_process"]["wall_seconds"]["median"] / data["data_parallel"]["wall_seconds"]["median"]
    )
    path = write_result(args.name, data, *([args.results] if args.results else []))
    print(
        f"{args.recipe}, {args.epochs} epoch(s) on {cores} cores: best single process "
        f"({best_single}: processes x threads) "
        f"{data['one_process']['train_seconds']['median']:.1f}s, {args.processes} processes "
        f"{data['data_parallel']['train_seconds']['median']:.1f}s training (median of {args.repeats}): "
        f"speed-up {data['speedup_train_seconds']:.2f}x (wall {data['speedup_wall_seconds']:.2f}x) -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
