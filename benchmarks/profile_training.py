"""Where the training time goes: torch.profiler over one epoch of a recipe, through the real trainer.

    python benchmarks/profile_training.py --recipe tutorial
    python benchmarks/profile_training.py --recipe cnn-fast --epochs 1

Prints the operators by self CPU time and writes benchmarks/results/profile-<recipe>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import default_data_dir, write_result
from torch.profiler import ProfilerActivity, profile

import mnist_nn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="tutorial")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch, profile(activities=[ProfilerActivity.CPU]) as prof:
        result = mnist_nn.train(
            args.recipe, data_dir=args.data_dir, out=Path(scratch) / "run", epochs=args.epochs, quiet=True
        )
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.rows]
    rows = [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total, "calls": e.count}
        for e in top
    ]
    print(f"{args.recipe}, {args.epochs} epoch(s): {result.summary['train_seconds']:.1f}s of training (profiled)")
    for row in rows:
        print(f"{row['op']:<55} {row['self_ms']:10.1f} ms  {100 * row['share']:5.1f}%  {row['calls']:>8} calls")
    path = write_result(
        f"profile-{args.recipe}",
        {"recipe": args.recipe, "epochs": args.epochs, "train_seconds": result.summary["train_seconds"], "top": rows},
        *([args.results] if args.results else []),
    )
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
