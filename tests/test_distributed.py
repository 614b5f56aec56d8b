"""Data-parallel training under torchrun: 2 CPU processes, gloo, rendezvous on 127.0.0.1.

Each test launches ``python -m torch.distributed.run --nproc-per-node 2`` on a small script that
registers the toy dataset (the workers are fresh interpreters) and calls ``mnist_nn.cli.main``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import free_port, toy_spec
from mnist_nn.cli import main
from mnist_nn.models.checkpoint import load_train_state
from mnist_nn.models.networks import CPUSyncBatchNorm
from mnist_nn.training.distributed import shard_bounds
from test_reliability import assert_same_run

TOY_SPEC = toy_spec("toy")
# $TEST_STEP_DELAY slows every step (the schedule is read once per step) so that a test can stop a run mid-epoch.
LAUNCHER = f"""
import os, sys, time
from mnist_nn.data.datasets import DatasetSpec, register_dataset
register_dataset(DatasetSpec(**{TOY_SPEC!r}))
delay = float(os.environ.get("TEST_STEP_DELAY", "0"))
if delay:
    import mnist_nn.training.trainer as trainer
    real_lr_factor = trainer.lr_factor
    def slow_lr_factor(*args):
        time.sleep(delay)
        return real_lr_factor(*args)
    trainer.lr_factor = slow_lr_factor
