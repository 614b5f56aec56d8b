"""Export a checkpoint as ONNX or TorchScript, normalization included.

The exported graph is ``Predictor.pixel_model`` (plus a softmax): [N, 28, 28] pixels on the
0-255 scale in (uint8 or float32, N dynamic), logits and probabilities out. Each export is
loaded back and compared with PyTorch before it is moved into place, so a file that exists
is a file that agrees.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import UserError
from .fsutil import atomic_write

FORMATS = ("onnx", "torchscript")
INPUT_DTYPES = {"float32": torch.float32, "uint8": torch.uint8}
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TOLERANCE = 1e-4
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "probabilities")


class ExportModule(nn.Module):
    """The predictor's pixel model with a softmax beside its logits."""

    def __init__(self, pixel_model: nn.Module) -> None:
        super().__init__()
        self.pixel_model = pixel_model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.pixel_model(pixels)
        return logits, logits.softmax(dim=1)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    fmt: str = "onnx",
    out: str | os.PathLike | None = None,
    input_dtype: str = "float32",
) -> dict[str, Any]:
    """Export ``checkpoint``; return a report (path, bytes, metadata, max difference from PyTorch)."""
    from .predict import Predictor

    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if input_dtype not in INPUT_DTYPES:
        raise UserError(f"unknown input type {input_dtype!r}; choose one of {', '.join(INPUT_DTYPES)}")
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    path = Path(out) if out is not None else Path(checkpoint).with_suffix(SUFFIXES[fmt])
    if path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"output folder {path.parent} does not exist")
    metadata = {
        "producer": f"mnist-nn {__version__}",
        "model": predictor.metadata["model"],
        "dataset": predictor.metadata["dataset"],
        "labels": json.dumps(list(predictor.labels)),
        "test_accuracy": str(predictor.metadata.get("test_accuracy")),
        "input": f"{INPUT_NAME}: {input_dtype} [N, 28, 28], pixels 0-255, light digit on dark (MNIST form)",
        "outputs": "logits [N, classes], probabilities [N, classes]",
        "normalization": json.dumps({"mean": predictor.metadata["mean"], "std": predictor.metadata["std"]}),
    }
    module = ExportModule(predictor.pixel_model).eval()
    example = _example_input(INPUT_DTYPES[input_dtype], 4)
    data = _onnx_bytes(module, example, metadata) if fmt == "onnx" else _torchscript_bytes(module, example, metadata)
    difference = verify(data, fmt, module, INPUT_DTYPES[input_dtype])
    try:
        atomic_write(path, lambda handle: handle.write(data))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    return {
        "path": str(path),
        "format": fmt,
        "bytes": len(data),
        "input_dtype": input_dtype,
        "max_abs_diff": difference,
        "metadata": metadata,
    }


def _example_input(dtype: torch.dtype, batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 28, 28), generator=generator).to(dtype)


def _onnx_bytes(module: nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    try:
        import onnx  # noqa: F401  (torch.onnx needs it, and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs the export extra: pip install 'mnist-nn[export]'") from None
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter progress notes and deprecation chatter
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"pixels": {0: batch}},
            external_data=False,
            verbose=False,
        )
    model = program.model_proto
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "mnist-nn"
    model.producer_version = __version__
    return model.SerializeToString()


def _torchscript_bytes(module: nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice; it still loads everywhere libtorch does
        # Tracing records the ops for any registered model; the batch size stays symbolic (checked in verify).
        traced = torch.jit.trace(module, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"metadata.json": json.dumps(metadata)})
    return buffer.getvalue()


def verify(data: bytes, fmt: str, module: nn.Module, dtype: torch.dtype) -> float:
    """Max abs difference between the exported model and PyTorch on two batch sizes; raise if over tolerance."""
    worst = 0.0
    for batch in (1, 7):
        pixels = _example_input(dtype, batch, seed=batch)
        with torch.inference_mode():
            expected = module(pixels)
        got = run_exported(data, fmt, pixels)
        for a, b in zip(expected, got, strict=True):
            worst = max(worst, float((a - torch.as_tensor(b)).abs().max()))
    if worst > TOLERANCE:
        raise UserError(f"exported {fmt} model differs from PyTorch by {worst:.2e} (over {TOLERANCE:g}); not written")
    return worst


def run_exported(data: bytes, fmt: str, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run an exported model (its bytes) on pixels: (logits, probabilities)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.jit.load(io.BytesIO(data))
        with torch.inference_mode():
            return loaded(pixels)
    session = onnx_session(data)
    logits, probabilities = session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels.numpy()})
    return torch.from_numpy(logits), torch.from_numpy(probabilities)


def onnx_session(data: bytes | str | os.PathLike, threads: int | None = None) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError("checking the ONNX export needs onnxruntime: pip install 'mnist-nn[export]'") from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    source = data if isinstance(data, bytes) else str(data)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
