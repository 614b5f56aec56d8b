"""What a newcomer meets first: a torchvision that does not match torch, the bundled model's name, where
the figures go, progress when the output is a file, the hints of predict and data, one line per error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import mnist_nn
from conftest import REPO, assert_one_line_error, run_main
from mnist_nn.training import run_plan


def test_run_versions_are_read_without_importing_torchvision(monkeypatch):
    # A torchvision built for another torch fails on import ("operator torchvision::nms does not exist").
    monkeypatch.setitem(sys.modules, "torchvision", None)
    versions = run_plan.library_versions()
    assert versions["torchvision"][0].isdigit() and versions["torch"] and versions["mnist_nn"]


def test_a_run_that_fails_before_writing_leaves_no_empty_folder(toy_dataset, tmp_path, monkeypatch):
    def broken() -> dict:
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(run_plan, "library_versions", broken)
    with pytest.raises(RuntimeError, match="torchvision::nms"):
        mnist_nn.train("tutorial", dataset="toy", data_dir=toy_dataset, out=tmp_path / "new" / "run", quiet=True)
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is theirs: kept
    with pytest.raises(RuntimeError):
        mnist_nn.train("tutorial", dataset="toy", data_dir=toy_dataset, out=tmp_path / "mine", quiet=True)
    assert (tmp_path / "mine").is_dir()


# --------------------------------------------------------------------------- the bundled model's name


def test_the_bundled_model_goes_by_its_own_name_with_its_network_beside_it(random_checkpoint):
    from mnist_nn.models.bundled import model_name, model_title, resolve_model

    network = "cnn-best"  # the bundled robust model's network
    assert model_name(resolve_model("robust"), network) == "robust"
    assert model_title(resolve_model("robust"), network) == "robust (cnn-best)"
    assert model_title(random_checkpoint, "tutorial-mlp") == "tutorial-mlp"  # one's own: its network


def test_the_server_answers_with_the_bundled_models_name(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mnist_nn.apps.serve.app import create_app
    from mnist_nn.inference.predictor import Predictor

    with TestClient(create_app(Predictor.from_checkpoint("robust"))) as client:
        health = client.get("/api/health").json()
        answer = client.post("/api/predict", json={"pixels": [[0] * 28] * 12 + [[0] * 12 + [255] * 4 + [0] * 12] * 16})
    assert (health["model"], health["pretrained"]) == ("robust", "robust")
    assert answer.status_code == 200 and answer.json()["model"] == "robust"


def test_evaluate_names_the_bundled_model(tmp_path):
    import torch

    from mnist_nn.inference import evaluate
    from mnist_nn.models.checkpoint import load_checkpoint

    # The report of an evaluation of the bundled model (here on 20 blank images: the name is what counts).
    robust = load_checkpoint("robust")
    with torch.inference_mode():
        log_probabilities = torch.log_softmax(robust.model(torch.zeros(20, 1, 28, 28)), dim=1)
    result = evaluate.evaluation_from_log_probabilities(log_probabilities, torch.arange(20) % 10)
    report = evaluate._evaluation_report([robust], [log_probabilities], result, list("0123456789"), tmp_path, False)
    assert report["model"] == "robust (cnn-best)"
    assert evaluate.format_report(report).count("robust (cnn-best)") >= 1


# --------------------------------------------------------------------------- where the figures go


def test_evaluate_puts_a_bundled_models_pictures_in_runs_not_in_the_package(random_checkpoint):
    from mnist_nn.inference.evaluate import _default_out_dir
    from mnist_nn.models.bundled import resolve_model

    # The bundled model's own folder is the installed package: its pictures go to runs/evaluation-NAME.
    assert _default_out_dir(resolve_model("robust")) == Path("runs") / "evaluation-robust"
    assert _default_out_dir(resolve_model("tutorial")) == Path("runs") / "evaluation-tutorial"
    # A user's checkpoint keeps its evaluation folder beside it.
    assert _default_out_dir(Path(random_checkpoint)) == Path(random_checkpoint).parent / "evaluation"


def test_compare_writes_beside_the_runs_and_another_set_gets_another_file(tmp_path, monkeypatch, capsys):
    from test_compare import _recipe, _row, _summary, make_run

    runs = tmp_path / "runs"
    a = make_run(runs / "a", _recipe(), [_row(1)], _summary(0.9, 0.3, 2.0, epochs=1))
    b = make_run(runs / "b", _recipe(lr=0.01), [_row(1)], _summary(0.91, 0.29, 2.0, epochs=1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_main(capsys, "compare", a, b)
    assert code == 0, err
    assert f"curves: {runs / 'compare-a+b.png'}" in out
    first = (runs / "compare-a+b.png").read_bytes()
    code, out, err = run_main(capsys, "compare", a)
    assert code == 0, err
    assert f"curves: {runs / 'compare-a.png'}" in out
    assert (runs / "compare-a.png").is_file() and (runs / "compare-a+b.png").read_bytes() == first
    assert list(elsewhere.iterdir()) == []  # nothing lands in the current folder


def test_lr_find_never_overwrites_an_earlier_sweep(tmp_path, monkeypatch):
    from mnist_nn.lab.lr_find import default_figure

    monkeypatch.chdir(tmp_path)
    first = default_figure("tutorial")
    assert first.parent == Path("runs") and first.name.startswith("lr-find-tutorial-") and first.suffix == ".png"
    first.parent.mkdir()
    first.write_bytes(b"an earlier sweep")
    second = default_figure("tutorial")
    assert second != first and not second.exists()
    assert default_figure(str(tmp_path / "my-recipe.toml")).name.startswith("lr-find-my-recipe-")


@pytest.mark.parametrize("command", ["compare", "lr-find", "robustness"])
def test_an_out_in_a_folder_that_does_not_exist_is_refused_not_created(command, tmp_path, capsys, random_checkpoint):
    from test_compare import _recipe, _row, make_run

    out = tmp_path / "nowhere" / "x.png"
    first = {"compare": [make_run(tmp_path / "run", _recipe(), [_row(1)])], "lr-find": [], "robustness": []}
    first["robustness"] = [random_checkpoint]
    code, _, err = run_main(capsys, command, *first[command], "--out", out)
    assert_one_line_error(code, err, f"output folder {out.parent} does not exist; create it, or choose another --out")
    assert not out.parent.exists()


# --------------------------------------------------------------------------- predict


def test_predict_hints_at_multi_for_a_number_and_not_for_a_digit(capsys):
    code, out, err = run_main(capsys, "predict", REPO / "docs/images/number.png", REPO / "docs/images/digit.png")
    assert code == 0 and err == ""
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: {REPO / 'docs/images/number.png'} looks like several digits side by side: --multi reads it as a number"
    ]
    code, out, _ = run_main(capsys, "predict", REPO / "docs/images/number.png", "--multi")
    assert code == 0 and "note:" not in out


def test_a_predict_error_is_printed_once(random_checkpoint, tmp_path, capsys):
    code, out, err = run_main(capsys, "predict", random_checkpoint, tmp_path / "missing.png")
    assert code == 1
    assert err.strip() == f"mnist-nn: error: {tmp_path / 'missing.png'}: no such file or folder"
    assert (out + err).count("no such file") == 1
    [row] = out.splitlines()[1:]
    assert row.split()[-1] == "error" and row.split()[0].endswith("missing.png")  # the row marks the file only


# --------------------------------------------------------------------------- data


def test_a_torchvision_that_cannot_be_imported_is_one_line(monkeypatch):
    from mnist_nn.core.errors import UserError
    from mnist_nn.data.datasets import import_torchvision_datasets

    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)  # as a torchvision built for another torch
    with pytest.raises(UserError) as caught:
        import_torchvision_datasets()
    message = str(caught.value)
    assert message.startswith("torchvision cannot be imported (") and "\n" not in message
    assert "must come from the same index; reinstall both as docs/install.md says" in message
