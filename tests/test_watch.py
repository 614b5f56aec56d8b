"""`mnist-nn watch` and `train --watch`: run directories read while they change, the JSON the page
polls, the command-line errors, and the page's own files (the browser test is test_watch_browser.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from conftest import REPO, assert_one_line_error, run_main, toy_spec, write_idx_dataset
from mnist_nn.apps.watch import check_run_dir
from mnist_nn.apps.watch.app import PAGE_CSP, STATIC, create_app
from mnist_nn.apps.watch.files import JsonLinesTail
from mnist_nn.apps.watch.runs import run_labels

TRAIN_SIZE, BATCH_SIZE, LOG_EVERY = 1000, 100, 5  # 10 batches an epoch, a point every 5


# --------------------------------------------------------------------------- hand-written runs


def write_run(
    folder: Path,
    *,
    epochs: int = 3,
    done: int = 2,
    logged: int | None = None,
    finished: bool = False,
    world_size: int | None = None,
) -> Path:
    """A run directory as the trainer writes it: ``done`` epochs scored, batches logged up to epoch
    ``logged`` (default: ``done``), summary.json when ``finished``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "recipe": {
            "name": "tutorial",
            "model": "tutorial-mlp",
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "log_every": LOG_EVERY,
        },
        "data": {"dataset": "mnist", "train_size": TRAIN_SIZE},
        "parameters": 1234,
    }
    if world_size:
        config["distributed"] = {"world_size": world_size}
    (folder / "config.json").write_text(json.dumps(config))
    batches = []
    for epoch in range(1, (logged or done) + 1):
        for batch in (5, 10):
            batches.append({"epoch": epoch, "batch": batch, "step": 10 * (epoch - 1) + batch, "train_loss": 2 / epoch})
    (folder / "batches.jsonl").write_text("".join(json.dumps(row) + "\n" for row in batches))
    metrics = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "eval_split": "val",
            "eval_loss": 0.5 / e,
            "eval_accuracy": 0.9 + e / 100,
            "lr": 0.01,
            "epoch_seconds": 2.0 + e,
            "train_seconds": 0.0,
        }
        for e in range(1, done + 1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))
    if done:
        pixels = [[[(r * 28 + c) % 256 for c in range(28)] for r in range(28)] for _ in range(10)]
        answers = [
            {"epoch": e, "predictions": [(d + (e < done)) % 10 for d in range(10)], "confidences": [0.5] * 10}
            for e in range(1, done + 1)
        ]
        (folder / "samples.json").write_text(
            json.dumps({"labels": list(range(10)), "pixels": pixels, "epochs": answers})
        )
    if finished:
        summary = {
            "epochs": done,
            "selected_epoch": done,
            "test_accuracy": 0.9871,
            "test_loss": 0.04,
            "train_seconds": 9.5,
        }
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def snapshot(*folders: Path, headers: dict | None = None) -> dict:
    with TestClient(create_app(folders)) as client:
        answer = client.get("/api/runs", headers=headers or {})
    assert answer.status_code == 200, answer.text
    return answer.json()


def only_run(folder: Path) -> dict:
    [run] = snapshot(folder)["runs"]
    return run


# --------------------------------------------------------------------------- what the page is sent


def test_a_finished_run_gives_its_curves_samples_and_test_accuracy(tmp_path):
    run = only_run(write_run(tmp_path / "run", epochs=3, done=3, finished=True))
    assert run["status"] == "finished"
    assert run["message"] == "finished after 3 epochs: test accuracy 98.71%"
    assert (run["epoch"], run["epochs"], run["done"]) == (3, 3, 3)
    assert run["batches_per_epoch"] == 10 and run["log_every"] == LOG_EVERY
    # Batch 5 of 10 in epoch 2 is at 1.5 epochs; the eval points sit at whole epochs.
    assert run["train"]["x"] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert run["train"]["step"] == [5, 10, 15, 20, 25, 30]
    assert run["train"]["loss"] == pytest.approx([2, 2, 1, 1, 2 / 3, 2 / 3])
    assert run["eval"]["epoch"] == [1, 2, 3] and run["eval"]["split"] == "val"
    assert run["eval"]["accuracy"] == pytest.approx([0.91, 0.92, 0.93])
    assert run["eval"]["seconds"] == pytest.approx([3.0, 4.0, 5.0])
    assert run["summary"]["test_accuracy"] == pytest.approx(0.9871)
    samples = run["samples"]
    assert samples["epoch"] == 3  # the latest epoch's answers
    assert samples["predictions"] == list(range(10)) and samples["labels"] == list(range(10))
    assert len(samples["pixels"]) == 10 and len(samples["pixels"][0]) == 784 and samples["pixels"][0][29] == 29
    assert run["problems"] == []


