"""Which runtime computes a served model's forward pass: PyTorch, or ONNX Runtime from the model's ONNX export.

A server's forward passes are small (one digit, or the few that arrive together) and on the CPU,
where most of PyTorch's time is per-call overhead: about 190 us for the tutorial MLP's one digit,
against 45 us in ONNX Runtime, and the bundled robust CNN reads its three views about twice as fast
there (one thread, AMD EPYC). ``serve --engine auto`` (the default) uses ONNX Runtime when the
export extra is installed and the model runs on the CPU, else PyTorch.

The graph is the one ``mnist-nn export`` writes (export.py: normalization and temperature inside),
checked against PyTorch each time it is loaded, so labels are the same and probabilities equal to
float rounding. Exporting takes seconds (5-10 s on 2 cores), so the file is kept in the user's cache
(``data.datasets.cache_dir``), named after the checkpoint's bytes and the versions that built it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnist_nn.core.errors import UserError
from mnist_nn.core.fsutil import atomic_write
from mnist_nn.core.version import __version__

ENGINES = ("auto", "torch", "onnx")


class OnnxEngine:
    """Probabilities [N, classes] of MNIST-form pixels [N, 28, 28] from an ONNX export, in ONNX Runtime.

    Each process builds its own session on first use: a server loads and warms the model, then forks
    its workers. A runtime's threads do not survive a fork (a lock one held stays locked in the child),
    so the server ``close``s the session first.
    """

    name = "ONNX Runtime"

    def __init__(self, data: bytes, threads: int = 1) -> None:
        self.data = data
        self.threads = threads
        self._session: Any = None
        self._pid = -1

    def session(self) -> Any:
        if self._pid != os.getpid():
            from mnist_nn.inference.export import onnx_session

            self._session = onnx_session(self.data, threads=self.threads)
            self._pid = os.getpid()
        return self._session

    def close(self) -> None:
        """Drop this process's session (its threads end with it); the next call builds a new one."""
        self._session = None
        self._pid = -1

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        (probabilities,) = self.session().run(["probabilities"], {"pixels": batch})
        return torch.from_numpy(probabilities)


def choose_engine(predictor: Any, engine: str = "auto", device: str = "cpu") -> OnnxEngine | None:
    """The engine for ``predictor`` (a Predictor): an OnnxEngine, or None for PyTorch; UserError if impossible.

    ``auto``: ONNX Runtime on the CPU when onnxruntime and the exporter are installed, else PyTorch.
    ``onnx``: ONNX Runtime, or a one-line error saying what is missing.
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "torch":
        return None
    missing = _missing_modules()
    if engine == "auto" and (missing or device != "cpu"):
        return None
    if missing:
        raise UserError(f"--engine onnx needs {', '.join(missing)}: pip install 'mnist-nn[export]'")
    if device != "cpu":
        raise UserError(f"--engine onnx runs on the CPU; drop --device {device} or use --engine torch")
    try:
        return OnnxEngine(onnx_bytes(predictor), threads=torch.get_num_threads())
    except Exception as exc:
        if engine == "onnx":
            raise
        # auto: a model the exporter cannot take is still served, by PyTorch, and the reason said.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ONNX export failed ({reason[:200]}): the model runs in PyTorch", file=sys.stderr)
        return None


def _missing_modules() -> list[str]:
    import importlib.util

    return [name for name in ("onnxruntime", "onnx", "onnxscript") if importlib.util.find_spec(name) is None]


def onnx_bytes(predictor: Any) -> bytes:
    """The predictor's ONNX export: from the cache when an earlier run made it, else exported and cached.

    Either way it is checked against PyTorch first (export.verify raises a UserError on a mismatch).
    """
    from mnist_nn.inference.export import ExportModule, _example_input, _onnx_bytes, verify

    module = ExportModule(predictor.pixel_model).eval()
    path = _cached_path(predictor.metadata["checkpoint"])
    data = path.read_bytes() if path is not None and path.is_file() else None
    if data is not None:
        try:
            verify(data, "onnx", module, torch.float32)
            return data
        except Exception:  # a damaged or foreign file: export afresh over it
            data = None
    data = _onnx_bytes(module, _example_input(torch.float32, 4), {"producer": f"mnist-nn {__version__}"})
    verify(data, "onnx", module, torch.float32)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda handle: handle.write(data))
        except OSError:
            pass  # a read-only cache only costs the next start the export again
    return data


def _cached_path(checkpoint: str | os.PathLike) -> Path | None:
    """Where the export of ``checkpoint`` is cached: named by its bytes and the versions that export it."""
    from mnist_nn.data.datasets import cache_dir

    try:
        digest = hashlib.sha256(Path(checkpoint).read_bytes())
    except OSError:
        return None
    digest.update(f"mnist-nn {__version__} torch {torch.__version__}".encode())
    return cache_dir() / "onnx" / f"{digest.hexdigest()[:32]}.onnx"
