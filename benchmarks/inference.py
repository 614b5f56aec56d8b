"""Inference speed on the CPU for every registered model: images per second at batch 1 (latency)
and batch 1000 (throughput), plain eager PyTorch vs the faster paths.

    python benchmarks/inference.py                 # all models, eager / inference_mode / channels_last / ONNX Runtime
    python benchmarks/inference.py --compile       # also torch.compile (slow to warm up: tens of seconds per model)
    python benchmarks/inference.py --models tutorial-mlp --quick
    python benchmarks/inference.py --parity --skip-speed       # export parity of every recipe's trained model
    python benchmarks/inference.py --parity --skip-speed --checkpoints runs/*/model.pt

Weights are freshly initialized (speed does not depend on their values). The ONNX Runtime path
runs the exported graph (`mnist-nn export`: normalization and softmax inside, uint8 pixels in).
Writes benchmarks/results/inference.json.

Parity does depend on the weights: a trained model's logits reach hundreds, and the export's
check must scale with them. `--parity` exports every recipe's trained model (the checkpoints
given, else each recipe trained for `--parity-epochs` epochs into a temporary folder) as ONNX
and TorchScript with float32 and uint8 input, through `export_checkpoint` and its check, and
writes the differences to benchmarks/results/export-parity.json; it exits 1 if any export is refused.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import default_data_dir, describe, train_cli, write_result

from mnist_nn.core.device import configure_cpu
from mnist_nn.models.networks import MODELS, build_model, count_parameters


def images_per_second(call: Callable[[], object], batch: int, seconds: float) -> dict[str, float]:
    """Run ``call`` repeatedly for about ``seconds`` after a warm-up; median rate and per-call latency."""
    for _ in range(3):
        call()
    timings = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(timings) < 5:
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    median = statistics.median(timings)
    return {"images_per_second": batch / median, "latency_ms": 1000 * median, "calls": len(timings)}


def torch_paths(model: torch.nn.Module, conv: bool, compile_too: bool) -> dict[str, Callable]:
    def eager(x):
        with torch.no_grad():
            return model(x)

    def inference(x):
        with torch.inference_mode():
            return model(x)

    paths = {"eager (no_grad)": eager, "inference_mode": inference}
    if conv:
        fast = build_model_like(model).to(memory_format=torch.channels_last)

        def channels_last(x):
            with torch.inference_mode():
                return fast(x.contiguous(memory_format=torch.channels_last))

        paths["inference_mode + channels_last"] = channels_last
    if compile_too:
        compiled = torch.compile(model, dynamic=False)

        def compiled_call(x):
            with torch.inference_mode():
                return compiled(x)

        paths["torch.compile"] = compiled_call
    return paths


def build_model_like(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def onnx_path(model: torch.nn.Module, threads: int) -> Callable | None:
    try:
        import onnxruntime  # noqa: F401

        from mnist_nn.inference.export import ExportModule, _onnx_bytes, onnx_session
        from mnist_nn.inference.predictor import PixelModel
    except ImportError:
        return None
    module = ExportModule(PixelModel(build_model_like(model), 0.1307, 0.3081)).eval()
    session = onnx_session(_onnx_bytes(module, torch.zeros(2, 28, 28, dtype=torch.uint8), {}), threads=threads)
    return lambda pixels: session.run(["probabilities"], {"pixels": pixels})


def export_parity(checkpoints: dict[str, Path]) -> list[dict]:
    """Export each checkpoint in every format and input type, through the exporter's own check; one row each."""
    from mnist_nn.core.errors import UserError
    from mnist_nn.inference.export import FORMATS, INPUT_DTYPES, SUFFIXES, export_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, checkpoint in checkpoints.items():
            for fmt in FORMATS:
                for dtype in INPUT_DTYPES:
                    out = Path(folder) / f"{label}-{dtype}{SUFFIXES[fmt]}"
                    row = {"checkpoint": label, "format": fmt, "input_dtype": dtype}
                    try:
                        report = export_checkpoint(checkpoint, fmt=fmt, out=out, input_dtype=dtype)
                        row.update({key: report[key] for key in report if key.startswith("max_")}, exported=True)
                    except UserError as exc:
                        row.update(exported=False, error=str(exc))
                    rows.append(row)
                    print(
                        f"{label:<28} {fmt:<11} {dtype:<7} "
                        + (
                            f"logits up to {row['max_abs_logit']:7.1f}  abs diff {row['max_abs_diff']:.1e}  "
                            f"relative {row['max_rel_diff']:.1e}  ok"
                            if row["exported"]
                            else f"REFUSED: {row['error']}"
                        ),
                        flush=True,
                    )
    return rows


