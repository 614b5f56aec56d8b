"""Helpers shared by the benchmark scripts: statistics, machine facts, result files."""

from __future__ import annotations

import json
import os
import platform
import re
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


# The CPU features that decide how fast training runs here: AMX tiles multiply bf16 (and int8) matrices
# in hardware; AVX-512 BF16 only converts and dots bf16 in vectors, much slower than AMX for matmuls.
CPU_FLAGS = {"amx": "amx_tile", "avx512_bf16": "avx512_bf16", "avx512f": "avx512f"}


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The first CPU's model name (None if absent) and the CPU_FLAGS, from the text of /proc/cpuinfo."""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {"cpu_model": model, **{name: flag in flags for name, flag in CPU_FLAGS.items()}}


def host_info(device: str = "cpu", cpuinfo: str | None = None) -> dict[str, Any]:
    """The machine a result was measured on: CPU model, cores used, AMX/AVX-512 flags, torch, GPU.

    ``gpu`` is the CUDA device's name when ``device`` is CUDA (or "auto", which takes CUDA when there is
    one), else None: a CPU benchmark run on a machine that also has a GPU must not be read as a GPU figure.
    ``cpuinfo`` is /proc/cpuinfo's text (read here when None; empty where there is none, as on macOS, and
    then no flag is set).
    """
    import torch

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    info = parse_cpuinfo(cpuinfo)
    gpu = None
    if (device == "auto" or device.startswith("cuda")) and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device) if ":" in device else None)
    return {
        "cpu_model": info["cpu_model"] or platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        "amx": info["amx"],
        "avx512_bf16": info["avx512_bf16"],
        "avx512f": info["avx512f"],
        "torch": torch.__version__,
        "gpu": gpu,
    }


# Result files written before the host was recorded were all measured on one Intel Xeon with AMX.
OLD_HOST = {"cpu_model": "Intel Xeon", "amx": True}


def cpu_name(model: str) -> str:
    """A CPU model name short enough for a table cell: trademarks, "CPU", "Processor", clock and core count dropped.

    "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.0GHz" -> "Intel Xeon Platinum 8480+";
    "AMD EPYC 9654 96-Core Processor" -> "AMD EPYC 9654".
    """
    name = re.sub(r"\((?:R|TM|tm)\)", "", model)
    name = re.sub(r"@\s*[\d.]+\s*GHz|\bCPU\b|\bProcessor\b|\b\d+-Core\b", "", name)
    return " ".join(name.split()) or model.strip()


def host_label(host: dict[str, Any] | None, chinese: bool = False) -> str:
    """The host of a result as a table shows it, e.g. "Intel Xeon (AMX)" or "AMD EPYC 9654 (no AMX)".

    Results without a recorded host (None) are OLD_HOST's.
    """
    host = host or OLD_HOST
    if chinese:
        return f"{cpu_name(host['cpu_model'])}（{'支持 AMX' if host.get('amx') else '无 AMX'}）"
    return f"{cpu_name(host['cpu_model'])} ({'AMX' if host.get('amx') else 'no AMX'})"


def announce_host(device: str = "cpu") -> dict[str, Any]:
    """Print the host a benchmark runs on, before its minutes of work (a wrong machine shows at once); return it."""
    host = host_info(device)
    gpu = f", {host['gpu']}" if host["gpu"] else ""
    print(f"host: {host_label(host)}, {host['cores']} cores{gpu}, PyTorch {host['torch']}", flush=True)
    return host


def sides_devices(ours: list[dict[str, Any]]) -> dict[str, Any]:
    """The devices the two sides of a comparison trained on: the baseline's and those of mnist-nn's runs.

    The baseline scripts (the tutorial's, PyTorch's example) take CUDA whenever there is a GPU; mnist-nn's
    ``--device auto`` takes it only where a step of the recipe is faster there, so on a GPU machine the
    two sides may differ, and a figure must say so.
    """
    import torch

    return {
        "baseline": "cuda" if torch.cuda.is_available() else "cpu",
        "ours": sorted({str(run["device"]) for run in ours}),
    }


def write_result(name: str, data: dict[str, Any], results_dir: Path = RESULTS, device: str | None = None) -> Path:
    """Write ``data`` to RESULTS/NAME.json with the date and the host (``device``: default the data's own, else cpu).

    Every benchmark writes through here, so every result says what machine its figures come from.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **data}
    data["machine"] = machine()
    data["host"] = host_info(str(device or data.get("device") or "cpu"))
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
