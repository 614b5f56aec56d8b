"""Export a checkpoint as ONNX or TorchScript, normalization included.

The exported graph is ``Predictor.pixel_model`` (plus a softmax): [N, 28, 28] pixels on the
0-255 scale in (uint8 or float32, N dynamic), logits and probabilities out. Each export is
loaded back and compared with PyTorch before it is moved into place, so a file that exists
is a file that agrees.

"Agrees" scales with the outputs. Another runtime sums in another order, and float32 keeps
about 7 significant digits: a fully trained model's logits reach hundreds on noise-like input
(the tutorial MLP's: about 435), so they differ by ~1e-4 in absolute terms for rounding alone.
The check is relative to each row's largest logit, the probabilities are held to what that
allowance can move them, and the best class must be the same wherever it is clearly ahead.
A real mismatch (a wrong normalization, layer or weight) differs by far more: percents.
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

from mnist_nn.core.errors import UserError, option
from mnist_nn.core.fsutil import atomic_write
from mnist_nn.core.version import __version__

FORMATS = ("onnx", "torchscript")
INPUT_DTYPES = {"float32": torch.float32, "uint8": torch.uint8}
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
# Of the logits' scale (each row's largest |logit|, at least 1): about 400 times float32's rounding.
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
    from mnist_nn.inference.predictor import Predictor

    if fmt not in FORMATS:
        raise UserError(f"unknown export format {option('fmt', fmt)}; choose one of {', '.join(FORMATS)}")
    if input_dtype not in INPUT_DTYPES:
        raise UserError(
            f"unknown input type {option('input_dtype', input_dtype)}; choose one of {', '.join(INPUT_DTYPES)}"
        )
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    path = Path(out) if out is not None else Path(checkpoint).with_suffix(SUFFIXES[fmt])
    if path.is_dir():
        raise UserError(f"output {path} is a folder; give a file name to {option('out', metavar='FILE')}")
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
        # Inside the graph already (the logits are divided by it): recorded for readers of the file.
        "temperature": str(predictor.metadata.get("temperature", 1.0)),
    }
    module = ExportModule(predictor.pixel_model).eval()
    example = _example_input(INPUT_DTYPES[input_dtype], 4)
    data = _onnx_bytes(module, example, metadata) if fmt == "onnx" else _torchscript_bytes(module, example, metadata)
    differences = verify(data, fmt, module, INPUT_DTYPES[input_dtype])
    try:
        atomic_write(path, lambda handle: handle.write(data))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    return {
        "path": str(path),
        "format": fmt,
        "bytes": len(data),
        "input_dtype": input_dtype,
        **differences,
        "tolerance": f"{TOLERANCE:g} of the logits' scale",
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


def verify(data: bytes, fmt: str, module: nn.Module, dtype: torch.dtype) -> dict[str, float]:
    """Compare the exported model with PyTorch on two batch sizes; raise a UserError if they disagree.

    Returns the largest differences: ``max_abs_diff`` (logits), ``max_rel_diff`` (logits, relative
    to each row's scale), ``max_prob_diff`` and ``max_abs_logit``.
    """
    worst = {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "max_prob_diff": 0.0, "max_abs_logit": 0.0}
    for batch in (1, 7):
        pixels = _example_input(dtype, batch, seed=batch)
        with torch.inference_mode():
            expected_logits, expected_probabilities = module(pixels)
        got_logits, got_probabilities = (torch.as_tensor(t) for t in run_exported(data, fmt, pixels))
        found = compare(expected_logits, expected_probabilities, got_logits, got_probabilities)
        problem = found.pop("problem")
        if problem:
            raise UserError(f"exported {fmt} model differs from PyTorch: {problem}; not written")
        worst = {key: max(worst[key], value) for key, value in found.items()}
    return worst


def compare(
    expected_logits: torch.Tensor,
    expected_probabilities: torch.Tensor,
    got_logits: torch.Tensor,
    got_probabilities: torch.Tensor,
) -> dict[str, Any]:
    """The differences between two models' outputs, and ``problem``: why they disagree, or "" if they agree."""
    expected_logits, got_logits = expected_logits.double(), got_logits.double()
    scale = expected_logits.abs().amax(dim=1, keepdim=True).clamp(min=1.0)  # each row's largest |logit|
    error = (got_logits - expected_logits).abs()
    relative = float((error / scale).max())
    # A logit error of d moves a softmax probability by at most about d: hold them to the same allowance.
    probability_error = (got_probabilities.double() - expected_probabilities.double()).abs()
    probability_excess = float((probability_error - TOLERANCE * scale).max())
    top2 = expected_logits.topk(min(2, expected_logits.shape[1]), dim=1).values
    clear = (top2[:, 0] - top2[:, -1]) > 2 * TOLERANCE * scale.squeeze(1)  # rounding cannot swap these two
    flipped = int((clear & (got_logits.argmax(1) != expected_logits.argmax(1))).sum())
    problem = ""
    if relative > TOLERANCE:
        problem = f"logits by {relative:.2e} of their scale (over {TOLERANCE:g}; logits up to {float(scale.max()):.3g})"
    elif probability_excess > 0:
        problem = f"probabilities by {float(probability_error.max()):.2e} (over what rounding explains)"
    elif flipped:
        problem = f"the best class differs on {flipped} of {len(expected_logits)} inputs"
    return {
        "max_abs_diff": float(error.max()),
        "max_rel_diff": relative,
        "max_prob_diff": float(probability_error.max()),
        "max_abs_logit": float(expected_logits.abs().max()),
        "problem": problem,
    }


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
