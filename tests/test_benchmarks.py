"""Smoke tests: every benchmark script runs end to end with its smallest settings, so none can rot.

They check the scripts' plumbing and result files, not speed (speed is measured by running them).
The host records, the GPU benchmark's refusal and bookkeeping, and the README rendering need no MNIST
files; every test that trains or reads them is marked realdata.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

BENCH = REPO / "benchmarks"
realdata = pytest.mark.realdata
HOST_KEYS = {"cpu_model", "cores", "amx", "avx512_bf16", "avx512f", "torch", "gpu"}


def run_bench(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, check=False, cwd=REPO, env=env
    )


def bench(script: str, *args: str) -> str:
    done = run_bench(script, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@realdata
def test_seeds_refuses_tta_without_an_ensemble(tmp_path):
    done = run_bench("seeds.py", "--recipe", "cnn-fast", "--tta", "--results", str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip().endswith("--tta scores the ensemble: add --ensemble")
    assert list(tmp_path.iterdir()) == []


@realdata
def test_tutorial_benchmark(mnist_dir, tmp_path):
    out = bench(
        "tutorial.py", "--epochs", "1", "--repeats", "1", "--data-dir", str(mnist_dir), "--results", str(tmp_path)
    )
    data = json.loads((tmp_path / "tutorial.json").read_text())
    assert data["epochs"] == 1 and len(data["baseline_runs"]) == len(data["ours_runs"]) == 1
    # The tutorial's script leaves its seed unset: after one epoch it once scored 88.3% here.
    assert data["ours"]["test_accuracy"]["median"] > 0.9 and data["baseline"]["test_accuracy"]["median"] > 0.8
    assert data["ratio_train_seconds"] > 0 and "ratio" in out
    first = out.splitlines()[0]
    assert set(data["host"]) == HOST_KEYS and first.startswith("host: ") and f"{data['host']['cores']} cores" in first
    assert data["devices"]["ours"] == [data["ours_runs"][0]["device"]]


@realdata
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
    assert set(data["host"]) == HOST_KEYS and data["devices"]["ours"] == [data["ours_runs"][0]["device"]]


@realdata
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
    check = run_bench("render_results.py", "--results", str(tmp_path), "--readme", str(readme), "--check")
    assert check.returncode == 0, check.stdout


def test_watch_poll_benchmark(tmp_path):
    bench("watch_poll.py", "--megabytes", "1", "--polls", "2", "--results", str(tmp_path))
    data = json.loads((tmp_path / "watch-poll.json").read_text())
    assert data["megabytes_each"] == 1 and data["first_answer_bytes"] > 0
    assert 0 < data["later_poll_median_s"] <= data["later_poll_max_s"]


@realdata
def test_inference_benchmark(tmp_path):
    bench("inference.py", "--models", "tutorial-mlp", "lenet5", "--quick", "--results", str(tmp_path))
    data = json.loads((tmp_path / "inference.json").read_text())
    paths = {(r["model"], r["batch"], r["path"]) for r in data["rows"]}
    assert ("lenet5", 1000, "inference_mode + channels_last") in paths
    assert ("tutorial-mlp", 1, "onnxruntime (exported)") in paths
    assert all(r["images_per_second"] > 0 for r in data["rows"])


@realdata
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


@realdata
def test_predict_realphoto_benchmark(mnist_dir, trained_checkpoint, tmp_path):
    bench(
        "predict_realphoto.py",
        str(trained_checkpoint),
        "--data-dir",
        str(mnist_dir),
        "--photos",
        "50",
        "--sets",
        "2",
        "--numbers",
        "20",
        "--batch",
        "100",
        "--name",
        "predict-realphoto-mine",
        "--results",
        str(tmp_path),
    )
    data = json.loads((tmp_path / "predict-realphoto-mine.json").read_text())
    assert data["photo_images"] == 50 and data["multi_numbers"] == 20
    first, second = data["photo_sets"]
    assert first["accuracy"] == data["photo_accuracy"] and first["images"] == second["images"] == 50
    assert data["photo_sets_accuracy"] == (first["right"] + second["right"]) / 100
    # Each miss says how the model reads its MNIST digit; those it also misreads there are counted.
    assert len(data["photo_wrong"]) == 50 - first["right"]
    hard = [w for w in data["photo_wrong"] if w["mnist_form_read"] != w["label"]]
    assert first["wrong_in_mnist_form"] == len(hard)
    # The README's photo-like table: a column named after the result file, a row per look, the totals.
    readme = tmp_path / "README.md"
    readme.write_text("<!-- photo-results:start -->\n<!-- photo-results:end -->\n")
    bench("render_results.py", "--results", str(tmp_path), "--readme", str(readme))
    table = readme.read_text()
    assert "| look | `mine` |" in table and f"| **all 50** | **{100 * data['photo_accuracy']:.2f}%** |" in table
    wrong = 100 - first["right"] - second["right"]
    assert f"| {100 * data['photo_sets_accuracy']:.2f}% ({wrong} / " in table
    assert data["onnx_max_abs_diff"] < 1e-4 and data["onnxruntime_images_per_s"] > 0


def test_predict_realphoto_refuses_no_sets(tmp_path):
    done = run_bench("predict_realphoto.py", "model.pt", "--sets", "0", "--results", str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip() == "error: --sets must be at least 1, got 0"
    assert list(tmp_path.iterdir()) == []


def test_other_writers_benchmark_reads_scikit_learns_digits(tmp_path):
    out = bench("other_writers.py", "robust", "--limit", "150", "--results", str(tmp_path))
    (row,) = json.loads((tmp_path / "other-writers.json").read_text())["models"]
    assert row["model"] == "robust" and row["network"] == "cnn-best"
    for size in ("8x8", "32x32"):
        figures = row[size]
        assert figures["images"] == 150 and 0 < sum(figures["most_misread"].values()) <= figures["misread"]
        assert figures["accuracy"] == 1 - figures["misread"] / 150 and figures["accuracy"] > 0.9
        assert f"robust (cnn-best), {size}: {100 * figures['accuracy']:.2f}% of 150" in out


def test_other_writers_refuses_a_missing_model_and_no_digits(tmp_path):
    done = run_bench("other_writers.py", "nope", "--results", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("error: nope: no such file, and not a bundled model")
    done = run_bench("other_writers.py", "robust", "--limit", "0", "--results", str(tmp_path))
    assert done.returncode == 2 and done.stderr.strip() == "error: --limit must be at least 1, got 0"
    assert list(tmp_path.iterdir()) == []


@realdata
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


# --- The host of every result, the GPU benchmark, the README's host and GPU tables (no MNIST files needed).

INTEL_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
# An EPYC (Zen 4): AVX-512 with BF16, no AMX; avx512fp16-like names must not pass for avx512f.
AMD_NO_AMX = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512vl
"""


