"""`mnist-nn sweep`: Optuna trials as run directories, pruning, the SQLite default and a real PostgreSQL.

The trials train the tutorial's network on the toy dataset (600 bar images, conftest.toy_spec) for one epoch,
so a trial takes about a second. The workers of the distributed tests are fresh interpreters: a launcher
script registers the toy dataset in each, then calls ``mnist_nn.cli.main``. PostgreSQL is Debian's
(``.ci/run`` installs it), started by the ``postgres_url`` fixture in a temporary folder as an unprivileged
user on a free port of 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error, free_port, run_main, toy_spec

optuna = pytest.importorskip("optuna")
from optuna.trial import TrialState  # noqa: E402

from mnist_nn.lab.sweep.study import RetryStaleTrial  # noqa: E402
from mnist_nn.training.recipe_files import load_recipe_file  # noqa: E402

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

LAUNCHER = f"""
import sys
from mnist_nn.data.datasets import DatasetSpec, register_dataset
register_dataset(DatasetSpec(**{toy_spec("toy")!r}))
from mnist_nn.cli import main
sys.exit(main(sys.argv[1:]))
"""

# The tutorial's network on the toy bars: small batches, a small validation split, a quick evaluation.
BASE = """base = "tutorial"
dataset = "toy"
batch_size = 16
val_size = 100
eval_batch_size = 200
log_every = 10
"""

SPACE = """[lr]
low = 1e-3
high = 1e-1
log = true
[optimizer]
choices = ["sgd", "adam"]
"""


@pytest.fixture
def sweep_files(tmp_path: Path, toy_dataset: Path) -> dict[str, Path]:
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "space.toml").write_text(SPACE)
    launcher = tmp_path / "launch_toy.py"
    launcher.write_text(LAUNCHER)
    return {"base": tmp_path / "base.toml", "space": tmp_path / "space.toml", "data": toy_dataset, "launcher": launcher}


def sweep_args(files: dict[str, Path], out: Path, *extra: str, trials: int = 4) -> list[str]:
    return [
        "sweep", "--recipe", str(files["base"]), "--space", str(files["space"]), "--data-dir", str(files["data"]),
        "--out", str(out), "--trials", str(trials), "--epochs", "1", "--device", "cpu", "--seed", "0", *extra,
    ]  # fmt: skip


def states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


# --------------------------------------------------------------------------- the SQLite default


def test_sqlite_default_runs_reads_back_and_continues(sweep_files, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, stdout, err = run_main(capsys, *sweep_args(sweep_files, out, trials=4))
    assert code == 0, err
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}")
    assert sum(s in FINISHED for s in states(study)) == 4
    # One progress line per trial, each with its values and its outcome.
    lines = [line for line in stdout.splitlines() if line.startswith("trial ") and "lr=" in line]
    assert len(lines) == 4 and all("val " in line or "pruned at epoch" in line for line in lines)
    # Each trial is an ordinary run directory: config, metrics per epoch, model; selected on validation.
    runs = sorted(out.glob("trial-*"))
    assert len(runs) == 4
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    for trial in complete:
        run = Path(trial.user_attrs["run_dir"])
        assert (run / "model.pt").exists() and (run / "metrics.jsonl").read_text().count('"eval_split": "val"') == 1
    best = load_recipe_file(out / "best.toml")
    winner = max(complete, key=lambda t: t.value)
    assert best.lr == pytest.approx(winner.params["lr"]) and best.optimizer == winner.params["optimizer"]
    assert best.val_size == 100 and best.epochs == 1 and best.dataset == "toy"
    assert (out / "sweep-history.png").stat().st_size > 1000
    # The same command with a larger cap continues the study.
    code, _, err = run_main(capsys, *sweep_args(sweep_files, out, trials=8))
    assert code == 0, err
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}")
    assert sum(s in FINISHED for s in states(study)) == 8
    assert len(list(out.glob("trial-*"))) == 8


def test_a_diverging_trial_is_pruned_and_the_sweep_goes_on(sweep_files, tmp_path, capsys):
    (tmp_path / "space.toml").write_text('[lr]\nchoices = [10.0]\n[optimizer]\nchoices = ["sgd"]\n')
    out = tmp_path / "sweep"
    code, stdout, err = run_main(capsys, *sweep_args(sweep_files, out, "--pruner", "none", trials=2))
    assert code == 0, err
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{out / 'study.db'}")
    assert states(study) == [TrialState.PRUNED, TrialState.PRUNED]
    assert all(t.user_attrs.get("diverged") for t in study.trials)
    assert stdout.count("pruned at epoch 1 (diverged") == 2
    assert "no trial completed" in stdout and not (out / "best.toml").exists()


def test_best_toml_trains_again(sweep_files, tmp_path, capsys):
    out = tmp_path / "sweep"
    code, _, err = run_main(capsys, *sweep_args(sweep_files, out, trials=2))
    assert code == 0, err
    code, stdout, err = run_main(
        capsys, "train", "--recipe", out / "best.toml", "--data-dir", sweep_files["data"], "--out", tmp_path / "again"
    )
    assert code == 0, err
    assert "test accuracy" in stdout and (tmp_path / "again" / "model.pt").exists()


# --------------------------------------------------------------------------- bad input: one line, nothing left


@pytest.mark.parametrize(
    ("space", "fragment"),
    [
        ("[learning_rate]\nlow = 0.1\nhigh = 1.0\n", "'learning_rate' is not a recipe field"),
        ("[lr]\nlow = 0.1\nhigh = 0.01\n", "[lr]: empty range: low 0.1 > high 0.01"),
        ('[batch_size]\nchoices = [32, "big"]\n', "'big' is not a valid batch_size"),
        ('[optimizer]\nchoices = ["adam", "lion"]\n', "unknown optimizer 'lion'"),
        ("[lr]\nlow = 0.0\nhigh = 0.1\nlog = true\n", "a log range needs low > 0"),
        ("[lr]\nlow = 0.01\nhigh = 0.1\nlogg = true\n", "unknown key 'logg'"),
    ],
)
def test_a_bad_space_file_is_one_line_before_any_trial(sweep_files, tmp_path, capsys, space, fragment):
    (tmp_path / "space.toml").write_text(space)
    out = tmp_path / "sweep"
    code, _, err = run_main(capsys, *sweep_args(sweep_files, out))
    assert_one_line_error(code, err, fragment)
    assert not out.exists()


def test_a_storage_that_does_not_answer_is_one_line(sweep_files, tmp_path, capsys):
    out = tmp_path / "sweep"
    url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/none"
    code, _, err = run_main(capsys, *sweep_args(sweep_files, out, "--storage", url))
    assert_one_line_error(code, err, "does not answer")
    assert "secret" not in err and not out.exists()


def test_a_best_toml_with_an_unknown_key_is_one_line(tmp_path, capsys):
    (tmp_path / "best.toml").write_text('base = "tutorial"\nlr = 0.01\nlearning_rate = 0.1\n')
    code, _, err = run_main(capsys, "train", "--recipe", tmp_path / "best.toml", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "unknown key 'learning_rate'")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- a real PostgreSQL, several workers


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of its own: initdb and pg_ctl in a temporary folder, as user postgres when run as root."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        message = "PostgreSQL not found (Debian: apt-get install postgresql)"
        if os.environ.get("MNIST_NN_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    folder = Path(tempfile.mkdtemp(prefix="mnist-nn-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(folder, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    run = lambda *args: subprocess.run([*as_user, *map(str, args)], check=True, capture_output=True)  # noqa: E731
    run(bin_dir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", folder / "log", "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _worker(files: dict[str, Path], out: Path, url: str, log: Path, study: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(files["launcher"]), *sweep_args(files, out, "--storage", url, "--study", study)]
    command = [*command, "--heartbeat", "1", *extra]
    with open(log, "w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _finished(url: str, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=url.replace("postgresql://", "postgresql+psycopg://"))


def test_two_workers_share_one_postgresql_study_and_stop_at_the_cap(sweep_files, postgres_url, tmp_path):
    args = ("--trials", "6")
    workers = [
        _worker(sweep_files, tmp_path / f"w{i}", postgres_url, tmp_path / f"w{i}.log", "two", *args) for i in (0, 1)
    ]
    for index, worker in enumerate(workers):
        assert worker.wait(300) == 0, (tmp_path / f"w{index}.log").read_text()[-3000:]
    study = _finished(postgres_url, "two")
    assert sum(s in FINISHED for s in states(study)) == 6
    # Both workers took trials: the study was shared, not run twice.
    assert all(list((tmp_path / f"w{i}").glob("trial-*")) for i in (0, 1))


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # retried_trial_number
def test_a_killed_worker_trial_fails_is_retried_and_the_study_reaches_its_cap(sweep_files, postgres_url, tmp_path):
    # Longer trials, so that the kill lands inside one: 20 epochs.
    victim = _worker(sweep_files, tmp_path / "victim", postgres_url, tmp_path / "victim.log", "kill", "--epochs", "20")
    try:
        running = _wait_for_running_trial(postgres_url, "kill", victim)
        os.killpg(victim.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(30)
    args = ("--trials", "6")
    survivor = _worker(sweep_files, tmp_path / "survivor", postgres_url, tmp_path / "survivor.log", "kill", *args)
    assert survivor.wait(300) == 0, (tmp_path / "survivor.log").read_text()[-3000:]
    study = _finished(postgres_url, "kill")
    trials = study.get_trials(deepcopy=False)
    assert trials[running].state == TrialState.FAIL
    retries = [t for t in trials if RetryStaleTrial.retried_trial_number(t) == running]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == trials[running].params
    assert sum(t.state in FINISHED for t in trials) == 6


def _wait_for_running_trial(url: str, study_name: str, process: subprocess.Popen, limit: float = 120) -> int:
    """The number of a trial the process is training (its run directory has begun), once there is one."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert process.poll() is None, "the worker ended before its trial could be killed"
        with contextlib.suppress(KeyError, ValueError, optuna.exceptions.StorageInternalError):
            study = _finished(url, study_name)
            for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                run_dir = Path(trial.user_attrs.get("run_dir", "/nonexistent"))
                if (run_dir / "metrics.jsonl").exists():
                    return trial.number
        time.sleep(0.2)
    raise AssertionError("no trial started in time")