def test_a_run_in_progress_says_which_epoch_it_is_on(tmp_path):
    run = only_run(write_run(tmp_path / "run", epochs=5, done=1, logged=2))
    assert run["status"] == "training" and run["message"] == "training epoch 2 of 5"
    assert (run["epoch"], run["epochs"], run["done"]) == (2, 5, 1)
    assert run["summary"] is None and run["samples"]["epoch"] == 1
    # Between epochs (the last scored, no batch of the next yet) it is on the next one.
    run = only_run(write_run(tmp_path / "between", epochs=5, done=2))
    assert (run["epoch"], run["message"]) == (3, "training epoch 3 of 5")
    # Every epoch scored, no summary yet: the test set is being scored.
    run = only_run(write_run(tmp_path / "last", epochs=2, done=2))
    assert (run["epoch"], run["message"]) == (2, "all 2 epochs trained: scoring the test set")


def test_an_early_stop_says_how_many_epochs_were_planned(tmp_path):
    run = only_run(write_run(tmp_path / "run", epochs=10, done=4, finished=True))
    assert run["message"] == "finished after 4 epochs (stopped early: 10 planned): test accuracy 98.71%"


@pytest.mark.parametrize("setup", ["empty", "dotfiles", "missing"])
def test_a_run_not_started_yet_waits_and_says_so(tmp_path, setup):
    folder = tmp_path / "run"
    if setup != "missing":
        folder.mkdir()
    if setup == "dotfiles":
        (folder / ".write-test-abc").write_text("")  # what the trainer writes first
    run = only_run(folder)
    assert run["status"] == "waiting"
    assert run["message"].startswith("waiting for the run to start")
    assert run["train"] is None and run["eval"] is None


