"""mnist-nn compare: the overlaid curves, the table of differing recipe fields and results, unfinished runs,
and bad input as one-line errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from mnist_nn.cli import main
from mnist_nn.lab.compare import comparison_figure, differing_fields, read_run


def _recipe(**changes) -> dict:
    recipe = {
        "name": "tutorial",
        "description": "the tutorial",
        "model": "tutorial-mlp",
        "epochs": 3,
        "batch_size": 64,
        "lr": 0.0045,
        "model_kwargs": {},
    }
    return {**recipe, **changes}


def _row(epoch: int, split: str = "test", accuracy: float = 0.9, loss: float = 0.3) -> dict:
    return {
        "epoch": epoch,
        "train_loss": loss + 0.05,
        "eval_split": split,
        "eval_loss": loss,
        "eval_accuracy": accuracy,
        "lr": 0.0045,
        "epoch_seconds": 2.0,
        "train_seconds": 2.0 * epoch,
    }


def make_run(folder: Path, recipe: dict, rows: list[dict], summary: dict | None = None, age: float = 0) -> Path:
    """A run directory as training writes it; ``age``: how many seconds ago its files were last written."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"recipe": recipe, "parameters": 1000}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    if age:
        past = time.time() - age
        for path in folder.iterdir():
            os.utime(path, (past, past))
    return folder


def _summary(accuracy: float, loss: float, seconds: float, epochs: int = 3) -> dict:
    return {
        "recipe": "tutorial",
        "epochs": epochs,
        "selected_epoch": epochs,
        "test_accuracy": accuracy,
        "test_loss": loss,
        "train_seconds": seconds,
    }


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    a = make_run(
        tmp_path / "base",
        _recipe(),
        [_row(1, accuracy=0.94, loss=0.2), _row(2, accuracy=0.95, loss=0.18), _row(3, accuracy=0.965, loss=0.145)],
        _summary(0.9648, 0.145, 6.0),
    )
    b = make_run(
        tmp_path / "slow",
        _recipe(lr=0.001, batch_size=128, description="another text"),
        [_row(1, accuracy=0.93, loss=0.22), _row(2, accuracy=0.943, loss=0.2), _row(3, accuracy=0.9538, loss=0.144)],
        _summary(0.9538, 0.144, 9.5),
    )
    return a, b


