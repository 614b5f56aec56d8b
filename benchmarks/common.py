"""Helpers shared by the benchmark scripts: statistics, machine facts, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "mnist"


def describe(values: list[float]) -> dict[str, float]:
    """Median, mean, standard deviation (0 for one value), min and max."""
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def write_result(name: str, data: dict[str, Any], results_dir: Path = RESULTS) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **data}
    data["machine"] = machine()
    path = results_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def default_data_dir() -> str | None:
    if os.environ.get("MNIST_NN_DATA"):
        return os.environ["MNIST_NN_DATA"]
    return str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[str, float]:
    """Run a command to completion; return its stdout and wall seconds. A failure stops the benchmark."""
    import subprocess
    import time

    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"benchmark: {' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout, seconds


def parse_fields(line: str) -> dict[str, float]:
    """`RESULT epochs=25 train_seconds=53.1 ...` -> {"epochs": 25.0, "train_seconds": 53.1, ...}."""
    fields = {}
    for token in line.split()[1:]:
        key, _, value = token.partition("=")
        try:
            fields[key] = float(value)
        except ValueError:
            continue
    return fields


def train_cli(recipe: str, out: Path, data_dir: str | None, *flags: str) -> tuple[dict[str, Any], float]:
    """`mnist-nn train` in a child process, as a user runs it; returns its summary.json and wall seconds."""
    import sys

    command = [sys.executable, "-m", "mnist_nn", "train", "--recipe", recipe, "--out", str(out), "--quiet"]
    if data_dir:
        command += ["--data-dir", data_dir]
    _, wall = run([*command, *flags])
    return json.loads((out / "summary.json").read_text()), wall
