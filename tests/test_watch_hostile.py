"""`mnist-nn watch` against hostile run directories: a named pipe, a device, links out of the folder,
logs of 50 MB, rows no run writes. Nothing may hang a poll, fill the memory, show a file from elsewhere,
or turn one bad row into an unreadable run (the timing of large polls: benchmarks/watch_poll.py)."""

from __future__ import annotations

import json
import os
import tracemalloc
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from mnist_nn.apps.watch import WatchServer, bind
from mnist_nn.apps.watch.files import CHUNK_BYTES, read_capped
from mnist_nn.apps.watch.runs import RunView
from mnist_nn.apps.watch.series import MAX_POINTS
from test_watch import only_run, write_run


def test_a_named_pipe_for_a_log_never_holds_up_a_poll(tmp_path):
    folder = write_run(tmp_path / "run", epochs=3, done=2)
    other = write_run(tmp_path / "other", epochs=3, done=1)
    server = WatchServer([folder, other], bind("127.0.0.1", 0)).start()
    try:
        urllib.request.urlopen(server.url + "api/runs", timeout=10).read()  # the server's first answer, warm
        (folder / "metrics.jsonl").unlink()
        os.mkfifo(folder / "metrics.jsonl")  # no writer: an open for reading would wait for ever
        with urllib.request.urlopen(server.url + "api/runs", timeout=1) as answer:
            runs = json.loads(answer.read())["runs"]
    finally:
        server.stop()
    assert "metrics.jsonl: not a regular file: not read" in runs[0]["problems"]
    assert runs[0]["train"]["x"] == [0.5, 1.0, 1.5, 2.0] and runs[0]["eval"]["epoch"] == []
    assert runs[1]["eval"]["epoch"] == [1] and runs[1]["problems"] == []


def test_a_link_to_a_device_is_refused_without_reading_it(tmp_path):
    folder = write_run(tmp_path / "run", epochs=3, done=2)
    for name in ("metrics.jsonl", "samples.json"):
        (folder / name).unlink()
        (folder / name).symlink_to("/dev/zero")
    tracemalloc.start()
    try:
        run = RunView(folder, "run").snapshot()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak / 2**20:.1f} MB"
    assert "metrics.jsonl: a link out of the run directory: not read" in run["problems"]
    assert "samples.json: a link out of the run directory: not read" in run["problems"]
    assert run["status"] == "training" and len(run["train"]["x"]) == 4


def test_a_read_stops_at_the_cap_on_bytes_read_whatever_size_the_file_reports():
    fd = os.open("/dev/zero", os.O_RDONLY)  # reports a size of 0, never ends
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more than 3,000,000 bytes"):
            read_capped(fd, 3_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert peak < 3_000_000 + 3 * CHUNK_BYTES


def test_a_link_out_of_the_run_directory_is_not_followed_and_one_inside_is(tmp_path):
    secret = tmp_path / "elsewhere" / "secret.json"
    secret.parent.mkdir()
    secret.write_text(json.dumps({"recipe": {"name": "SECRET-RECIPE"}, "test_accuracy": 0.5}))
    folder = write_run(tmp_path / "run", epochs=3, done=2)
    (folder / "config.json").unlink()
    (folder / "config.json").symlink_to(secret)
    (folder / "summary.json").symlink_to("../elsewhere/secret.json")
    (folder / "metrics.jsonl").rename(folder / "metrics-copy.jsonl")
    (folder / "metrics.jsonl").symlink_to("metrics-copy.jsonl")  # inside the folder: read as any file
    run = only_run(folder)
    assert "SECRET" not in json.dumps(run)
    assert "config.json: a link out of the run directory: not read" in run["problems"]
    assert "summary.json: a link out of the run directory: not read" in run["problems"]
    assert run["summary"] is None and run["eval"]["epoch"] == [1, 2]


def test_rows_no_run_writes_are_skipped_and_counted_and_the_run_is_shown(tmp_path):
    folder = write_run(tmp_path / "run", epochs=3, done=2)
    huge = "9" * 400
    with open(folder / "metrics.jsonl", "a") as handle:
        handle.write(f'{{"epoch": {huge}, "eval_accuracy": 0.5}}\n')
        handle.write(f'{{"epoch": 3, "train_loss": {huge}, "eval_accuracy": "high"}}\n')
        handle.write("{broken\n")
    with open(folder / "batches.jsonl", "a") as handle:
        handle.write(f'{{"epoch": {huge}, "batch": 5, "train_loss": 1.0}}\n')
        handle.write('{"epoch": 3, "batch": 5, "train_loss": [1]}\n')
    run = only_run(folder)
    assert run["status"] == "training" and run["eval"]["epoch"] == [1, 2, 3]
    assert run["eval"]["train_loss"][-1] is None and run["eval"]["accuracy"][-1] is None
    assert run["skipped"] == {"batches.jsonl": 2, "metrics.jsonl": 2}
    assert "metrics.jsonl: 1 line not JSON, skipped" in run["problems"]
    assert "metrics.jsonl: 1 row without the expected fields, skipped" in run["problems"]
    assert "batches.jsonl: 2 rows without the expected fields, skipped" in run["problems"]


METRICS_ROW = '{{"epoch": {0}, "train_loss": 0.5, "eval_split": "val", "eval_loss": 0.25, "eval_accuracy": 0.9}}\n'
BATCH_ROW = '{{"epoch": {0}, "batch": 5, "step": {0}, "train_loss": 0.125}}\n'


def write_big_log(path: Path, row: str, megabytes: int) -> int:
    """A JSON-lines log of ``megabytes``, ``row`` formatted with 1, 2, ...; how many rows it holds."""
    lines = []
    size = rows = 0
    while size < megabytes * 2**20:
        rows += 1
        lines.append(row.format(rows))
        size += len(lines[-1])
    path.write_text("".join(lines))
    return rows


def test_a_second_poll_of_50_mb_logs_reads_only_the_bytes_appended(tmp_path):
    folder = write_run(tmp_path / "run", epochs=10**9, done=1)
    epochs = write_big_log(folder / "metrics.jsonl", METRICS_ROW, 50)
    rows = write_big_log(folder / "batches.jsonl", BATCH_ROW, 50)
    view = RunView(folder, "run")
    first = view.snapshot()
    assert first["problems"] == [] and first["eval"]["epoch"][-1] == epochs
    assert len(first["eval"]["epoch"]) <= MAX_POINTS + 1 and len(first["train"]["x"]) <= MAX_POINTS + 1
    assert view.metrics.tail.last_read == (folder / "metrics.jsonl").stat().st_size
    new_row = json.dumps({"epoch": rows + 1, "batch": 5, "step": rows + 1, "train_loss": 0.0625}) + "\n"
    with open(folder / "batches.jsonl", "a") as handle:
        handle.write(new_row)
    second = view.snapshot()
    assert view.batches.tail.last_read == len(new_row) and view.metrics.tail.last_read == 0
    assert second["train"]["loss"][-1] == 0.0625 and second["epoch"] == rows + 1
    # Thinned evenly: the curve still spans the whole run.
    assert second["train"]["x"][0] == 0.5 and second["train"]["x"][-1] == rows + 0.5
