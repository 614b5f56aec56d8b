"""Every user mistake: one line on stderr, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import Payload, assert_one_line_error, run_main


def test_console_script_and_module_entry_points():
    for command in (["mnist-nn", "--version"], [sys.executable, "-m", "mnist_nn", "--version"]):
        if command[0] == "mnist-nn":
            command[0] = str(Path(sys.executable).with_name("mnist-nn"))
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        assert done.returncode == 0 and done.stdout.startswith("mnist-nn ")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["--recipe", "nope"],
            "unknown recipe 'nope'; known recipes: cnn-best, cnn-fast, cnn-speedrun, mlp-best, robust, tutorial",
        ),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--epochs", "0"], "epochs must be a positive integer, got 0"),
        (["--epochs", "-2"], "epochs must be a positive integer, got -2"),
        (["--batch-size", "0"], "batch size must be a positive integer, got 0"),
        (["--batch-size", "-8"], "batch size must be a positive integer, got -8"),
        (["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    ],
)
def test_train_rejects_bad_arguments_before_writing_anything(tmp_path, capsys, argv, fragment):
    out = tmp_path / "run"
    code, _, err = run_main(capsys, "train", "--data-dir", str(tmp_path), "--out", str(out), *argv)
    assert_one_line_error(code, err, fragment)
    assert not out.exists()


def test_argparse_errors_are_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "mnist_nn", "train", "--epochs", "two"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mnist-nn train: error: argument --epochs: invalid int value: 'two' (see mnist-nn train --help)"
    ]


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("missing", "missing t10k-labels-idx1-ubyte"),
        ("truncated", "truncated: header says"),
        ("magic", "wrong magic number"),
        ("count", "holds 200 images but t10k-labels-idx1-ubyte holds 5 labels"),
        ("checksum", "checksum mismatch"),
    ],
)
def test_train_with_bad_data_leaves_no_run_directory(tmp_path, capsys, toy_dataset, damage, fragment):
    from conftest import idx_bytes

    labels = toy_dataset / "t10k-labels-idx1-ubyte.gz"
    content = gzip.decompress(labels.read_bytes())
    if damage == "missing":
        labels.unlink()
    elif damage == "truncated":
        labels.write_bytes(gzip.compress(content[:-3]))
    elif damage == "magic":
        labels.write_bytes(gzip.compress(b"\x00\x00\x09\x99" + content[4:]))
    elif damage == "count":
        labels.write_bytes(gzip.compress(idx_bytes(torch.zeros(5, dtype=torch.uint8))))
    # "checksum": the toy files are valid IDX but not MNIST, so MNIST's pinned MD5s reject them.
    dataset = "mnist" if damage == "checksum" else "toy"
    out = tmp_path / "run"
    code, _, err = run_main(
        capsys, "train", "--dataset", dataset, "--data-dir", str(toy_dataset), "--out", str(out), "--epochs", "1"
    )
    assert_one_line_error(code, err, fragment)
    assert not out.exists()


def test_output_folder_that_cannot_be_written(tmp_path, capsys, toy_dataset):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_main(
        capsys, "train", "--dataset", "toy", "--data-dir", str(toy_dataset), "--out", str(blocker / "run")
    )
    assert_one_line_error(code, err, f"cannot write to output folder {blocker / 'run'}")
    assert blocker.read_text() == "not a folder"


def test_output_folder_holding_a_run_is_not_overwritten(tmp_path, capsys, toy_dataset):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    code, _, err = run_main(capsys, "train", "--dataset", "toy", "--data-dir", str(toy_dataset), "--out", str(out))
    assert_one_line_error(code, err, "already exists and is not empty")
    assert (out / "summary.json").read_text() == "{}"


BAD_CHECKPOINTS = {
    "missing": "checkpoint {path} not found",
    "folder": "is not a file",
    "empty": "empty file (0 bytes), not a checkpoint",
    "garbage": "not a PyTorch file",  # random bytes: neither the zip nor the pickle header
    "markdown": "not a PyTorch file (it starts with b'# mnist-'",
    "zip": "a zip archive, but not a PyTorch file",
    "plain_pickle": "a Python pickle, not a PyTorch file",
    "truncated": "truncated PyTorch file (its zip index is missing)",
    "truncated_legacy": "truncated PyTorch file (it ends too early)",
    "not_ours": "a PyTorch file, but not an mnist-nn checkpoint (it holds a dict with keys 'weights'",
    "state_dict": "a PyTorch file, but not an mnist-nn checkpoint (it holds an OrderedDict with keys 'weight', 'bias'",
    "malicious": "refused: not a plain mnist-nn checkpoint: it holds Python objects (posix.system)",
    "malicious_torch": "refused: not a plain mnist-nn checkpoint: it holds Python objects (posix.system)",
    "whole_module": "refused: not a plain mnist-nn checkpoint: it holds Python objects (torch.nn.modules.linear.",
}


def _write_bad_checkpoint(path: Path, kind: str, marker: Path) -> None:
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"\x00" + os.urandom(4095))
    elif kind == "markdown":
        path.write_bytes((Path(__file__).parents[1] / "README.md").read_bytes())
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "not a model")
    elif kind == "plain_pickle":
        path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    elif kind == "truncated":
        torch.save({"format": "mnist-nn-checkpoint", "state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "truncated_legacy":
        torch.save({"w": torch.zeros(1000)}, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "not_ours":
        torch.save({"weights": torch.zeros(3), "step": 5}, path)
    elif kind == "state_dict":
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    elif kind == "malicious":
        with open(path, "wb") as handle:
            pickle.dump(Payload(str(marker)), handle)
    elif kind == "malicious_torch":
        torch.save({"format": "mnist-nn-checkpoint", "x": Payload(str(marker))}, path)
    elif kind == "whole_module":
        torch.save(torch.nn.Linear(2, 2), path)


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_evaluate_refuses_bad_checkpoints(tmp_path, capsys, kind):
    """Each way a file is not a usable checkpoint has its own one-line message, and no code in it runs."""
    path = tmp_path / "model.pt"
    marker = tmp_path / "payload-ran"
    _write_bad_checkpoint(path, kind, marker)
    code, out, err = run_main(capsys, "evaluate", str(path), "--out", str(tmp_path / "eval"))
    assert_one_line_error(code, err, BAD_CHECKPOINTS[kind].format(path=path))
    assert not marker.exists()
    assert not (tmp_path / "eval").exists()
    assert out == ""


def test_models_and_recipes_listings(capsys):
    code, out, _ = run_main(capsys, "models")
    assert code == 0 and out.startswith("tutorial-mlp ") and "cnn-best" in out and "175,306" not in out
    code, out, _ = run_main(capsys, "models", "--parameters")
    assert code == 0 and "tutorial-mlp" in out and "175,306" in out
    code, out, _ = run_main(capsys, "recipes")
    assert code == 0 and out.startswith("tutorial ") and "cnn-best" in out


def test_the_models_listing_read_from_source_is_the_registry():
    from mnist_nn.cli import _model_catalog
    from mnist_nn.models.networks import MODELS

    assert _model_catalog() == [(name, spec.description) for name, spec in MODELS.items()]


def test_the_parser_and_the_dispatch_come_from_one_table():
    from mnist_nn.cli import COMMANDS, HANDLERS, build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(subparsers.choices) == [c.name for c in COMMANDS] == list(HANDLERS)


def test_every_command_has_the_same_device_rule():
    from mnist_nn.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    defaults = {}
    for name, parser in subparsers.choices.items():
        for action in parser._actions:
            if "--device" in action.option_strings:
                defaults[name] = (action.default, action.help.split("auto (the default: ")[1][:12])
    # Inference takes the GPU when there is one; training only where a few timed steps are faster there.
    assert defaults == {
        **dict.fromkeys(["evaluate", "calibrate", "robustness", "predict", "serve"], ("auto", "a CUDA GPU, ")),
        **dict.fromkeys(["train", "sweep"], ("auto", "the CPU or a")),
    }


def test_every_recipe_field_has_help_and_its_flag_shows_it():
    """The help is on the Recipe field (one place); `train --help` prints it as written."""
    from dataclasses import fields

    from mnist_nn.cli import NOT_FLAGS, build_parser
    from mnist_nn.training.recipes import Recipe

    helps = {f.name: f.metadata.get("help", "") for f in fields(Recipe)}
    assert [name for name, text in helps.items() if not text.strip()] == []
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    shown = {a.dest: a.help % {} for a in subparsers.choices["train"]._actions if a.dest in helps}
    assert shown == {name: text for name, text in helps.items() if name not in NOT_FLAGS}


# Each runs in a fresh interpreter that reports whether the command imported torch.
NO_TORCH = [
    ["--help"],
    ["--version"],
    ["recipes"],
    ["models"],
    ["train", "--help"],
    ["serve", "--help"],
    ["robustness", "--help"],
    ["train", "--recipe", "nope"],
    ["train", "--epochs", "two"],
    ["predict"],
]


@pytest.mark.parametrize("argv", NO_TORCH, ids=" ".join)
def test_commands_that_need_no_model_do_not_load_torch(argv):
    """Start-up: these answer without importing torch (seconds); benchmarks/startup.py measures them."""
    probe = (
        "import sys\nfrom mnist_nn.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print('torch loaded:', 'torch' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=False)
    assert done.stderr.strip().splitlines()[-1] == "torch loaded: False", done.stderr


def test_a_library_message_names_the_flag_on_the_command_line(random_checkpoint, tmp_path, capsys):
    code, _, err = run_main(capsys, "predict", str(random_checkpoint), str(tmp_path), "--top-k", "0")
    assert_one_line_error(code, err, "--top-k must be a positive integer, got 0")
    code, _, err = run_main(capsys, "data", "--data-dir", str(tmp_path / "nowhere"))
    assert_one_line_error(code, err, f"data folder {tmp_path / 'nowhere'} (from --data-dir) does not exist")


def _train_toy(capsys, out: Path, toy_dataset: Path) -> None:
    code, _, err = run_main(
        capsys, "train", "--dataset", "toy", "--data-dir", str(toy_dataset), "--out", str(out), "--epochs", "1"
    )
    assert code == 0, err


def test_evaluate_uses_the_data_folder_the_run_recorded(tmp_path, capsys, toy_dataset, monkeypatch):
    """Trained with --data-dir, evaluated without: the run's folder, said on stderr, not a download."""
    _train_toy(capsys, tmp_path / "run", toy_dataset)
    cache = tmp_path / "cache"
    monkeypatch.setenv("MNIST_NN_CACHE", str(cache))
    monkeypatch.delenv("MNIST_NN_DATA", raising=False)
    monkeypatch.setenv("MNIST_NN_MIRROR", "http://127.0.0.1:9/")  # a download would fail at once
    code, out, err = run_main(capsys, "evaluate", str(tmp_path / "run" / "model.pt"), "--json")
    assert code == 0, err
    assert (
        err.strip()
        == f"mnist-nn: using the data folder recorded by the run ({tmp_path / 'run' / 'config.json'}), verified"
    )
    assert json.loads(out)["test_size"] == 200 and not cache.exists()


