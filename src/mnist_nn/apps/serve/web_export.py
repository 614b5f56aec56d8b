"""The drawing page without a server: the model as ONNX for the browser, and ``export --format web``.

The browser's model is the checkpoint's ONNX export (``inference.export.export_checkpoint``, checked
against PyTorch there), with every layer's output added as a graph output for the page's layer panel,
and the first weighted layer's weights as one more (hovering a unit shows them). The page reads its
description from the model itself (the ONNX metadata entry ``mnist_nn.web``, JSON), so one file is
all a browser needs beside the page. The extra outputs are checked against PyTorch's own layer
outputs before anything is written.

A static folder (``export_web``) holds the page (index.html, static/ with its scripts, styles and the
vendored ONNX Runtime Web), model.onnx and isolation-worker.js, the service worker that adds the headers
making the page cross-origin isolated (ONNX Runtime Web's threads need it): any static file host serves
it, no Python behind it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnist_nn.core.errors import UserError, option
from mnist_nn.inference.export import OUTPUT_NAMES, export_checkpoint, onnx_session
from mnist_nn.inference.predictor import Predictor
from mnist_nn.models.bundled import bundled_name

STATIC = Path(__file__).resolve().parent / "static"
WEB_KEY = "mnist_nn.web"  # the ONNX metadata entry holding the page's description of the model
WEIGHTS_OUTPUT = "first_layer_weights"
MODEL_FILE = "model.onnx"
# The static folder's service worker, which makes its page cross-origin isolated (threads for the model);
# beside index.html, since a worker controls only the pages at or below its own folder.
ISOLATION_WORKER = "isolation-worker.js"
# The page's markup says which way it gets its model; the static folder's copy says "static".
SERVER_MODE = 'data-mode="server"'
STATIC_MODE = 'data-mode="static"'
# A layer's output must agree with PyTorch's to this share of its largest value (float32 rounding).
LAYER_TOLERANCE = 1e-4
SHOWN = (nn.ReLU, nn.MaxPool2d)  # the outputs the panel shows: each activation and each pooling


def web_model(checkpoint: str | os.PathLike) -> tuple[bytes, dict[str, Any]]:
    """The browser's ONNX model of ``checkpoint`` (bytes) and its description (also inside it)."""
    import onnx

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        report = export_checkpoint(checkpoint, fmt="onnx", out=Path(folder) / MODEL_FILE)
        model = onnx.load(report["path"])
    path, network = _layer_stack(predictor)
    layers = _layers(network)
    scopes = _last_node_per_layer(model, path)
    for layer in layers:
        layer["output"] = scopes[layer.pop("index")]
        _add_output(model, layer["output"])
    weights = _add_weights_output(model)
    description = _description(predictor, layers, weights)
    entry = model.metadata_props.add()
    entry.key, entry.value = WEB_KEY, json.dumps(description)
    data = model.SerializeToString()
    _check_layers(data, predictor, layers)
    return data, description


def _layers(network: nn.Module) -> list[dict[str, Any]]:
    """The panel's layers: each ReLU and max-pooling of the network, titled, with its output's shape."""
    shapes = _output_shapes(network)
    layers: list[dict[str, Any]] = []
    counts = {"conv": 0, "dense": 0, "pool": 0}
    last = "input"
    for index, module in enumerate(network.children()):
        if isinstance(module, nn.Conv2d | nn.Linear):
            kind = "conv" if isinstance(module, nn.Conv2d) else "dense"
            counts[kind] += 1
            last = f"{kind} {counts[kind]}"
        elif isinstance(module, SHOWN):
            if isinstance(module, nn.MaxPool2d):
                counts["pool"] += 1
                title = f"{last}, max-pooled"
            else:
                title = f"{last}, ReLU"
            shape = shapes[index]
            layers.append(
                {"index": index, "title": title, "kind": "maps" if len(shape) == 3 else "units", "shape": shape}
            )
    return layers


def _output_shapes(network: nn.Module) -> list[list[int]]:
    """Each child's output shape (without the batch) for one 28x28 input."""
    shapes = []
    x = torch.zeros(1, 1, 28, 28)
    with torch.inference_mode():
        for module in network.children():
            x = module(x)
            shapes.append(list(x.shape[1:]))
    return shapes


def _layer_stack(predictor: Predictor) -> tuple[str, nn.Sequential]:
    """The network's layers: every registered model is an nn.Sequential, maybe inside a wrapper (the
    temperature's); with its name in the exported graph's scopes (the exporter's module paths)."""
    for name, module in predictor.pixel_model.model.named_modules():
        if isinstance(module, nn.Sequential):
            return ".".join(("pixel_model.model", name)).rstrip("."), module
    raise UserError("the web page shows models built as a sequence of layers; this one is not")


def _last_node_per_layer(model: Any, path: str) -> dict[int, str]:
    """The output name of the last ONNX node of each child of the network (from the exporter's name scopes)."""
    child_scope = re.compile(r"['\"]" + re.escape(path) + r"\.(\d+)['\"]")
    outputs: dict[int, str] = {}
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        found = child_scope.search(scopes)
        if found:
            outputs[int(found.group(1))] = node.output[0]
    return outputs


def _add_output(model: Any, name: str) -> None:
    from onnx import TensorProto, helper

    known = next((info for info in model.graph.value_info if info.name == name), None)
    model.graph.output.append(
        known if known is not None else helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
    )


