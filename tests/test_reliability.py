"""Resume after any interruption, reproducible runs, safe checkpoints, no lost work.

The kill and signal tests train in child processes forked from a forkserver that has
already imported torch and mnist_nn: a fresh interpreter per child would spend seconds
importing, and these tests start about twenty of them.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pickle
import random
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import Payload, toy_spec
from mnist_nn.cli import main
from mnist_nn.core.errors import Interrupted, UserError
from mnist_nn.models.checkpoint import load_checkpoint, load_train_state

TOY_SPEC = toy_spec("toyrel")
# Every piece of state that must survive a resume: batch norm, dropout (the global RNG), EMA,
# augmentation (its own generator), a per-step schedule, shuffling, best-epoch tracking.
RECIPE_ARGS = [
    "--dataset", "toyrel", "--model", "mlp", "--model-kwargs", '{"hidden": [48]}', "--batch-size", "16",
    "--val-size", "100", "--lr", "0.003", "--shuffle", "--schedule", "cosine", "--ema-decay", "0.9",
    "--aug-rotate", "5", "--quiet",
]  # fmt: skip
TIMING = ("epoch_seconds", "train_seconds", "wall_seconds")


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory) -> Path:
    from conftest import write_idx_dataset

    return write_idx_dataset(tmp_path_factory.mktemp("toyrel") / "data", train=600, test=200)


@pytest.fixture
def toy(toy_folder):
    from mnist_nn.data.datasets import DATASETS, DatasetSpec, register_dataset

    register_dataset(DatasetSpec(**TOY_SPEC))
    yield toy_folder
    DATASETS.pop("toyrel", None)


# --------------------------------------------------------------------------- child processes


def _child(argv: list[str], log_path: str, fsync_delay: float) -> None:
    """A training process: the toy dataset registered, output to a log, exit status from the CLI."""
    os.environ["MNIST_NN_THREADS"] = "1"
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - kept open until os._exit
    sys.stdout = sys.stderr = log
    from tqdm import tqdm

    from mnist_nn.data.datasets import DatasetSpec, register_dataset

    # tqdm's default lock is a named multiprocessing semaphore, which a SIGKILL leaks (a warning at exit).
    tqdm.set_lock(threading.RLock())
    register_dataset(DatasetSpec(**TOY_SPEC))
    if fsync_delay:
        # A slow disk: checkpoint writes take a large share of the time, so random kills often land inside one.
        real_fsync = os.fsync

        def slow_fsync(fd: int) -> None:
            time.sleep(fsync_delay)
            real_fsync(fd)

        os.fsync = slow_fsync
    code = main(argv)
    log.flush()
    os._exit(code)


def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mnist_nn.cli", "mnist_nn.training.trainer", "torchvision", __name__])
    return context


def _start(argv: list[str], log: Path, fsync_delay: float = 0.0) -> multiprocessing.Process:
    process = _context().Process(target=_child, args=(argv, str(log), fsync_delay), daemon=True)
    process.start()
    return process


def _new_run(folder: Path, out: Path, epochs: int) -> list[str]:
    return ["train", *RECIPE_ARGS, "--data-dir", str(folder), "--epochs", str(epochs), "--out", str(out)]


def _wait_for_save(state: Path, since: int, process: multiprocessing.Process, limit: float = 240.0) -> bool:
    """Until ``state`` is rewritten (the loop runs, its signal handlers are in place) or the process ends.
    The limit is generous: on a loaded machine importing torch alone can take most of a minute."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.is_alive():
        if state.exists() and state.stat().st_mtime_ns != since:
            return True
        time.sleep(0.005)
    return False


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _tensors(value, prefix=""):
    """Every tensor in a nested state, by path (for bitwise comparison)."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}/{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{prefix}/{index}")


def assert_same_run(run: Path, reference: Path) -> None:
    """Final weights, metrics and summary bitwise equal (timings aside)."""
    assert _metrics(run) == _metrics(reference)
    for name in ("model.pt", "last.pt"):
        assert (run / name).exists() == (reference / name).exists()
        if (reference / name).exists():
            a, b = (torch.load(r / name, weights_only=True)["state_dict"] for r in (run, reference))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ours, theirs = (load_train_state(r / "state.pt") for r in (run, reference))
    for part in ("model", "optimizer", "ema", "best", "loss_sum"):
        a, b = dict(_tensors(ours[part])), dict(_tensors(theirs[part]))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert ours["position"] == theirs["position"]
    ours, theirs = (
        {k: v for k, v in json.loads((r / "summary.json").read_text()).items() if k not in TIMING}
        for r in (run, reference)
    )
    assert ours == theirs


@pytest.fixture(scope="module")
def reference(toy_folder, tmp_path_factory):
    """An uninterrupted 10-epoch run in a child process, and how long it took."""
    out = tmp_path_factory.mktemp("reference") / "run"
    started = time.monotonic()
    process = _start(_new_run(toy_folder, out, 10), out.parent / "log.txt")
    process.join(120)
    assert process.exitcode == 0, (out.parent / "log.txt").read_text()
    return out, time.monotonic() - started


# --------------------------------------------------------------------------- the acceptance tests


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(toy_folder, reference, tmp_path):
    """At least 10 SIGKILLs, at random moments (some inside checkpoint writes), each followed by --resume."""
    reference_run, _ = reference
    run = tmp_path / "run"
    resume = ["train", "--resume", str(run), "--quiet"]
    rng = random.Random(20261129)
    kills, torn_writes, positions = 0, 0, []
    finished = False
    while kills < 12:
        state_before = _mtime(run / "state.pt")
        argv = resume if kills else [*_new_run(toy_folder, run, 10), "--checkpoint-every", "4"]
        process = _start(argv, tmp_path / "log.txt", fsync_delay=0.03)
        # Mostly once training is under way (the first time always: before the first checkpoint there is
        # nothing to resume), sometimes while a resume is still starting (loading, rewriting metrics.jsonl).
        if not kills or rng.random() < 0.75:
            _wait_for_save(run / "state.pt", state_before, process)
        process.join(rng.uniform(0.0, 0.35))
        if process.exitcode is not None:
            assert process.exitcode == 0, (tmp_path / "log.txt").read_text()
            finished = True
            break
        process.kill()  # SIGKILL: no handler, no cleanup
        process.join()
        kills += 1
        torn_writes += any(run.glob(".state.pt.*.tmp"))
        position = load_train_state(run / "state.pt")["position"]
        positions.append((position["epoch"], position["batch"]))
    for _ in range(5):
        if finished:
            break
        process = _start(resume, tmp_path / "log.txt")
        process.join(120)
        assert process.exitcode == 0, (tmp_path / "log.txt").read_text()
        finished = True
    print(f"{kills} kills, {torn_writes} inside a checkpoint write; positions (epoch, batch): {positions}")
    assert kills >= 10, f"the run finished after {kills} kills; positions {positions}"
    assert torn_writes >= 1  # a kill inside a write left its temp file, and the resume still worked
    assert len({epoch for epoch, _ in positions}) >= 2  # kills spread across epochs,
    assert any(batch for _, batch in positions)  # and within them
    assert not list(run.glob(".*.tmp"))  # resuming cleans up what the kills left
    assert_same_run(run, reference_run)


def test_sigint_and_sigterm_stop_cleanly_and_resume_to_the_same_result(toy_folder, reference, tmp_path):
    reference_run, reference_seconds = reference
    run = tmp_path / "run"
    log = tmp_path / "log.txt"
    resume = ["train", "--resume", str(run), "--quiet"]
    steps = [("SIGINT", _new_run(toy_folder, run, 10), 130), ("SIGTERM", resume, 143), ("SIGINT twice", resume, 130)]
    for name, argv, code in steps:
        log.write_text("")
        before = _mtime(run / "state.pt")
        process = _start(argv, log)
        # A signal before the first save finds Python's own handler (plain "interrupted"): wait for the loop.
        assert _wait_for_save(run / "state.pt", before, process), (name, log.read_text())
        time.sleep(reference_seconds / 40)
        signum = signal.SIGTERM if name == "SIGTERM" else signal.SIGINT
        os.kill(process.pid, signum)
        if name == "SIGINT twice":
            time.sleep(0.002)
            os.kill(process.pid, signum)
        process.join(60)
        assert process.exitcode == code, (name, log.read_text())
        lines = log.read_text().strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in lines[0], lines
        where = load_train_state(run / "state.pt").get("position")  # intact and loadable after every stop
        assert lines[0].endswith(f"resume with: mnist-nn train --resume {run}"), (name, lines[0], where)
        if name == "SIGINT":
            assert lines[0].startswith("mnist-nn: interrupted by SIGINT"), lines[0]
    process = _start(resume, log)
    process.join(120)
    assert process.exitcode == 0, log.read_text()
    assert_same_run(run, reference_run)


def test_a_second_ctrl_c_while_a_stopped_run_unwinds_still_says_how_to_resume(monkeypatch, capsys):
    """The second signal can land after the run put Python's own handlers back (a loaded machine, a
    quick finger): Python then raises a plain KeyboardInterrupt over the run's Interrupted."""
    from mnist_nn import cli

    stopped = Interrupted("interrupted by SIGINT after batch 3/40; resume with: mnist-nn train --resume run", 130)

    def train_stopped_then_interrupted(args):
        try:
            raise stopped
        finally:
            raise KeyboardInterrupt  # as the default SIGINT handler raises it during the unwinding

    monkeypatch.setitem(cli.HANDLERS, "train", train_stopped_then_interrupted)
    assert main(["train", "--recipe", "tutorial"]) == 130
    assert capsys.readouterr().err == f"mnist-nn: {stopped}\n"
    monkeypatch.setitem(cli.HANDLERS, "train", lambda args: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(["train", "--recipe", "tutorial"]) == 130
    assert capsys.readouterr().err == "mnist-nn: interrupted\n"  # Ctrl-C anywhere else: the plain word


def test_ctrl_c_while_the_results_are_written_says_how_to_resume(toy, tmp_path, monkeypatch, capsys):
    from mnist_nn.training.trainer import Trainer

    def interrupted_finish(self, wall_start):
        raise KeyboardInterrupt  # Python's own SIGINT handler: the loop's were put back after the last epoch

    monkeypatch.setattr(Trainer, "finish", interrupted_finish)
    run = tmp_path / "run"
    assert main(_new_run(toy, run, 2)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mnist-nn: interrupted by SIGINT while writing the results"), err
    assert err[0].endswith(f"resume with: mnist-nn train --resume {run}")
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # the finished state: only the results are written
    assert (run / "model.pt").exists() and (run / "summary.json").exists()


def test_same_seed_same_weights_and_metrics_and_a_full_disk_loses_nothing(toy, tmp_path, monkeypatch, capsys):
    """Two runs: identical metrics.jsonl and weights. A third hits ENOSPC mid-run, reports it, and resumes."""
    for name in ("a", "b"):
        assert main([*_new_run(toy, tmp_path / name, 3), "--checkpoint-every", "5"]) == 0
    assert (tmp_path / "a" / "metrics.jsonl").read_text() != ""
    assert_same_run(tmp_path / "b", tmp_path / "a")

    real_fsync, calls = os.fsync, []

    def full_disk(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 8:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    capsys.readouterr()
    assert main([*_new_run(toy, tmp_path / "c", 3), "--checkpoint-every", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device; free some disk space" in err, err
    assert err.endswith(f"the last good state is intact: mnist-nn train --resume {tmp_path / 'c'}")
    assert not list((tmp_path / "c").glob(".*.tmp"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(["train", "--resume", str(tmp_path / "c")]) == 0
    assert_same_run(tmp_path / "c", tmp_path / "a")


def test_divergence_stops_with_a_clear_message_and_a_usable_checkpoint(toy, tmp_path, capsys):
    run = tmp_path / "run"
    argv = [*_new_run(toy, run, 3), "--optimizer", "sgd", "--lr", "1e9", "--checkpoint-every", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("mnist-nn: error: training diverged: the loss became NaN or infinite in epoch 1, batches")
    assert "(learning rate " in err and "try a lower learning rate, e.g. --lr 1e+08" in err
    good = re.search(r"the last good state \(epoch 1, batch (\d+)\) is kept in (\S+);", err)
    assert good and good[2] == str(run / "state.pt"), err
    state = load_train_state(run / "state.pt")
    assert state["position"]["batch"] == int(good[1])
    assert all(torch.isfinite(t).all() for _, t in _tensors(state["model"]))
    checkpoint = load_checkpoint(run / "state.pt")  # evaluate/predict accept the last good state
    assert checkpoint.model_name == "mlp" and checkpoint.dataset == "toyrel"
    assert main(["evaluate", str(run / "state.pt"), "--data-dir", str(toy), "--json"]) == 0


# --------------------------------------------------------------------------- checkpoint safety


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_resume_refuses_a_malicious_state_without_running_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "payload-ran"
    with open(run / "state.pt", "wb") as handle:
        pickle.dump({"format": "mnist-nn-train-state", "model": Payload(str(marker))}, handle)
    err = _one_line_error(capsys, ["train", "--resume", str(run)])
    assert "refused: not a plain mnist-nn training state" in err
    assert not marker.exists()
    torch.save({"format": "mnist-nn-train-state", "x": Payload(str(marker))}, run / "state.pt")  # zip format too
    assert "refused" in _one_line_error(capsys, ["train", "--resume", str(run)])
    assert not marker.exists()


@pytest.fixture
def finished_run(toy, tmp_path):
    run = tmp_path / "run"
    assert main(_new_run(toy, run, 1)) == 0
    return run


def _edit_state(run: Path, edit) -> None:
    state = torch.load(run / "state.pt", weights_only=True)
    edit(state)
    state["position"]["finished"] = False  # so the checks are reached rather than "already finished"
    torch.save(state, run / "state.pt")


def test_resume_refuses_other_models_datasets_versions_and_conflicting_flags(finished_run, toy, tmp_path, capsys):
    run = finished_run
    assert "has already finished" in _one_line_error(capsys, ["train", "--resume", str(run)])
    err = _one_line_error(capsys, ["train", "--resume", str(run), "--lr", "0.1", "--recipe", "cnn-fast"])
    assert (
        "these would change it: --recipe cnn-fast (the run's recipe is tutorial); --lr 0.1 (the run's is 0.003)" in err
    )
    assert "no such run directory" in _one_line_error(capsys, ["train", "--resume", str(tmp_path / "nope")])
    assert "holds no state.pt" in _one_line_error(capsys, ["train", "--resume", str(toy)])

    from conftest import write_idx_dataset

    other = write_idx_dataset(tmp_path / "other", train=600, test=200, seed=7)
    _edit_state(run, lambda state: None)
    err = _one_line_error(capsys, ["train", "--resume", str(run), "--data-dir", str(other)])
    assert "differ from those run" in err and "MD5s do not match" in err

    def other_model(state):
        state["recipe"]["model"] = "lenet5"
        state["recipe"]["model_kwargs"] = {}

    _edit_state(run, other_model)
    assert "weights do not fit model 'lenet5'" in _one_line_error(capsys, ["train", "--resume", str(run)])
    _edit_state(run, lambda state: state.update(format_version=99))
    err = _one_line_error(capsys, ["train", "--resume", str(run)])
    assert "training state format 99 is not supported by mnist-nn" in err
    _edit_state(run, lambda state: state.update(format_version=1, recipe={**state["recipe"], "new_field": 1}))
    assert "incompatible mnist-nn version" in _one_line_error(capsys, ["train", "--resume", str(run)])
    torch.save(torch.load(run / "model.pt", weights_only=True), run / "state.pt")
    assert "a model checkpoint, not a training state" in _one_line_error(capsys, ["train", "--resume", str(run)])

    with pytest.raises(UserError, match="a checkpoint for toyrel, not mnist"):
        load_checkpoint(run / "model.pt", expect_dataset="mnist")


def test_disk_space_is_checked_before_training(toy, tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    from mnist_nn.training import resume

    monkeypatch.setattr(resume.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=0, free=10**6))
    out = tmp_path / "run"
    err = _one_line_error(capsys, _new_run(toy, out, 1))
    assert "not enough free disk space in" in err and "MB free" in err
    assert not out.exists()


def test_a_second_signal_stops_at_once():
    from mnist_nn.training.resume import StopRequest

    stop = StopRequest(Path("run/state.pt"), Path("run"))
    stop(signal.SIGTERM, None)
    assert stop.signum == signal.SIGTERM
    with pytest.raises(Interrupted) as raised:
        stop(signal.SIGINT, None)
    assert raised.value.exit_code == 130 and "stopped at once" in str(raised.value)
    assert isinstance(raised.value, KeyboardInterrupt)