def test_a_partial_last_line_is_left_for_the_next_read(tmp_path):
    folder = write_run(tmp_path / "run", epochs=3, done=1)
    with open(folder / "batches.jsonl", "a") as handle:
        handle.write('{"epoch": 2, "batch": 5, "st')  # the trainer is in the middle of this line
    with open(folder / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 2, "train_loss": 0.5, "eval_')
    app = create_app([folder])
    with TestClient(app) as client:
        first = client.get("/api/runs").json()["runs"][0]
        assert first["train"]["x"] == [0.5, 1.0] and first["eval"]["epoch"] == [1]
        assert first["problems"] == []  # a line being written is no problem
        with open(folder / "batches.jsonl", "a") as handle:
            handle.write('ep": 15, "train_loss": 0.75}\n')
        second = client.get("/api/runs").json()["runs"][0]
    assert second["train"]["x"] == [0.5, 1.0, 1.5] and second["train"]["loss"][-1] == 0.75


def test_a_tailed_log_counts_bad_complete_lines_only(tmp_path):
    tail, rows, restarts = JsonLinesTail(cap=1 << 20), [], []
    (tmp_path / "log.jsonl").write_bytes(b'{"a": 1}\nnot json\n\n{"b": 2}\n{"c"')
    tail.poll(tmp_path, "log.jsonl", rows.extend, lambda: restarts.append(len(rows)))
    assert rows == [{"a": 1}, {"b": 2}] and tail.not_json == 1 and restarts == [0]
    with open(tmp_path / "log.jsonl", "ab") as handle:
        handle.write(b": 3} \n")
    tail.poll(tmp_path, "log.jsonl", rows.extend, lambda: restarts.append(len(rows)))
    assert rows[2:] == [{"c": 3}] and tail.last_read == 6 and restarts == [0]
    (tmp_path / "log.jsonl").write_bytes(b"")  # truncated: what was read before no longer stands
    tail.poll(tmp_path, "log.jsonl", rows.extend, lambda: restarts.append(len(rows)))
    assert restarts == [0, 3] and tail.not_json == 0


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("config.json", "{not json", "config.json: not valid JSON"),
        ("config.json", "[1, 2]", "config.json: not a JSON object"),
        ("summary.json", "null", "summary.json: not a JSON object"),
        (
            "samples.json",
            '{"labels": [1], "pixels": [[[1]]], "epochs": []}',
            "samples.json: each digit must be 28 rows",
        ),
        ("samples.json", '{"pixels": []}', "samples.json: no 'labels' field"),
        ("samples.json", "\x00\xff binary", "samples.json: not valid JSON"),
        ("batches.jsonl", '{"epoch": 1, "batch": 5, "step": 5, "train_loss": 1}\ngarbage\n', "1 line not JSON"),
        ("batches.jsonl", '{"epoch": "one", "batch": 5}\n[]\n', "2 rows without the expected fields"),
        ("metrics.jsonl", '{"epoch": 0}\n', "1 row without the expected fields"),
    ],
)
def test_a_malformed_file_is_a_problem_shown_never_a_500(tmp_path, name, content, problem):
    folder = write_run(tmp_path / "run", epochs=3, done=2)
    (folder / name).write_text(content)
    run = only_run(folder)
    assert run["status"] in ("training", "finished")
    assert any(problem in line for line in run["problems"]), run["problems"]


def test_values_json_cannot_carry_are_sent_as_null(tmp_path):
    folder = write_run(tmp_path / "run", epochs=3, done=1)
    (folder / "metrics.jsonl").write_text(
        '{"epoch": 1, "train_loss": NaN, "eval_loss": Infinity, "eval_accuracy": 0.5, "epoch_seconds": true}\n'
    )
    run = only_run(folder)
    assert run["eval"]["train_loss"] == [None] and run["eval"]["loss"] == [None]
    assert run["eval"]["accuracy"] == [0.5] and run["eval"]["seconds"] == [None]


def test_a_folder_that_cannot_be_read_is_a_status(tmp_path, monkeypatch):
    from mnist_nn.apps.watch import runs

    folder = write_run(tmp_path / "run")

    def broken(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runs.RunView, "snapshot", broken)
    run = only_run(folder)
    assert run["status"] == "unreadable" and "disk on fire" in run["message"]


def test_a_resumed_run_is_followed_through_its_rewritten_files(tmp_path):
    """On resume the trainer rewrites metrics.jsonl and batches.jsonl to its saved state, then appends."""
    folder = write_run(tmp_path / "run", epochs=3, done=2)
    with TestClient(create_app([folder])) as client:
        before = client.get("/api/runs").json()["runs"][0]
        assert len(before["train"]["x"]) == 4 and before["eval"]["epoch"] == [1, 2]
        # Resumed from the state after epoch 1: the later rows are dropped (a new file, renamed into place) ...
        write_run(tmp_path / "resumed", epochs=3, done=1)
        for name in ("batches.jsonl", "metrics.jsonl"):
            os.replace(tmp_path / "resumed" / name, folder / name)
        trimmed = client.get("/api/runs").json()["runs"][0]
        assert trimmed["train"]["x"] == [0.5, 1.0] and trimmed["eval"]["epoch"] == [1]
        assert trimmed["message"] == "training epoch 2 of 3"
        # ... and recorded again as it trains.
        with open(folder / "batches.jsonl", "a") as handle:
            handle.write(json.dumps({"epoch": 2, "batch": 5, "step": 15, "train_loss": 0.9}) + "\n")
        again = client.get("/api/runs").json()["runs"][0]
    assert again["train"]["x"] == [0.5, 1.0, 1.5]


