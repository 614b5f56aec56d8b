"""Smoke tests: every benchmark script runs end to end with its smallest settings, so none can rot.

They check the scripts' plumbing and result files, not speed (speed is measured by running them).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.realdata
BENCH = REPO / "benchmarks"


def bench(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, check=False, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_seeds_refuses_tta_without_an_ensemble(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH / "seeds.py"), "--recipe", "cnn-fast", "--tta", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2 and done.stderr.strip().endswith("--tta scores the ensemble: add --ensemble")
    assert list(tmp_path.iterdir()) == []


def test_tutorial_benchmark(mnist_dir, tmp_path):
    out = bench(
        "tutorial.py", "--epochs", "1", "--repeats", "1", "--data-dir", str(mnist_dir), "--results", str(tmp_path)
    )
    data = json.loads((tmp_path / "tutorial.json").read_text())
    assert data["epochs"] == 1 and len(data["baseline_runs"]) == len(data["ours_runs"]) == 1
    assert data["ours"]["test_accuracy"]["median"] > 0.9 and data["baseline"]["test_accuracy"]["median"] > 0.9
    assert data["ratio_train_seconds"] > 0 and "ratio" in out


def test_time_to_99_benchmark_with_a_stand_in_example(mnist_dir, tmp_path):
    # The real example takes minutes per epoch here; a stand-in printing its line format checks the parsing.
    example = tmp_path / "example.py"
    example.write_text(
        "print('EPOCH 1 seconds=30.00 test_accuracy=0.9810')\n"
        "print('EPOCH 2 seconds=60.00 test_accuracy=0.9902')\n"
        "print('RESULT epochs=2 train_seconds=60.00 test_accuracy=0.9902 test_loss=0.03')\n"
    )
    bench(
        "time_to_99.py",
        "--repeats",
        "1",
        "--baseline",
        str(example),
        "--epochs",
        "1",
        "--data-dir",
        str(mnist_dir),
        "--results",
        str(tmp_path),
    )
    data = json.loads((tmp_path / "time-to-99.json").read_text())
    assert data["baseline"]["median"] == 60.0
    assert data["ours_runs"][0]["test_accuracy"] > 0.95


def test_seeds_and_render(mnist_dir, tmp_path):
    bench(
        "seeds.py",
        "--recipe",
        "cnn-fast",
        "--epochs",
        "1",
        "--seeds",
        "2",
        "--ensemble",
        "--tta",
        "--data-dir",
        str(mnist_dir),
        "--results",
        str(tmp_path),
        "--runs",
        str(tmp_path / "runs"),
    )
    data = json.loads((tmp_path / "recipe-cnn-fast-1ep.json").read_text())
    assert data["seeds"] == 2 and [r["seed"] for r in data["runs"]] == [0, 1]
    model = tmp_path / "runs" / "recipe-cnn-fast-1ep-seed0" / "model.pt"
    stamp = model.stat().st_mtime_ns
    again = bench(
        "seeds.py",
        "--recipe",
        "cnn-fast",
        "--epochs",
        "1",
        "--seeds",
        "1",
        "--reuse",
        "--data-dir",
        str(mnist_dir),
        "--results",
        str(tmp_path / "again"),
        "--runs",
        str(tmp_path / "runs"),
    )
    assert model.stat().st_mtime_ns == stamp and f"{100 * data['runs'][0]['test_accuracy']:.2f}%" in again
    assert data["test_accuracy"]["min"] > 0.95 and 0 < data["ensemble_accuracy"] <= 1
    assert 0 < data["ensemble_tta_accuracy"] <= 1
    # The README renderer leaves smoke results (named *-Nep) out; give it a full-named copy.
    (tmp_path / "recipe-cnn-fast.json").write_text(json.dumps({**data, "benchmark": "recipe-cnn-fast"}))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- recipe-results:start -->\nold\n<!-- recipe-results:end -->\nend\n")
    bench("render_results.py", "--results", str(tmp_path), "--readme", str(readme))
    text = readme.read_text()
    assert "old" not in text and "| `cnn-fast` | mnist | 50,794 | 2 |" in text
    assert f"{100 * data['test_accuracy']['mean']:.2f}%" in text
    assert f"(TTA {100 * data['ensemble_tta_accuracy']:.2f}%)" in text
    check = subprocess.run(
        [
            sys.executable,
            str(BENCH / "render_results.py"),
            "--results",
            str(tmp_path),
            "--readme",
            str(readme),
            "--check",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout


def test_inference_benchmark(tmp_path):
    bench("inference.py", "--models", "tutorial-mlp", "lenet5", "--quick", "--results", str(tmp_path))
    data = json.loads((tmp_path / "inference.json").read_text())
    paths = {(r["model"], r["batch"], r["path"]) for r in data["rows"]}
    assert ("lenet5", 1000, "inference_mode + channels_last") in paths
    assert ("tutorial-mlp", 1, "onnxruntime (exported)") in paths
    assert all(r["images_per_second"] > 0 for r in data["rows"])


def test_profile_benchmark(mnist_dir, tmp_path):
    out = bench(
        "profile_training.py",
        "--recipe",
        "cnn-fast",
        "--epochs",
        "1",
        "--rows",
        "5",
        "--data-dir",
        str(mnist_dir),
        "--results",
        str(tmp_path),
    )
    data = json.loads((tmp_path / "profile-cnn-fast.json").read_text())
    assert len(data["top"]) == 5 and all(0 < row["share"] <= 1 for row in data["top"])
    assert data["top"][0]["op"] in out


def test_predict_realphoto_benchmark(mnist_dir, trained_checkpoint, tmp_path):
    bench(
        "predict_realphoto.py",
        str(trained_checkpoint),
        "--data-dir",
        str(mnist_dir),
        "--photos",
        "50",
        "--numbers",
        "20",
        "--batch",
        "100",
        "--results",
        str(tmp_path),
    )
    data = json.loads((tmp_path / "predict-realphoto.json").read_text())
    assert data["photo_images"] == 50 and data["multi_numbers"] == 20
    assert data["onnx_max_abs_diff"] < 1e-4 and data["onnxruntime_images_per_s"] > 0


def test_robustness_benchmark_and_its_table(mnist_dir, random_checkpoint, tmp_path):
    grid = tmp_path / "grid.png"
    out = bench(
        "robustness.py",
        str(random_checkpoint),
        "--data-dir",
        str(mnist_dir),
        "--device",
        "cpu",
        "--grid",
        str(grid),
        "--results",
        str(tmp_path),
    )
    data = json.loads((tmp_path / "robustness-tutorial-mlp.json").read_text())  # no recipe recorded: the model
    assert data["test_size"] == 10000 and len(data["corruptions"]) == 15 and data["cached_read_seconds"] > 0
    assert set(data["build_seconds_per_corruption"]) == set(data["corruptions"]) and data["score_seconds"] > 0
    assert "built the 15 corrupted sets in" in out and grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- robustness-results:start -->\nold\n<!-- robustness-results:end -->\nend\n")
    bench("render_results.py", "--results", str(tmp_path), "--readme", str(readme))
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    assert rows[0] == "| corruption | `tutorial-mlp` |" and len(rows) == 2 + 15 + 2
    assert rows[-2] == f"| **mean** | **{100 * data['mean_accuracy']:.2f}%** |"