from mnist_nn.cli import main
raise SystemExit(main(sys.argv[1:]))
"""
# No dropout and no augmentation: the two trajectories may differ only by rounding.
PLAIN = ["--dataset", "toy", "--model", "mlp", "--batch-size", "16", "--val-size", "100", "--optimizer", "sgd",
         "--lr", "0.05", "--shuffle", "--epochs", "2", "--quiet"]  # fmt: skip
# Everything with per-rank state: batch norm, dropout, augmentation, EMA, a per-step schedule, shuffling.
STATEFUL = ["--dataset", "toy", "--model", "mlp", "--model-kwargs", '{"hidden": [48]}', "--batch-size", "16",
            "--val-size", "100", "--lr", "0.003", "--shuffle", "--schedule", "cosine", "--ema-decay", "0.9",
            "--aug-rotate", "5", "--epochs", "3", "--checkpoint-every", "5", "--quiet"]  # fmt: skip


def _torchrun(args: list[str], log: Path, cwd: Path, delay: float = 0.0) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), *args]  # fmt: skip
    env = {**os.environ, "MNIST_NN_THREADS": "1", "OMP_NUM_THREADS": "1", "TEST_STEP_DELAY": str(delay)}
    with open(log, "w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=env)


def _finish(process: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    process.wait(timeout)
    text = log.read_text()
    assert process.returncode == 0, text[-4000:]
    return text


@pytest.fixture
def launcher(tmp_path: Path) -> Path:
    script = tmp_path / "launch_toy.py"
    script.write_text(LAUNCHER)
    return script


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "state.pt", weights_only=True)["model"]


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], parameters_only: bool = False) -> float:
    keys = [k for k in a if a[k].is_floating_point() and not (parameters_only and "running" in k)]
    assert keys and a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in keys)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- units, no processes


def test_shards_are_contiguous_cover_the_batch_and_match_the_documented_split():
    assert [shard_bounds(128, r, 2) for r in range(2)] == [(0, 64), (64, 128)]
    for size in (1, 5, 7, 16, 100):
        for world in (1, 2, 3, 4):
            bounds = [shard_bounds(size, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == size
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            assert max(s - f for f, s in bounds) - min(s - f for f, s in bounds) <= 1


def test_sync_batchnorm_is_plain_batch_norm_outside_a_process_group():
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm1d(6)
    synced = CPUSyncBatchNorm(6)
    synced.load_state_dict(plain.state_dict())
    x = torch.randn(32, 6) * 3 + 1
    assert torch.allclose(plain(x), synced(x))
    assert plain.state_dict().keys() == synced.state_dict().keys()


def test_nccl_without_cuda_is_one_line(toy_dataset, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["train", *PLAIN, "--data-dir", str(toy_dataset), "--out", str(tmp_path / "run"), "--dist-backend",
                 "nccl", "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "mnist-nn: error: --dist-backend nccl needs CUDA GPUs; use --dist-backend gloo (or auto) on the CPU"
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 2 processes


def test_two_processes_follow_the_one_process_trajectory(toy_dataset, launcher, tmp_path, monkeypatch):
    """Same global batch and order: the weights after 2 epochs (64 steps, each epoch ending in a batch of 4
    split 2 + 2) agree to 1e-6, plain and with synchronized batch norm; the metrics agree too."""
    monkeypatch.setenv("MNIST_NN_THREADS", "1")
    data = ["--data-dir", str(toy_dataset)]
    plain = ["--model-kwargs", '{"hidden": [48], "dropout": 0, "batch_norm": false}']
    bn = ["--model-kwargs", '{"hidden": [48], "dropout": 0, "batch_norm": true}']
    two_plain = _torchrun([str(launcher), "train", *PLAIN, *data, *plain, "--out", "p2"], tmp_path / "p2.log", tmp_path)
    assert main(["train", *PLAIN, *data, *plain, "--out", str(tmp_path / "p1")]) == 0
    _finish(two_plain, tmp_path / "p2.log")
    two_bn = _torchrun(
        [str(launcher), "train", *PLAIN, *data, *bn, "--sync-bn", "--out", "b2"], tmp_path / "b2.log", tmp_path
    )
    assert main(["train", *PLAIN, *data, *bn, "--out", str(tmp_path / "b1")]) == 0
    _finish(two_bn, tmp_path / "b2.log")

    plain_diff = _max_abs_diff(_weights(tmp_path / "p1"), _weights(tmp_path / "p2"))
    bn_diff = _max_abs_diff(_weights(tmp_path / "b1"), _weights(tmp_path / "b2"), parameters_only=True)
    bn_stats_diff = _max_abs_diff(_weights(tmp_path / "b1"), _weights(tmp_path / "b2"))
    print(f"max abs diff, 1 vs 2 processes: plain {plain_diff:.2e}; sync-bn weights {bn_diff:.2e}, "
          f"with running statistics {bn_stats_diff:.2e}")  # fmt: skip
    assert plain_diff <= 1e-6 and bn_diff <= 1e-6 and bn_stats_diff <= 1e-5
    for one, two in (("p1", "p2"), ("b1", "b2")):
        for a, b in zip(_metrics(tmp_path / one), _metrics(tmp_path / two), strict=True):
            for key in ("train_loss", "eval_loss", "eval_accuracy", "lr"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (one, key)
    config = json.loads((tmp_path / "b2" / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "gloo", "sync_bn": True, "global_batch_size": 16,
                                     "per_process_batch_size": 8}  # fmt: skip


def _wait_for_mid_epoch_save(state: Path, process: subprocess.Popen, after_step: int, limit: float = 120) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        try:
            position = load_train_state(state)["position"]
        except Exception:  # not written yet, or being replaced
            position = None
        if position and position["batch"] > 0 and position["step"] > after_step:
            return position
        time.sleep(0.05)
    raise AssertionError(f"no mid-epoch save after step {after_step} (exit {process.poll()})")


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _kill_all(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (each worker runs in a session of its own), and wait until they are gone."""
    workers = _children(process.pid)
    for pid in [process.pid, *workers]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(30)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in _status(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers survived SIGKILL"
        time.sleep(0.05)


def _status(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}") / "status").read_text().lower()
    except OSError:
        return "zombie"


def test_a_stopped_and_a_killed_two_process_run_resume_to_the_uninterrupted_result(toy_dataset, launcher, tmp_path):
    """SIGTERM to torchrun: both ranks stop after the same step and rank 0 saves; --resume; SIGKILL of
    torchrun and its workers after a mid-epoch save; --resume again: bitwise the uninterrupted 2-process run."""
    data = ["--data-dir", str(toy_dataset)]
    uninterrupted = [str(launcher), "train", *STATEFUL, *data, "--out", "reference"]
    reference = _torchrun(uninterrupted, tmp_path / "ref.log", tmp_path)
    run, log = tmp_path / "run", tmp_path / "run.log"
    resume = [str(launcher), "train", "--resume", str(run), "--quiet"]

    process = _torchrun([str(launcher), "train", *STATEFUL, *data, "--out", str(run)], log, tmp_path, delay=0.02)
    _wait_for_mid_epoch_save(run / "state.pt", process, after_step=5)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    process.wait(120)
    ours = [line for line in log.read_text().splitlines() if line.startswith("mnist-nn:")]
    assert len(ours) == 1 and ours[0].startswith("mnist-nn: interrupted by SIGTERM in epoch"), log.read_text()
    assert ours[0].endswith(f"resume with: mnist-nn train --resume {run}")
    stopped = load_train_state(run / "state.pt")
    assert stopped["position"]["batch"] > 0 and len(stopped["ranks"]) == 2

    process = _torchrun(resume, log, tmp_path, delay=0.02)
    _wait_for_mid_epoch_save(run / "state.pt", process, after_step=stopped["position"]["step"] + 30)
    _kill_all(process)
    killed = load_train_state(run / "state.pt")["position"]
    assert killed["step"] > stopped["position"]["step"] and not killed["finished"]

    _finish(_torchrun(resume, log, tmp_path), log)
    _finish(reference, tmp_path / "ref.log")
    print(f"stopped at {stopped['position']}, killed after the save at {killed}")
    assert_same_run(run, tmp_path / "reference")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["reference", "run", "toy"]


def test_a_batch_size_the_processes_cannot_share_is_one_line(toy_dataset, launcher, tmp_path):
    args = [str(launcher), "train", *PLAIN, "--data-dir", str(toy_dataset), "--batch-size", "15", "--out", "run"]
    process = _torchrun(args, tmp_path / "log", tmp_path)
    process.wait(120)
    ours = [line for line in (tmp_path / "log").read_text().splitlines() if line.startswith("mnist-nn:")]
    assert process.returncode != 0
    assert ours == [
        "mnist-nn: error: batch size 15 is not divisible by the 2 processes: the batch size is the global one, "
        "split evenly across processes; choose a multiple of 2 (e.g. --batch-size 14)"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.realdata
def test_one_epoch_on_two_processes_reaches_90_percent_with_one_run_directory(mnist_dir, tmp_path):
    args = ["-m", "mnist_nn", "train", "--recipe", "cnn-fast", "--epochs", "1", "--data-dir", str(mnist_dir), "--quiet"]
    output = _finish(_torchrun(args, tmp_path / "log", tmp_path), tmp_path / "log", timeout=400)
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    summary = json.loads((runs[0] / "summary.json").read_text())
    print(f"1 epoch of cnn-fast on 2 processes: test accuracy {summary['test_accuracy']:.4f}, "
          f"training {summary['train_seconds']:.1f}s")  # fmt: skip
    assert summary["test_accuracy"] >= 0.90 and summary["processes"] == 2
    assert output.count("test accuracy") == 1  # rank 0 alone prints
    assert len(_metrics(runs[0])) == 1