def test_compare_two_runs_names_the_fields_that_differ_and_writes_both_curves(two_runs, tmp_path, capsys):
    png = tmp_path / "compare.png"
    assert main(["compare", *map(str, two_runs), "--out", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: line.split()[1:] for line in lines if line and not line.startswith("--")}
    assert table["run"] == ["base", "slow"]
    assert table["batch_size"] == ["64", "128"] and table["lr"] == ["0.0045", "0.001"]
    assert "model" not in table and "epochs" in table  # equal fields are left out; the description too
    assert "description" not in table
    assert table["accuracy"] == ["96.48%", "95.38%"] and table["loss"] == ["0.1450", "0.1440"]
    assert table["training"] == ["time", "6.0", "s", "9.5", "s"]
    assert Image.open(png).size[0] > 600
    assert differing_fields([read_run(path) for path in two_runs]) == ["batch_size", "lr"]


def test_the_figure_holds_each_runs_curves(two_runs):
    figure = comparison_figure([read_run(path) for path in two_runs])
    loss_axes, accuracy_axes = figure.axes
    accuracy_lines = {line.get_label(): list(line.get_ydata()) for line in accuracy_axes.get_lines()}
    assert accuracy_lines == {"base, on test": [94.0, 95.0, 96.5], "slow, on test": [93.0, 94.3, 95.38]}
    # Per run: the train loss (labelled) and the evaluation loss (dashed) in the run's colour.
    curves = [line for line in loss_axes.get_lines() if len(line.get_xdata())]
    assert len(curves) == 4
    assert [list(line.get_ydata()) for line in curves[:2]] == [
        pytest.approx([0.25, 0.23, 0.195]),
        pytest.approx([0.2, 0.18, 0.145]),
    ]
    assert curves[0].get_color() == curves[1].get_color() != curves[2].get_color()


def test_json_gives_the_same_comparison(two_runs, tmp_path, capsys):
    assert main(["compare", *map(str, two_runs), "--out", str(tmp_path / "c.png"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["differing_fields"] == ["batch_size", "lr"]
    first, second = report["runs"]
    assert first["differing"] == {"batch_size": 64, "lr": 0.0045}
    assert (first["status"], first["accuracy"], first["split"]) == ("finished", 0.9648, "test")
    assert first["train_seconds"] == 6.0
    assert (second["accuracy"], second["loss"], second["epochs_done"]) == (0.9538, 0.144, 3)
    assert report["figure"] == str(tmp_path / "c.png")


def test_unfinished_runs_show_their_last_epoch_and_whether_they_still_train(tmp_path, capsys):
    running = make_run(tmp_path / "running", _recipe(epochs=10, val_size=5000), [_row(1, "val", 0.97, 0.1)])
    stopped = make_run(
        tmp_path / "stopped", _recipe(epochs=10), [_row(1, "val", 0.96, 0.12), _row(2, "val", 0.975, 0.09)], age=3600
    )
    empty = make_run(tmp_path / "empty", _recipe(epochs=10), [])
    (tmp_path / "running" / "metrics.jsonl").open("a").write('{"epoch": 2, "train_lo')  # a line being written
    assert main(["compare", str(running), str(stopped), str(empty), "--out", str(tmp_path / "c.png"), "--json"]) == 0
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)["runs"]}
    assert rows["running"]["status"] == "running" and rows["running"]["epochs_done"] == 1
    assert (rows["running"]["accuracy"], rows["running"]["split"], rows["running"]["epoch"]) == (0.97, "val", 1)
    assert rows["stopped"]["status"] == "stopped" and rows["stopped"]["accuracy"] == 0.975
    assert rows["stopped"]["train_seconds"] == 4.0
    assert rows["empty"]["accuracy"] is None and rows["empty"]["train_seconds"] is None
    assert main(["compare", str(running), str(stopped), str(empty), "--out", str(tmp_path / "c.png")]) == 0
    text = capsys.readouterr().out
    assert "val, epoch 2" in text and "no epoch yet" in text and "val_size" in text


def test_one_run_is_fine_and_runs_with_one_name_are_told_apart(tmp_path, capsys):
    a = make_run(tmp_path / "a" / "run", _recipe(), [_row(1)], _summary(0.9, 0.3, 2.0, epochs=1))
    b = make_run(tmp_path / "b" / "run", _recipe(), [_row(1)], _summary(0.91, 0.29, 2.0, epochs=1))
    assert main(["compare", str(a), "--out", str(tmp_path / "one.png")]) == 0
    text = capsys.readouterr().out
    assert "differ" not in text and "90.00%" in text
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "two.png"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["run"] for row in report["runs"]] == [str(a), str(b)] and report["differing_fields"] == []


def test_runs_written_by_training_compare(tmp_path, capsys, toy_dataset):
    import mnist_nn

    for name, lr in (("fast", 0.01), ("slow", 0.001)):
        settings = {"dataset": "toy", "model_kwargs": {"hidden": [32]}, "epochs": 2, "lr": lr, "quiet": True}
        mnist_nn.train("tutorial", data_dir=toy_dataset, out=tmp_path / name, **settings)
    capsys.readouterr()
    png = tmp_path / "c.png"
    assert main(["compare", str(tmp_path / "fast"), str(tmp_path / "slow"), "--out", str(png), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["differing_fields"] == ["lr"]
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("fast", "slow")]
    assert [row["accuracy"] for row in report["runs"]] == [s["test_accuracy"] for s in summaries]
    assert [row["status"] for row in report["runs"]] == ["finished", "finished"] and png.stat().st_size > 10_000


@pytest.mark.parametrize(
    "setup, fragment",
    [
        ("missing", "no such run directory"),
        ("file", "is a file, not a run directory"),
        ("empty", "is not a run directory: it has no config.json"),
        ("damaged", "config.json is damaged (not valid JSON)"),
        ("other json", "config.json is not a run's configuration"),
        ("bad summary", "summary.json is not a run's summary"),
        ("bad out", "names the PNG to write"),
        ("out nowhere", "does not exist; create it, or choose another --out"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, two_runs, setup, fragment):
    target = tmp_path / "target"
    out = tmp_path / "c.png"
    if setup == "file":
        target.write_text("hello")
    elif setup == "empty":
        target.mkdir()
    elif setup == "damaged":
        target.mkdir()
        (target / "config.json").write_text('{"recipe": ')
    elif setup == "other json":
        target.mkdir()
        (target / "config.json").write_text("[1, 2]")
    elif setup == "bad summary":
        target = make_run(target, _recipe(), [_row(1)], {"recipe": "tutorial"})
    elif setup == "bad out":
        target, out = two_runs[0], tmp_path / "c.txt"
    elif setup == "out nowhere":  # a mistyped folder is refused, as export does, not created
        target, out = two_runs[0], tmp_path / "nowhere" / "c.png"
    assert main(["compare", str(two_runs[1]), str(target), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnist-nn: error: ") and fragment in err and err.count("\n") == 1
    assert "--out" in err if setup.endswith("out") else True
    assert not out.exists() and not (tmp_path / "nowhere").exists()