def _add_weights_output(model: Any) -> dict[str, Any]:
    """The first Conv's or Gemm's weight as a graph output; its layout for the page: ``shape`` as PyTorch's
    [units, inputs...], ``transposed`` when the data is [inputs, units]. A batch norm after the layer is
    folded into these weights by the exporter: they are what the unit responds to, batch norm included."""
    from onnx import helper, numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and node.input[1] in initializers:
            weight = numpy_helper.to_array(initializers[node.input[1]])
            # Stored [inputs, units] (MatMul, or Gemm without transB) or PyTorch's [units, inputs...].
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not trans_b)
            model.graph.node.append(helper.make_node("Identity", [node.input[1]], [WEIGHTS_OUTPUT]))
            _add_output(model, WEIGHTS_OUTPUT)
            shape = list(weight.T.shape if transposed else weight.shape)
            return {
                "output": WEIGHTS_OUTPUT,
                "kind": "conv" if node.op_type == "Conv" else "dense",
                "shape": shape,
                "transposed": transposed,
            }
    raise UserError("the model has no convolution or dense layer to show the weights of")


def _description(predictor: Predictor, layers: list[dict[str, Any]], weights: dict[str, Any]) -> dict[str, Any]:
    checkpoint = predictor.metadata.get("checkpoint")
    return {
        "model": predictor.metadata["model"],
        "pretrained": bundled_name(checkpoint) if checkpoint else None,
        "parameters": sum(p.numel() for p in predictor.pixel_model.model.parameters()),
        "dataset": predictor.metadata["dataset"],
        "labels": list(predictor.labels),
        "test_accuracy": predictor.metadata.get("test_accuracy"),
        # `mnist-nn predict` reads an image as it is and zoomed in and out by this fraction: the page too.
        "zoom": predictor.zoom,
        "layers": layers,
        "weights": weights,
    }


def _check_layers(data: bytes, predictor: Predictor, layers: list[dict[str, Any]]) -> None:
    """Each added output against PyTorch's output of the same layer; UserError where they differ."""
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (3, 28, 28), generator=generator).float()
    network = _layer_stack(predictor)[1]
    expected: list[torch.Tensor] = []
    pixel_model = predictor.pixel_model
    with torch.inference_mode():
        x = pixels.unsqueeze(1) * pixel_model.scale + pixel_model.shift
        for module in network.children():
            x = module(x)
            expected.append(x)
    names = [layer["output"] for layer in layers]
    got = onnx_session(data).run([*OUTPUT_NAMES, *names], {"pixels": pixels.numpy()})[len(OUTPUT_NAMES) :]
    by_index = [expected[i] for i in _shown_indices(network)]
    for layer, want, have in zip(layers, by_index, got, strict=True):
        scale = max(1.0, float(want.abs().max()))
        difference = float(np.abs(have - want.numpy()).max()) / scale
        if difference > LAYER_TOLERANCE:
            raise UserError(
                f"the web model's layer {layer['title']!r} differs from PyTorch by {difference:.2e}; not written"
            )


def _shown_indices(network: nn.Module) -> list[int]:
    return [i for i, module in enumerate(network.children()) if isinstance(module, SHOWN)]


def export_web(checkpoint: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write the static page for ``checkpoint`` into the folder ``out``; return a report.

    The folder is built beside ``out`` and moved into place whole; an existing ``out`` must be
    empty or an earlier export (it is replaced), so nothing else is ever overwritten.
    """
    target = Path(out)
    _check_target(target)
    data, description = web_model(checkpoint)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a web folder is for others to read
    try:
        shutil.copytree(STATIC, staging / "static")
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        (staging / "static" / "index.html").unlink()
        (staging / "static" / ISOLATION_WORKER).rename(staging / ISOLATION_WORKER)
        (staging / "index.html").write_text(page.replace(SERVER_MODE, STATIC_MODE, 1), encoding="utf-8")
        (staging / MODEL_FILE).write_bytes(data)
        _replace(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"cannot write {target}: {exc.strerror or type(exc).__name__}") from None
    files = sorted(p for p in target.rglob("*") if p.is_file())
    return {
        "path": str(target),
        "format": "web",
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "model_bytes": len(data),
        "layers": [layer["title"] for layer in description["layers"]],
    }


def _check_target(target: Path) -> None:
    if not target.parent.is_dir():
        raise UserError(f"output folder {target.parent} does not exist")
    if target.exists() and not target.is_dir():
        raise UserError(f"output {target} is a file; give a folder to {option('out', metavar='DIR')}")
    if target.is_dir() and any(target.iterdir()) and not (target / MODEL_FILE).is_file():
        raise UserError(f"output folder {target} is not empty and holds no earlier web export; not overwritten")


def _replace(staging: Path, target: Path) -> None:
    """Move the finished folder into place; an earlier export there goes only once the new one is in."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def add_model_route(app: Any, predictor: Predictor) -> None:
    """``GET /api/model.onnx``: the served page's model, built on first request (an export takes
    seconds) and kept. 404 when the predictor has no checkpoint file to export, 501 when this install
    cannot export ONNX (no export extra): either way the page falls back to the server."""
    import threading

    from anyio.to_thread import run_sync
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException

    checkpoint = predictor.metadata.get("checkpoint")
    lock = threading.Lock()
    built: dict[str, bytes] = {}

    def build() -> bytes:
        with lock:  # one export, however many pages ask at once
            if "model" not in built:
                built["model"] = web_model(str(checkpoint))[0]
            return built["model"]

    @app.get("/api/model.onnx", include_in_schema=False)
    async def model_onnx() -> Response:
        if not checkpoint or not Path(str(checkpoint)).is_file():
            raise HTTPException(404, "this server's model has no checkpoint file to send to the browser")
        try:
            data = await run_sync(build)
        except UserError as exc:
            raise HTTPException(501, f"this server cannot send its model to the browser: {exc}") from None
        return Response(data, media_type="application/octet-stream", headers={"cache-control": "no-cache"})