def test_evaluate_looks_elsewhere_when_the_recorded_folder_changed(tmp_path, capsys, toy_dataset, monkeypatch):
    _train_toy(capsys, tmp_path / "run", toy_dataset)
    monkeypatch.setenv("MNIST_NN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MNIST_NN_DATA", raising=False)
    labels = toy_dataset / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-1] + bytes([9])))
    code, _, err = run_main(capsys, "evaluate", str(tmp_path / "run" / "model.pt"))
    first, last = err.strip().splitlines()[0], err.strip().splitlines()[-1]
    assert first.startswith("mnist-nn: the files in the run's data folder") and "looking elsewhere" in first
    assert code == 2 and last.startswith("mnist-nn: error: no toy data found") and not (tmp_path / "cache").exists()


def test_train_and_evaluate_on_toy_data(tmp_path, capsys, toy_dataset):
    """The whole CLI path in seconds: run directory, checkpoint, plots, evaluate agreeing with train."""
    out = tmp_path / "run"
    code, stdout, err = run_main(
        capsys,
        "train",
        "--dataset",
        "toy",
        "--data-dir",
        str(toy_dataset),
        "--out",
        str(out),
        "--epochs",
        "3",
        "--val-size",
        "100",
        "--lr",
        "0.003",
        "--batch-size",
        "4",
    )
    assert code == 0, err
    assert "[batch   100/125]" in stdout  # the tutorial's log line every 100 batches
    summary = json.loads((out / "summary.json").read_text())
    files = {p.name for p in out.iterdir()}
    expected = {"accuracy.png", "config.json", "loss.png", "metrics.jsonl", "model.pt", "predictions.png"}
    expected |= {"summary.json", "state.pt"}  # state.pt: the resumable training state
    expected |= {"batches.jsonl", "samples.json"}  # for a live view: the loss every log_every batches, sample digits
    # The best validation epoch is model.pt; the final weights are kept as last.pt when they differ.
    assert files == expected | ({"last.pt"} if summary["selected_epoch"] != 3 else set())
    for png in ("accuracy.png", "loss.png", "predictions.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3] and all(m["eval_split"] == "val" for m in metrics)
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["epochs"] == 3 and config["data"]["val_size"] == 100
    assert set(config["versions"]) == {"mnist_nn", "torch", "torchvision", "python"}
    assert summary["test_accuracy"] > 0.9  # the toy bars are trivially separable
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert checkpoint["model"]["name"] == "tutorial-mlp"

    code, stdout, err = run_main(capsys, "evaluate", str(out / "model.pt"), "--data-dir", str(toy_dataset), "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["test_accuracy"] == summary["test_accuracy"]
    assert report["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert sum(map(sum, report["confusion_matrix"])) == 200
    assert (out / "evaluation" / "confusion.png").exists() and (out / "evaluation" / "mistakes.png").exists()