def trained_checkpoints(args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    """The checkpoints to check: those given, else every recipe trained briefly (the CLI, as a user runs it)."""
    if args.checkpoints:
        return {str(path): Path(path) for path in args.checkpoints}
    from mnist_nn.training.recipes import RECIPES

    found = {}
    for recipe in RECIPES:
        out = folder / recipe
        summary, wall = train_cli(recipe, out, args.data_dir, "--epochs", str(args.parity_epochs))
        print(f"trained {recipe}: {args.parity_epochs} epoch(s), {summary['test_accuracy']:.2%}, {wall:.0f} s")
        found[f"{recipe} ({args.parity_epochs} epoch(s))"] = out / "model.pt"
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=sorted(MODELS))
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per path and batch size")
    parser.add_argument("--quick", action="store_true", help="0.2 s per measurement (smoke runs)")
    parser.add_argument("--name", default="inference")
    parser.add_argument("--results", default=None)
    parser.add_argument("--parity", action="store_true", help="also check the export of every recipe's trained model")
    parser.add_argument("--checkpoints", nargs="+", metavar="MODEL_PT", help="for --parity: these, not fresh ones")
    parser.add_argument("--parity-epochs", type=int, default=1, help="for --parity: epochs to train each recipe")
    parser.add_argument("--data-dir", default=default_data_dir(), help="for --parity: the MNIST files")
    parser.add_argument("--skip-speed", action="store_true", help="no speed measurements (with --parity)")
    args = parser.parse_args(argv)
    threads = configure_cpu()
    refused = 0
    if args.parity:
        with tempfile.TemporaryDirectory() as folder:
            rows = export_parity(trained_checkpoints(args, Path(folder)))
        refused = sum(not row["exported"] for row in rows)
        results = [Path(args.results)] if args.results else []
        print(f"-> {write_result('export-parity', {'rows': rows, 'refused': refused}, *results)}")
    if not args.skip_speed:
        measure_speed(args, threads)
    return 1 if refused else 0


def measure_speed(args: argparse.Namespace, threads: int) -> None:
    seconds = 0.2 if args.quick else args.seconds
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(name).eval()
        conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        paths = torch_paths(model, conv, args.compile)
        runner = onnx_path(model, threads)
        for batch in (1, 1000):
            x = torch.rand(batch, 1, 28, 28)
            pixels = (torch.rand(batch, 28, 28) * 255).to(torch.uint8).numpy()
            results = {label: images_per_second(lambda f=f, x=x: f(x), batch, seconds) for label, f in paths.items()}
            if runner is not None:
                results["onnxruntime (exported)"] = images_per_second(lambda r=runner, p=pixels: r(p), batch, seconds)
            for label, measured in results.items():
                rows.append(
                    {"model": name, "parameters": count_parameters(model), "batch": batch, "path": label, **measured}
                )
                print(
                    f"{name:<14} batch {batch:>4}  {label:<32} {measured['images_per_second']:>12,.0f} images/s  "
                    f"{measured['latency_ms']:8.3f} ms/call",
                    flush=True,
                )
    best = {}
    for row in rows:
        key = (row["model"], row["batch"])
        if key not in best or row["images_per_second"] > best[key]["images_per_second"]:
            best[key] = row
    data = {
        "threads": threads,
        "seconds_per_measurement": seconds,
        "rows": rows,
        "fastest": [
            {"model": m, "batch": b, "path": r["path"], "images_per_second": r["images_per_second"]}
            for (m, b), r in sorted(best.items())
        ],
        "eager_batch1000": describe(
            [r["images_per_second"] for r in rows if r["batch"] == 1000 and r["path"].startswith("eager")]
        ),
    }
    path = write_result(args.name, data, *([Path(args.results)] if args.results else []))
    print(f"-> {path}")


if __name__ == "__main__":
    sys.exit(main())