@pytest.fixture
def benchmarks(monkeypatch):
    """The benchmark scripts as modules (they import each other as top-level names, as when run as scripts)."""
    import importlib
    import types

    monkeypatch.syspath_prepend(str(BENCH))
    return types.SimpleNamespace(
        **{name: importlib.import_module(name) for name in ("common", "gpu", "render_results")}
    )


def test_cpuinfo_flags_are_read_from_the_text(benchmarks):
    intel = benchmarks.common.parse_cpuinfo(INTEL_AMX)
    assert intel == {"cpu_model": "Intel(R) Xeon(R) Platinum 8480+", "amx": True, "avx512_bf16": True, "avx512f": True}
    amd = benchmarks.common.parse_cpuinfo(AMD_NO_AMX)
    assert amd == {"cpu_model": "AMD EPYC 9654 96-Core Processor", "amx": False, "avx512_bf16": True, "avx512f": True}
    older = benchmarks.common.parse_cpuinfo("model name : Some CPU\nflags : sse2 avx2 avx512fp16 amx_bf16\n")
    assert older == {"cpu_model": "Some CPU", "amx": False, "avx512_bf16": False, "avx512f": False}


def test_host_info_has_its_keys_with_their_types(benchmarks):
    import torch

    host = benchmarks.common.host_info("cpu", cpuinfo=AMD_NO_AMX)
    assert set(host) == HOST_KEYS
    assert host["cpu_model"] == "AMD EPYC 9654 96-Core Processor" and host["amx"] is False
    assert host["avx512_bf16"] is True and host["avx512f"] is True
    assert host["cores"] == len(os.sched_getaffinity(0)) and isinstance(host["cores"], int)
    assert host["torch"] == torch.__version__ and host["gpu"] is None
    # No /proc/cpuinfo (macOS): the model from platform, no flag claimed.
    bare = benchmarks.common.host_info("cpu", cpuinfo="")
    assert isinstance(bare["cpu_model"], str) and bare["cpu_model"]
    assert (bare["amx"], bare["avx512_bf16"], bare["avx512f"]) == (False, False, False)
    # This machine's own: whatever it has, the types are these.
    real = benchmarks.common.host_info()
    assert set(real) == HOST_KEYS and all(isinstance(real[k], bool) for k in ("amx", "avx512_bf16", "avx512f"))
    assert benchmarks.common.host_label(host) == "AMD EPYC 9654 (no AMX)"
    assert (
        benchmarks.common.host_label(benchmarks.common.host_info("cpu", INTEL_AMX)) == "Intel Xeon Platinum 8480+ (AMX)"
    )
    assert benchmarks.common.host_label(None, chinese=True) == "Intel Xeon（支持 AMX）"


