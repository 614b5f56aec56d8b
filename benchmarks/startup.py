"""Start-up time of the `mnist-nn` command: the commands that need no model, against `python -c pass`.

    python benchmarks/startup.py              # median of 5 runs of each command
    python benchmarks/startup.py --runs 11

Each command runs as a user runs it (the console script beside this Python, in a fresh process),
its output discarded; the figure is the median wall time of --runs runs, after one warm-up run
that fills the operating system's file cache. `python -c pass` is the floor: the interpreter's
own start. `models --parameters` builds every model, so it loads torch: the cost the others avoid.
Writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import write_result

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "mnist-nn --help": ["mnist-nn", "--help"],
    "mnist-nn recipes": ["mnist-nn", "recipes"],
    "mnist-nn models": ["mnist-nn", "models"],
    "mnist-nn train --recipe nope (argument error)": ["mnist-nn", "train", "--recipe", "nope"],
    "mnist-nn train --epochs two (usage error)": ["mnist-nn", "train", "--epochs", "two"],
    "mnist-nn models --parameters (loads torch)": ["mnist-nn", "models", "--parameters"],
}


def console_script() -> list[str]:
    """The installed `mnist-nn` beside this Python, as a user runs it; else `python -m mnist_nn`."""
    script = Path(sys.executable).parent / "mnist-nn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mnist_nn"]


def wall_seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def cpu_model() -> str | None:
    """The CPU's model name, as `lscpu` shows it (Linux); None elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command (default: 5)")
    parser.add_argument("--name", default="startup")
    parser.add_argument("--results", default=None)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be a positive integer, got {args.runs}")
    mnist_nn = console_script()
    rows = []
    for label, command in COMMANDS.items():
        command = [*mnist_nn, *command[1:]] if command[0] == "mnist-nn" else command
        wall_seconds(command)  # warm-up: the file cache, not the measurement
        runs = [wall_seconds(command) for _ in range(args.runs)]
        rows.append({"command": label, "median_s": statistics.median(runs), "runs_s": runs})
        print(f"{label:<48} median {statistics.median(runs):6.3f} s  (min {min(runs):.3f}, max {max(runs):.3f})")
    floor = rows[0]["median_s"]
    for row in rows:
        row["over_python_s"] = row["median_s"] - floor
    data = {"runs": args.runs, "cpu_model": cpu_model(), "rows": rows}
    path = write_result(args.name, data, *([Path(args.results)] if args.results else []))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