def test_a_data_parallel_run_is_read_from_rank_0s_directory(tmp_path):
    run = only_run(write_run(tmp_path / "ddp", epochs=2, done=2, finished=True, world_size=4))
    assert run["processes"] == 4
    assert run["batches_per_epoch"] == 10  # the recipe's batch size is the global one
    assert run["status"] == "finished"


def test_two_runs_come_in_the_order_given_with_distinct_labels(tmp_path):
    first = write_run(tmp_path / "lr-0.01" / "run", epochs=3, done=3, finished=True)
    second = write_run(tmp_path / "lr-0.1" / "run", epochs=3, done=1)
    answer = snapshot(first, second, first)  # the same folder twice is watched once
    names = [run["name"] for run in answer["runs"]]
    assert names == ["lr-0.01/run", "lr-0.1/run"]
    assert [run["status"] for run in answer["runs"]] == ["finished", "training"]
    assert [len(run["eval"]["epoch"]) for run in answer["runs"]] == [3, 1]
    assert run_labels([Path("/a/x"), Path("/b/y")]) == ["x", "y"]


def test_an_unchanged_run_is_answered_304_and_a_change_200(tmp_path):
    folder = write_run(tmp_path / "run", epochs=3, done=1)
    with TestClient(create_app([folder])) as client:
        first = client.get("/api/runs")
        etag = first.headers["etag"]
        assert etag == f'"{first.json()["version"]}"' and first.headers["cache-control"] == "no-cache"
        unchanged = client.get("/api/runs", headers={"if-none-match": etag})
        assert unchanged.status_code == 304 and unchanged.content == b""
        with open(folder / "batches.jsonl", "a") as handle:
            handle.write(json.dumps({"epoch": 2, "batch": 5, "step": 15, "train_loss": 0.9}) + "\n")
        changed = client.get("/api/runs", headers={"if-none-match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert len(changed.json()["runs"][0]["train"]["x"]) == 3


# --------------------------------------------------------------------------- the page's files


def test_the_page_and_its_files_come_from_the_app_only(tmp_path):
    with TestClient(create_app([write_run(tmp_path / "run")])) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-security-policy"] == PAGE_CSP
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(source.startswith("/") for source in sources), sources
        for source in sources:
            answer = client.get(source)
            assert answer.status_code == 200, source
            assert answer.headers["content-security-policy"] == PAGE_CSP
        assert "uPlot" in client.get("/static/vendor/uPlot.iife.min.js").text
        assert client.get("/static/nope.js").status_code == 404
        assert client.get("/static/../runs.py").status_code == 404
    script = (STATIC / "watch.js").read_text()
    assert "http://" not in script and "https://" not in script and 'fetch("/api/runs"' in script


def test_the_vendored_chart_library_is_the_version_its_readme_names_with_its_licence():
    vendor = STATIC / "vendor"
    version = re.search(r"uPlot (\d+\.\d+\.\d+)", (vendor / "README.md").read_text())[1]
    assert (vendor / "uPlot.iife.min.js").read_text().startswith(f"/*! https://github.com/leeoniya/uPlot (v{version})")
    assert (vendor / "LICENSE").read_text().startswith("The MIT License")


def test_the_package_data_ships_every_static_file():
    """A wheel holds the page only if pyproject's package-data names its files."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "mnist_nn.apps.watch"
    ]
    package = STATIC.parent
    for path in STATIC.rglob("*"):
        if path.is_file():
            assert any(path.relative_to(package).match(pattern) for pattern in patterns), path


# --------------------------------------------------------------------------- the command line


def test_watch_refuses_what_is_not_a_run_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = run_main(capsys, "watch", str(tmp_path / "nowhere"))
    assert_one_line_error(code, err, f"{tmp_path / 'nowhere'} does not exist: pass a run directory")
    code, _, err = run_main(capsys, "watch", str(tmp_path / "notes.txt"))
    assert_one_line_error(code, err, "notes.txt is a file, not a run directory")
    code, _, err = run_main(capsys, "watch", str(tmp_path))
    assert_one_line_error(code, err, f"{tmp_path} is not a run directory (no config.json, metrics.jsonl or state.pt")
    write_run(tmp_path / "runs" / "a")
    write_run(tmp_path / "runs" / "b")
    code, _, err = run_main(capsys, "watch", str(tmp_path / "runs"))
    assert_one_line_error(code, err, "it holds run directories (a, b): pass those")
    # A good folder beside a bad one: refused before anything is served.
    code, _, err = run_main(capsys, "watch", str(tmp_path / "runs" / "a"), str(tmp_path / "nowhere"))
    assert_one_line_error(code, err, "does not exist")


def test_check_run_dir_accepts_run_directories_and_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_run_dir(tmp_path / "empty") == tmp_path / "empty"
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / "state.pt").write_bytes(b"")  # stopped before its first epoch
    (tmp_path / "stopped" / "other").write_text("")
    assert check_run_dir(tmp_path / "stopped") == tmp_path / "stopped"


def test_watch_and_train_watch_name_their_port_when_it_is_taken(tmp_path, capsys):
    from mnist_nn.apps.watch import bind

    folder = write_run(tmp_path / "run")
    with bind("127.0.0.1", 0) as taken:
        port = str(taken.getsockname()[1])
        code, _, err = run_main(capsys, "watch", str(folder), "--port", port)
        assert_one_line_error(code, err, f"port {port} on 127.0.0.1 is already in use; choose another with --port PORT")
        out = tmp_path / "new-run"
        code, _, err = run_main(capsys, "train", "--out", str(out), "--epochs", "1", "--watch", "--watch-port", port)
        assert_one_line_error(code, err, "already in use; choose another with --watch-port PORT")
        assert not out.exists()  # refused before training
    code, _, err = run_main(capsys, "watch", str(folder), "--port", "70000")
    assert_one_line_error(code, err, "--port must be from 1 to 65535 (or 0: any free port), got 70000")


def test_watch_starts_without_loading_torch(tmp_path):
    probe = (
        "import sys\nfrom mnist_nn.cli import main\ncode = main(sys.argv[1:])\n"
        "print('torch loaded:', 'torch' in sys.modules, file=sys.stderr)\nsys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, "watch", str(tmp_path / "nowhere")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "torch loaded: False", done.stderr


def _read_until(stream, fragment: str) -> list[str]:
    lines = []
    while True:
        line = stream.readline()
        assert line, f"ended before {fragment!r}: {lines}"
        lines.append(line)
        if fragment in line:
            return lines


def test_train_watch_serves_the_run_and_keeps_its_page_until_ctrl_c(tmp_path):
    """The real command: a toy run trained with --watch, its page polled, then Ctrl-C (a normal end: 0)."""
    import httpx

    data = write_idx_dataset(tmp_path / "toy", train=600, test=200)
    script = (
        "import sys\nfrom mnist_nn.data.datasets import DatasetSpec, register_dataset\n"
        f"register_dataset(DatasetSpec(**{toy_spec('toy')!r}))\n"
        "from mnist_nn.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    out = tmp_path / "run"
    argv = [
        "train",
        "--dataset",
        "toy",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--log-every",
        "2",
        "--batch-size",
        "32",
        "--watch",
        "--watch-port",
        "0",
        "--device",
        "cpu",
        "--quiet",
    ]
    env = {**os.environ, "MNIST_NN_THREADS": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", script, *argv], stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = _read_until(child.stderr, "watch the run at")[-1]
        url = re.search(r"(http://\S+/)", first)[1]
        assert "the page stays after training, until Ctrl-C" in first
        _read_until(child.stderr, "training is over")
        answer = httpx.get(url + "api/runs", timeout=10).json()
        [run] = answer["runs"]
        summary = json.loads((out / "summary.json").read_text())
        assert run["status"] == "finished" and run["epochs"] == 2
        assert run["summary"]["test_accuracy"] == pytest.approx(summary["test_accuracy"])
        assert run["eval"]["epoch"] == [1, 2] and len(run["train"]["x"]) == 2 * 9  # 19 batches an epoch, 1 in 2
        assert httpx.get(url, timeout=10).status_code == 200
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "api/runs", timeout=5)
