"""The served model's engine: ONNX Runtime from the model's own ONNX export, against PyTorch."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import free_port
from mnist_nn.core.errors import UserError
from mnist_nn.inference.engine import OnnxEngine, choose_engine
from mnist_nn.inference.predictor import Predictor

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MNIST_NN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.fixture
def cnn_checkpoint(tmp_path_factory) -> Path:
    """An untrained small CNN (batch norm included) whose recipe zooms: the server reads three views of a digit."""
    from mnist_nn.models.checkpoint import CheckpointMeta, save_checkpoint
    from mnist_nn.models.networks import build_model

    torch.manual_seed(1)
    model = build_model("cnn-fast").eval()
    path = tmp_path_factory.mktemp("cnn") / "model.pt"
    calibration = {"temperature": 1.7}
    meta = CheckpointMeta("cnn-fast", {}, "mnist", 0.1307, 0.3081, recipe={"aug_scale": 0.1}, calibration=calibration)
    save_checkpoint(path, model, meta, metrics={"test_accuracy": 0.1})
    return path


def digits(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28)).astype(np.float32)


@pytest.mark.parametrize("which", ["random_checkpoint", "cnn_checkpoint"])
def test_onnx_engine_answers_as_pytorch_does(which, request, cache):
    predictor = Predictor.from_checkpoint(request.getfixturevalue(which))
    pixels = digits(40)
    expected = predictor.zoomed_probabilities(pixels)
    predictor.engine = choose_engine(predictor, "onnx")
    assert isinstance(predictor.engine, OnnxEngine)
    got = predictor.zoomed_probabilities(pixels)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)
    assert [path.suffix for path in cache.iterdir()] == [".onnx"]  # exported once, kept for the next start


def test_a_cached_export_is_reused_and_a_damaged_one_replaced(random_checkpoint, cache):
    predictor = Predictor.from_checkpoint(random_checkpoint)
    first = choose_engine(predictor, "onnx")
    [cached] = cache.iterdir()
    assert cached.read_bytes() == first.data
    stamp = cached.stat().st_mtime_ns
    again = choose_engine(predictor, "onnx")
    assert again.data == first.data and cached.stat().st_mtime_ns == stamp  # read, not exported again
    cached.write_bytes(b"not an onnx file")
    repaired = choose_engine(predictor, "onnx")
    assert cached.read_bytes() == repaired.data != b"not an onnx file"
    np.testing.assert_allclose(repaired(torch.from_numpy(digits(3))), first(torch.from_numpy(digits(3))))


def _in_child(engine: OnnxEngine, pixels: np.ndarray, queue) -> None:
    queue.put(engine(torch.from_numpy(pixels)).numpy())


def test_a_forked_worker_builds_its_own_session(random_checkpoint, cache):
    predictor = Predictor.from_checkpoint(random_checkpoint)
    engine = choose_engine(predictor, "onnx")
    pixels = digits(5)
    parent = engine(torch.from_numpy(pixels)).numpy()  # the parent warms up, as serve does, then closes
    engine.close()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_in_child, args=(engine, pixels, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(30)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, parent)


def test_engine_choices(random_checkpoint, cache, monkeypatch, capsys):
    predictor = Predictor.from_checkpoint(random_checkpoint)
    assert choose_engine(predictor, "torch") is None
    assert choose_engine(predictor, "auto", device="cuda") is None  # ONNX Runtime here runs on the CPU only
    with pytest.raises(UserError, match="--engine onnx runs on the CPU"):
        choose_engine(predictor, "onnx", device="cuda")
    with pytest.raises(UserError, match="unknown engine 'tensorrt'"):
        choose_engine(predictor, "tensorrt")
    import mnist_nn.inference.engine as engine_module

    def broken(predictor):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(engine_module, "onnx_bytes", broken)  # a model the exporter cannot take
    assert choose_engine(predictor, "auto") is None  # served by PyTorch, the reason said on stderr
    assert capsys.readouterr().err == "ONNX export failed (unsupported operator): the model runs in PyTorch\n"
    with pytest.raises(RuntimeError, match="unsupported operator"):
        choose_engine(predictor, "onnx")
    monkeypatch.setattr(engine_module, "_missing_modules", lambda: ["onnxruntime"])  # as without the export extra
    assert choose_engine(predictor, "auto") is None
    with pytest.raises(UserError, match=r"needs onnxruntime: pip install 'mnist-nn\[export\]'"):
        choose_engine(predictor, "onnx")


def _serve(checkpoint: Path, engine: str, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "mnist_nn", "serve", str(checkpoint), "--port", str(port), "--workers", "2"]
    process = subprocess.Popen([*command, "--engine", engine], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/health", timeout=2).close()
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(process.stderr.read()) from None
            time.sleep(0.2)


def _predict(url: str, pixels: np.ndarray) -> dict:
    import json

    body = json.dumps({"pixels": pixels.astype(int).tolist()}).encode()
    request = urllib.request.Request(f"{url}/api/predict?preprocess=false", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_serve_engines_give_the_same_answers(cnn_checkpoint, cache):
    import os

    env = {**os.environ, "MNIST_NN_CACHE": str(cache.parent)}
    pixels = digits(6, seed=3)
    answers, lines = {}, {}
    for engine in ("torch", "onnx"):
        process, url = _serve(cnn_checkpoint, engine, env)
        try:
            answers[engine] = [_predict(url, digit) for digit in pixels]  # two workers: both sessions used
        finally:
            process.terminate()
            lines[engine] = process.communicate(timeout=30)[1]
    assert "PyTorch, Ctrl-C" in lines["torch"] and "ONNX Runtime, Ctrl-C" in lines["onnx"]
    for old, new in zip(answers["torch"], answers["onnx"], strict=True):
        assert new["label"] == old["label"]
        np.testing.assert_allclose(list(new["probabilities"].values()), list(old["probabilities"].values()), atol=1e-5)
