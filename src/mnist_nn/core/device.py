"""Choosing the compute device and the CPU thread count deliberately.

torch is imported inside the functions, not at the top: the CLI reads DEVICE_CHOICES and
PRECISIONS to build its parser, and `mnist-nn --help` must not wait for torch to load.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mnist_nn.core.errors import UserError, option

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "auto")


def resolve_device(name: str = "auto") -> torch.device:
    """Resolve "auto" to CUDA, then Apple's MPS, then the CPU; asking for a missing one is an error."""
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise UserError(
            f"{option('device', 'cuda')} was asked for, but PyTorch sees no CUDA GPU (try {option('device', 'cpu')})"
        )
    if name == "mps" and not mps:
        raise UserError(
            f"{option('device', 'mps')} was asked for, but this PyTorch has no MPS backend "
            f"(try {option('device', 'cpu')})"
        )
    if name not in DEVICE_CHOICES:
        raise UserError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    return torch.device(name)


def choose_training_device(
    name: str, probe: Callable[[torch.device], float] | None = None, *, resumed_on: str | None = None
) -> tuple[torch.device, dict[str, Any]]:
    """The device a training run uses, and the record of the choice for config.json (asked, chosen, reason).

    A device asked for by name is used. "auto" is the CPU without a GPU (and Apple's MPS where
    there is one, as ``resolve_device`` picks). With a CUDA GPU, "auto" takes the GPU only where a
    training step of this recipe is faster there: ``probe(device)`` returns the seconds per step,
    and the faster device wins.

    Why a measurement and not a rule of thumb: these networks are so small that a GPU step is bound
    by launching kernels (the tutorial's 938 steps take 1.76 s an epoch on an H200: ~1.9 ms for a step
    of ~70 MFLOP), and the break-even between the two depends on the CPU (cores, AMX), the GPU, the
    batch size and whether the step is captured as a CUDA graph. Timing a few real steps of the recipe's model
    measures exactly the quantity being compared, costs well under a second for these networks, and
    the times are recorded ("step_ms"), so the choice can be checked. Near the break-even the choice
    may differ between two runs; a resumed run therefore stays on the device it started on.
    """
    import torch

    if name != "auto":
        device = resolve_device(name)
        return device, {"asked": name, "chosen": str(device), "reason": "asked for"}
    device = resolve_device("auto")
    if resumed_on:
        start = torch.device(resumed_on)
        if start.type == "cpu" or start.type == device.type:
            return start, {"asked": name, "chosen": str(start), "reason": "the device the resumed run started on"}
    if device.type != "cuda":
        reason = "no CUDA GPU" + (" (Apple's MPS is used)" if device.type == "mps" else "")
        return device, {"asked": name, "chosen": str(device), "reason": reason}
    if probe is None:
        return device, {"asked": name, "chosen": str(device), "reason": "a CUDA GPU (not measured)"}
    cpu = torch.device("cpu")
    seconds = {"cuda": probe(device), "cpu": probe(cpu)}
    chosen = device if seconds["cuda"] < seconds["cpu"] else cpu
    faster = "CUDA GPU" if chosen.type == "cuda" else "CPU"
    ratio = max(seconds.values()) / max(min(seconds.values()), 1e-12)
    return chosen, {
        "asked": name,
        "chosen": str(chosen),
        "reason": f"a training step of this recipe is {ratio:.1f}x faster on the {faster}",
        "step_ms": {key: round(1000 * value, 3) for key, value in seconds.items()},
    }


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: CUDA GPUs from Ampere on, CPUs with AMX tiles.

    Elsewhere bf16 autocast is emulated, and slower than fp32.
    """
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch's own probe; private, hence the guard
        return bool(amx and amx()) and _onednn_may_use_amx()
    return False


def _onednn_may_use_amx() -> bool:
    """False when ONEDNN_MAX_CPU_ISA caps oneDNN below AMX: its bf16 kernels then take the AVX-512-BF16
    path, which is slower than fp32 for these networks. Measured with cnn-fast on a 2-core Intel Xeon
    (AMX): bf16 with AMX 5.4 s, fp32 7.6-7.7 s, bf16 capped at AVX512_CORE_BF16 8.7-9.2 s. That cap
    stands in for CPUs with AVX-512-BF16 but no AMX (AMD EPYC): ``auto`` gives them fp32."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return cap in ("", "ALL", "DEFAULT") or "AMX" in cap


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run computes in: "auto" is bf16 where ``device`` has it in hardware, else fp32."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def configure_cpu() -> int:
    """Set the CPU up for training: denormals flushed to zero, one intra-op thread per core.

    As training converges, Adam's moment estimates and small gradients reach
    denormal floats, which x86 CPUs process ~100x slower: epochs of the tutorial
    MLP slow down by half. Flushing them to zero changes results only below
    1e-38. The setting is per thread and worker threads inherit it when created,
    so this runs before PyTorch starts its thread pool (the first parallel op).
    PyTorch's default thread count can count hyper-threads or ignore CPU affinity
    (containers, taskset); on small per-step work extra threads only add synchronisation.
    """
    import torch

    torch.set_flush_denormal(True)
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MNIST_NN_THREADS"):
        threads = int(os.environ.get("MNIST_NN_THREADS") or os.environ["OMP_NUM_THREADS"])
    else:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def prepare_backend(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        # Fixed input shapes: let cuDNN pick its fastest kernels; TF32 keeps fp32 accuracy for these nets.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def make_deterministic() -> None:
    """``--deterministic``: bitwise-repeatable training on CUDA, at a cost in speed.

    On the CPU, runs with the same seed and thread count are already bitwise identical.
    On CUDA, some kernels (cuBLAS split-K reductions, cuDNN's autotuned convolution
    algorithms, atomic-add backward passes) may sum in a different order each run. This
    turns on PyTorch's deterministic algorithms (an error, rather than a silent
    difference, for an op that has none), pins cuDNN to deterministic algorithms without
    autotuning, and gives cuBLAS a fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when
    cuBLAS starts, so set before the first CUDA matmul). The cost (expected, not measured
    on this project's machines): CNN convolutions lose cuDNN's fastest, autotuned kernels,
    often 10-30% slower per epoch; the MLPs barely change; cuBLAS keeps a few MB more
    workspace. The settings are process-wide and stay on after training.
    """
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
