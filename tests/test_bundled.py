"""The models bundled in the package: intact, as accurate as recorded, and used when no checkpoint is given."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from conftest import free_port
from mnist_nn.cli import main
from mnist_nn.core.errors import UserError
from mnist_nn.data.datasets import load_dataset, normalize
from mnist_nn.models.bundled import DEFAULT_MODEL, PRETRAINED_DIR, bundled_models, resolve_model
from mnist_nn.models.checkpoint import load_checkpoint
from mnist_nn.models.scoring import evaluate

ROOT = Path(__file__).resolve().parents[1]
DIGIT = ROOT / "docs" / "images" / "digit.png"
MODELS = bundled_models()


def test_the_bundle_lists_a_default_and_small_files():
    assert DEFAULT_MODEL in MODELS and next(iter(MODELS)) == DEFAULT_MODEL
    assert {"robust", "cnn-fast", "tutorial"} <= set(MODELS)
    for model in MODELS.values():
        assert model.path.parent == PRETRAINED_DIR and model.path.stat().st_size <= 1_100_000, model.name


@pytest.mark.parametrize("name", list(MODELS))
def test_each_bundled_file_is_the_recorded_one_and_loads_weights_only(name):
    model = MODELS[name]
    assert hashlib.sha256(model.path.read_bytes()).hexdigest() == model.sha256
    payload = torch.load(model.path, map_location="cpu", weights_only=True)  # plain tensors and data, no code
    assert payload["recipe"]["name"] == model.recipe and payload["recipe"]["seed"] == model.seed
    checkpoint = load_checkpoint(name)  # by name, as every command takes it
    assert checkpoint.path == model.path
    assert sum(p.numel() for p in checkpoint.model.parameters()) == model.parameters


@pytest.mark.parametrize("name", list(MODELS))
def test_each_bundled_model_scores_its_recorded_clean_accuracy(name, mnist_dir):
    model = MODELS[name]
    checkpoint = load_checkpoint(model.path)
    splits = load_dataset("mnist", mnist_dir)
    accuracy = evaluate(
        checkpoint.model, normalize(splits.test_images, checkpoint.mean, checkpoint.std, "cpu"), splits.test_labels
    ).accuracy
    # Another CPU may round a few logits differently: a few images of 10,000 at most.
    assert accuracy == pytest.approx(model.clean_accuracy, abs=5e-4)


def test_models_pretrained_lists_names_and_accuracies(capsys):
    assert main(["models", "--pretrained"]) == 0
    out = capsys.readouterr().out
    for model in MODELS.values():
        line = next(line for line in out.splitlines() if line.startswith(model.name + " "))
        assert f"{100 * model.clean_accuracy:.2f}%" in line and f"{100 * model.mnist_c_mean:.2f}%" in line
    assert "(default)" in next(line for line in out.splitlines() if line.startswith(DEFAULT_MODEL + " "))


def _predict_json(argv: list[str], capsys) -> tuple[int, list[dict], str]:
    code = main(["predict", *argv, "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else []), captured.err


def test_predict_without_a_checkpoint_uses_the_default_model(capsys):
    code, results, _ = _predict_json([str(DIGIT)], capsys)
    assert code == 0 and results[0]["digits"][0]["label"] == "7"
    code, by_name, _ = _predict_json(["--model", "tutorial", str(DIGIT)], capsys)
    assert code == 0 and by_name[0]["digits"][0]["label"] == "7"
    # The documented form, a checkpoint first, still works, with a bundled file's path or its name.
    code, by_path, _ = _predict_json([str(MODELS["cnn-fast"].path), str(DIGIT)], capsys)
    assert code == 0 and by_path[0]["digits"][0]["label"] == "7"
    code, positional_name, _ = _predict_json(["cnn-fast", str(DIGIT)], capsys)
    assert positional_name == by_path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--model", "nope", "IMAGE"],
            "nope: no such file, and not a bundled model (bundled: robust, cnn-fast, tutorial)",
        ),
        (["model.pt"], "no images given after the checkpoint model.pt: mnist-nn predict [CHECKPOINT] IMAGE..."),
    ],
)
def test_model_choice_errors_are_one_line(argv, message, capsys):
    argv = [str(DIGIT) if a == "IMAGE" else a for a in argv]
    code = main(["predict", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"mnist-nn: error: {message}"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_copy_of_a_bundled_file_is_one_line(damage, tmp_path, capsys):
    copy = tmp_path / "robust.pt"
    shutil.copyfile(MODELS[DEFAULT_MODEL].path, copy)
    data = bytearray(copy.read_bytes())
    if damage == "truncate":
        copy.write_bytes(bytes(data[: len(data) // 2]))
    else:
        middle = len(data) // 2
        data[middle : middle + 4096] = bytes(b ^ 0xFF for b in data[middle : middle + 4096])
        copy.write_bytes(bytes(data))
    code = main(["predict", "--model", str(copy), str(DIGIT), "--save-preprocessed", str(tmp_path / "seen")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"mnist-nn: error: {copy}: ")
    assert not (tmp_path / "seen").exists()  # nothing half-written
    assert hashlib.sha256(MODELS[DEFAULT_MODEL].path.read_bytes()).hexdigest() == MODELS[DEFAULT_MODEL].sha256


def test_resolve_model_prefers_an_existing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model(None) == MODELS[DEFAULT_MODEL].path
    assert resolve_model("tutorial") == MODELS["tutorial"].path
    Path("tutorial").write_bytes(b"mine")
    assert resolve_model("tutorial") == Path("tutorial")
    assert resolve_model("runs/x/model.pt") == Path("runs/x/model.pt")  # a path: its loader says it is missing
    with pytest.raises(UserError, match="not a bundled model"):
        resolve_model("robus")


def test_serve_without_a_checkpoint_answers_with_the_default_model():
    pytest.importorskip("fastapi")
    port = free_port()
    command = [sys.executable, "-m", "mnist_nn", "serve", "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()
            try:
                with urllib.request.urlopen(f"{base}/api/health", timeout=2) as response:
                    health = json.load(response)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.2)
        assert health["status"] == "ok" and health["model"] == "robust"  # the bundled default, by its own name
        assert health["pretrained"] == "robust"
        boundary = "mnist-nn-test-boundary"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\n'
                "Content-Type: image/png\r\n\r\n"
            ).encode()
            + DIGIT.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        kind = f"multipart/form-data; boundary={boundary}"
        request = urllib.request.Request(f"{base}/api/predict", data=body, headers={"Content-Type": kind})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            answer = json.load(response)
        assert answer["label"] == "7" and answer["model"] == "robust"
    finally:
        server.terminate()
        server.wait(30)
    assert "serving robust (cnn-best) (mnist" in server.stderr.read().decode()  # its network beside its name