def test_every_result_file_records_its_host(benchmarks, tmp_path):
    path = benchmarks.common.write_result("example", {"value": 1}, tmp_path)
    data = json.loads(path.read_text())
    assert data["benchmark"] == "example" and data["value"] == 1
    assert set(data["host"]) == HOST_KEYS and data["host"] == {
        **benchmarks.common.host_info(),
        "cores": data["host"]["cores"],
    }


def test_gpu_benchmark_refuses_without_a_gpu(tmp_path):
    # An empty CUDA_VISIBLE_DEVICES hides any GPU, so this holds on a GPU machine too.
    done = run_bench("gpu.py", "--results", str(tmp_path), env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("gpu: no CUDA GPU here"), done.stderr
    assert list(tmp_path.iterdir()) == []


class Summary:
    def __init__(self, seed: int, accuracy: float) -> None:
        self.summary = {
            "model": "cnn-fast",
            "parameters": 50794,
            "epochs": 2,
            "precision": "bf16",
            "train_seconds": 3.0 + seed,
            "test_accuracy": accuracy,
        }


def test_gpu_speedrun_statistics_and_its_budget(benchmarks, monkeypatch, tmp_path):
    import mnist_nn

    calls = []
    accuracies = [0.9912, 0.9885, 0.9930, 0.9901]

    def fake_train(recipe, **options):
        calls.append((recipe, options["seed"], options["device"]))
        options["out"].mkdir()
        (options["out"] / "config.json").write_text(json.dumps({"cuda_graph": True, "recipe": {}}))
        return Summary(options["seed"], accuracies[options["seed"]])

    class Budget(benchmarks.gpu.Budget):
        """Room for four runs, then none."""

        def fits(self, seconds: float) -> bool:
            return len(calls) < 4

    monkeypatch.setattr(mnist_nn, "train", fake_train, raising=False)
    args = argparse.Namespace(data_dir=None)
    data = benchmarks.gpu.train_part("speedrun", "cnn-speedrun", 10, args, Budget(480), tmp_path)
    assert calls == [("cnn-speedrun", seed, "cuda") for seed in range(4)]
    assert data["seeds"] == 4 and data["planned_seeds"] == 10 and data["cut_by_budget"] is True
    assert data["reached_99"] == 3 and data["seconds_to_99"]["min"] == 3.0 and data["seconds_to_99"]["max"] == 6.0
    assert data["seconds_to_99"]["mean"] == pytest.approx((3.0 + 5.0 + 6.0) / 3)
    assert data["test_accuracy"]["min"] == 0.9885 and data["test_accuracy"]["max"] == 0.9930
    assert [r["seconds_to_99"] for r in data["runs"]] == [3.0, None, 5.0, 6.0]
    assert all(r["cuda_graph"] is True for r in data["runs"])
    # No room for even one run: nothing to write.
    assert benchmarks.gpu.train_part("cnn-best", "cnn-best", 1, args, Budget(480), tmp_path) is None


def test_gpu_inference_part_times_every_path(benchmarks, monkeypatch):
    # On the CPU, with two models and small batches: the bookkeeping, not the GPU's speed.
    monkeypatch.setattr(benchmarks.gpu, "INFERENCE_BATCHES", (1, 4))
    models = ["lenet5", "tutorial-mlp"]
    args = argparse.Namespace(models=models, inference_seconds=0.0)
    data = benchmarks.gpu.inference_part(args, benchmarks.gpu.Budget(600), device="cpu")
    paths = {(r["model"], r["batch"], r["path"]) for r in data["rows"]}
    assert ("lenet5", 4, "bf16 autocast + channels_last") in paths and ("tutorial-mlp", 1, "bf16 autocast") in paths
    assert len(paths) == 2 * 3 + 2 * 2 and all(r["images_per_second"] > 0 for r in data["rows"])
    assert {(f["model"], f["batch"]) for f in data["fastest"]} == {(m, b) for m in models for b in (1, 4)}


README_BLOCKS = (
    "intro\n<!-- speed-results:start -->\nold\n<!-- speed-results:end -->\n"
    "<!-- gpu-results:start -->\nold\n<!-- gpu-results:end -->\nend\n"
)


def test_render_names_each_figures_host_and_says_the_gpu_is_not_measured(benchmarks, tmp_path):
    # tutorial.json as measured before hosts were recorded; time-to-99.json from an EPYC without AMX.
    old = json.loads((BENCH / "results" / "tutorial.json").read_text())
    old.pop("host", None)
    (tmp_path / "tutorial.json").write_text(json.dumps(old))
    amd = benchmarks.common.host_info("cpu", AMD_NO_AMX)
    new = {
        **json.loads((BENCH / "results" / "time-to-99.json").read_text()),
        "host": {**amd, "cores": 16},
        "devices": {"baseline": "cpu", "ours": ["cpu"]},
    }
    (tmp_path / "time-to-99.json").write_text(json.dumps(new))
    english = benchmarks.render_results.render(README_BLOCKS, tmp_path, chinese=False)
    rows = [line for line in english.splitlines() if line.startswith("| ")]
    assert rows[2].endswith("| Intel Xeon (AMX), 2 CPU cores |") and rows[3].endswith(
        "| AMD EPYC 9654 (no AMX), 16 CPU cores |"
    )
    assert "old" not in english and "Not measured yet: `python benchmarks/gpu.py` has not been run on a GPU" in english
    chinese = benchmarks.render_results.render(README_BLOCKS, tmp_path, chinese=True)
    assert (
        "| Intel Xeon（支持 AMX），2 个 CPU 核心 |" in chinese
        and "| AMD EPYC 9654（无 AMX），16 个 CPU 核心 |" in chinese
    )
    assert "尚未测量：" in chinese
    # On a GPU machine the two sides may train on different devices; the cell says which.
    on_gpu = {**new, "devices": {"baseline": "cuda", "ours": ["cpu"]}}
    assert benchmarks.render_results._devices(on_gpu, chinese=False) == "; baseline on cuda, mnist-nn on cpu"


def test_render_gpu_results(benchmarks, tmp_path):
    host = {**benchmarks.common.host_info("cpu", AMD_NO_AMX), "cores": 16, "gpu": "NVIDIA H200"}
    speedrun = {
        "part": "speedrun",
        "recipe": "cnn-speedrun",
        "epochs": 3,
        "seeds": 7,
        "planned_seeds": 10,
        "cut_by_budget": True,
        "train_seconds": {"mean": 2.5, "min": 2.4, "max": 3.0},
        "seconds_to_99": {"mean": 2.6, "min": 2.4, "max": 3.0},
        "reached_99": 6,
        "test_accuracy": {"mean": 0.9912, "min": 0.9895, "max": 0.9931},
        "host": host,
    }
    tutorial = {
        **speedrun,
        "part": "tutorial",
        "recipe": "tutorial",
        "epochs": 25,
        "seeds": 1,
        "planned_seeds": 1,
        "cut_by_budget": False,
        "train_seconds": {"mean": 9.0, "min": 9.0, "max": 9.0},
        "seconds_to_99": None,
        "reached_99": 0,
        "test_accuracy": {"mean": 0.9765, "min": 0.9765, "max": 0.9765},
    }
    fastest = [
        {"model": "cnn-fast", "batch": 1, "path": "fp32", "images_per_second": 4321.0},
        {"model": "cnn-fast", "batch": 1000, "path": "bf16 autocast", "images_per_second": 1234567.0},
    ]
    inference = {"part": "inference", "batches": [1, 1000], "fastest": fastest, "host": host}
    for name, data in (("speedrun", speedrun), ("tutorial", tutorial), ("inference", inference)):
        (tmp_path / f"gpu-{name}.json").write_text(json.dumps(data))
    text = benchmarks.render_results.render(README_BLOCKS, tmp_path, chinese=False)
    assert (
        "Not measured yet" not in text
        and "Measured on NVIDIA H200 (host: AMD EPYC 9654 (no AMX), 16 CPU cores)" in text
    )
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows[0] == "| `tutorial` | 25 | 1 | 9.00 s | not reached | 97.65% |"
    assert rows[1] == (
        "| `cnn-speedrun` | 3 | 7 of 10 (budget) | 2.50 s (2.40 s–3.00 s) | 2.60 s (2.40 s–3.00 s); 6 of 7 reached it "
        "| 99.12% (98.95%–99.31%) |"
    )
    assert rows[2] == "| `cnn-fast` | 4,321/s (fp32) | 1,234,567/s (bf16 autocast) |"
    chinese = benchmarks.render_results.render(README_BLOCKS, tmp_path, chinese=True)
    assert "测量环境：NVIDIA H200（主机 AMD EPYC 9654（无 AMX），16 个 CPU 核心）" in chinese and "未达到" in chinese
