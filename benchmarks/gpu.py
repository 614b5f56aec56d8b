"""Training and inference on one CUDA GPU, in one run that fits in 8 minutes of GPU time.

    python benchmarks/gpu.py --data-dir DIR                  # every part; 10 seeds of the speed run
    python benchmarks/gpu.py --data-dir DIR --only speedrun --seeds 3
    python benchmarks/gpu.py --data-dir DIR --budget-s 300

The parts, in the order they run:

  tutorial    the `tutorial` recipe, its 25 epochs, once
  cnn-fast    `cnn-fast`, 3 seeds
  speedrun    `cnn-speedrun`, --seeds seeds (default 10): mean and min–max of the training time to
              99% and of the test accuracy
  inference   images per second of every model at batch 1, 1000 and 10000: fp32, bf16 autocast,
              and bf16 with channels-last for the convolutional ones (as benchmarks/inference.py
              times the CPU, with a CUDA synchronize in every call)
  cnn-best    `cnn-best`, once: the longest part, last, so that a tight budget drops it first

Training runs in this process, `mnist_nn.train(..., device="cuda")`, as seeds.py does: a child
process per run (tutorial.py's way) would pay torch's import and CUDA's start-up again for each of
the 15 runs, a sizeable share of 8 minutes. A run's time to 99% is its training time (the summary's
`train_seconds`, evaluation excluded) when its test accuracy is >= 99.0%, as time_to_99.py counts
`cnn-fast`: these recipes are fixed schedules, so the whole run is what reaching 99% costs.

Budget: before every run the script checks that the seconds used so far plus the longest run of that
part so far (a guess for a part's first run) fit in --budget-s; when they do not, it says so, skips
the rest and keeps what it finished (a part cut short writes its finished runs, "cut_by_budget": true).

Each part writes benchmarks/results/gpu-<part>.json with the host (the GPU's name included);
render_results.py turns them into the READMEs' GPU section. Without a CUDA GPU the script refuses at
once with one line and exit code 2; a part that fails is reported and the others still run (exit 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import RESULTS, announce_host, default_data_dir, describe, write_result

TARGET = 0.99
# Part -> (recipe, runs); the speed run's runs come from --seeds.
TRAINING = {"tutorial": ("tutorial", 1), "cnn-fast": ("cnn-fast", 3), "speedrun": ("cnn-speedrun", None)}
TRAINING_LAST = {"cnn-best": ("cnn-best", 1)}
PARTS = [*TRAINING, "inference", *TRAINING_LAST]
# Seconds a part's first run is expected to take on an H200, for the budget check before any run of it
# has been timed: generous, since a skip costs a figure and an overrun costs them all.
FIRST_RUN_GUESS = {"tutorial": 60.0, "cnn-fast": 20.0, "speedrun": 20.0, "cnn-best": 120.0}
INFERENCE_BATCHES = (1, 1000, 10000)


class Budget:
    """Seconds since the start against --budget-s; ``fits(seconds)`` says whether that much more still fits."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()

    def used(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, seconds: float) -> bool:
        return self.used() + seconds <= self.seconds


def _config(run_dir: Path) -> dict[str, Any]:
    """A run's config.json ({} where there is none)."""
    try:
        return json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def train_part(
    part: str, recipe: str, runs: int, args: argparse.Namespace, budget: Budget, scratch: Path
) -> dict[str, Any] | None:
    """``runs`` seeds of ``recipe`` on CUDA; the part's result, or None when the budget left room for none."""
    import mnist_nn

    rows: list[dict[str, Any]] = []
    cut = False
    for seed in range(runs):
        # The part's longest run so far is the best guess of the next one.
        longest = max((r["wall_seconds"] for r in rows), default=FIRST_RUN_GUESS[part])
        if not budget.fits(longest):
            print(
                f"budget: {budget.used():.0f} of {budget.seconds:.0f} s used, a run of {part} takes about "
                f"{longest:.0f} s: stopping {part} after {seed} of {runs} run(s)",
                flush=True,
            )
            cut = True
            break
        start = time.perf_counter()
        out = scratch / f"{part}-seed{seed}"
        summary = mnist_nn.train(
            recipe,
            data_dir=args.data_dir,
            out=out,
            seed=seed,
            device="cuda",
            quiet=True,
            progress=False,
        ).summary
        wall = time.perf_counter() - start
        reached = summary["test_accuracy"] >= TARGET
        rows.append(
            {
                "seed": seed,
                "train_seconds": summary["train_seconds"],
                "wall_seconds": wall,
                "test_accuracy": summary["test_accuracy"],
                "seconds_to_99": summary["train_seconds"] if reached else None,
                # Whether the step ran as a CUDA graph, and why not: it decides a small model's speed on a GPU.
                **{key: value for key, value in _config(out).items() if key.startswith("cuda_graph")},
            }
        )
        print(
            f"{part} seed {seed}: {summary['train_seconds']:.1f} s of training ({wall:.1f} s in all), "
            f"test accuracy {100 * summary['test_accuracy']:.2f}%",
            flush=True,
        )
    if not rows:
        return None
    to_99 = [r["seconds_to_99"] for r in rows if r["seconds_to_99"] is not None]
    return {
        "part": part,
        "recipe": recipe,
        "model": summary["model"],
        "parameters": summary["parameters"],
        "epochs": summary["epochs"],
        "device": "cuda",
        "precision": summary.get("precision", "fp32"),
        "target": TARGET,
        "seeds": len(rows),
        "planned_seeds": runs,
        "cut_by_budget": cut,
        "train_seconds": describe([r["train_seconds"] for r in rows]),
        "test_accuracy": describe([r["test_accuracy"] for r in rows]),
        "seconds_to_99": describe(to_99) if to_99 else None,
        "reached_99": len(to_99),
        "runs": rows,
    }


def inference_part(args: argparse.Namespace, budget: Budget, device: str = "cuda") -> dict[str, Any] | None:
    """Images per second of every model at INFERENCE_BATCHES, for each path; None if the budget fitted no model.

    ``device`` is the GPU's; the tests pass "cpu" to check the bookkeeping where there is none.
    """
    import torch
    from inference import images_per_second

    from mnist_nn.models.networks import MODELS, build_model, count_parameters

    def timed(model: torch.nn.Module, bf16: bool, channels_last: bool) -> Callable[[torch.Tensor], None]:
        def call(x: torch.Tensor) -> None:
            with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
            # Kernels are queued, not run, when the call returns: without this the rate is the launch rate.
            if device == "cuda":
                torch.cuda.synchronize()

        return call

    if device == "cuda":
        # Fixed shapes: cuDNN's autotuner picks each convolution's fastest kernel once (the trainer does the same).
        torch.backends.cudnn.benchmark = True
    rows: list[dict[str, Any]] = []
    # Each (batch, path) pair costs its --inference-seconds plus a warm-up.
    per_model = len(INFERENCE_BATCHES) * 3 * (args.inference_seconds + 0.3)
    cut = False
    for name in args.models or sorted(MODELS):
        if not budget.fits(per_model):
            print(f"budget: {budget.used():.0f} of {budget.seconds:.0f} s used: inference stops before {name}")
            cut = True
            break
        torch.manual_seed(0)
        model = build_model(name).eval().to(device)
        conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        paths = {"fp32": timed(model, False, False), "bf16 autocast": timed(model, True, False)}
        if conv:
            fast = build_model(name).eval().to(device, memory_format=torch.channels_last)
            fast.load_state_dict(model.state_dict())
            paths["bf16 autocast + channels_last"] = timed(fast, True, True)
        for batch in INFERENCE_BATCHES:
            x = torch.rand(batch, 1, 28, 28, device=device)
            for label, call in paths.items():
                measured = images_per_second(lambda c=call, x=x: c(x), batch, args.inference_seconds)
                rows.append(
                    {"model": name, "parameters": count_parameters(model), "batch": batch, "path": label, **measured}
                )
                print(
                    f"{name:<14} batch {batch:>5}  {label:<30} {measured['images_per_second']:>14,.0f} images/s  "
                    f"{measured['latency_ms']:8.3f} ms/call",
                    flush=True,
                )
    if not rows:
        return None
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["model"], row["batch"])
        if key not in best or row["images_per_second"] > best[key]["images_per_second"]:
            best[key] = row
    return {
        "part": "inference",
        "device": device,
        "batches": list(INFERENCE_BATCHES),
        "seconds_per_measurement": args.inference_seconds,
        "cut_by_budget": cut,
        "rows": rows,
        "fastest": [
            {"model": m, "batch": b, "path": r["path"], "images_per_second": r["images_per_second"]}
            for (m, b), r in sorted(best.items())
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=default_data_dir(), help="the MNIST files")
    parser.add_argument("--seeds", type=int, default=10, help="seeds of the speed run (default 10)")
    parser.add_argument(
        "--only", action="append", choices=PARTS, metavar="PART", help=f"run only this part (repeatable): {PARTS}"
    )
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds for the whole run (default 480)")
    parser.add_argument("--models", nargs="+", help="inference: these models (default: every registered one)")
    parser.add_argument("--inference-seconds", type=float, default=0.5, help="timing per model, batch and path")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    budget = Budget(args.budget_s)

    import torch

    if not torch.cuda.is_available():
        print(
            "gpu: no CUDA GPU here (torch.cuda.is_available() is False): this benchmark measures one; "
            "run it on a machine with an NVIDIA GPU",
            file=sys.stderr,
        )
        return 2
    from mnist_nn.core.errors import UserError
    from mnist_nn.training.recipes import get_recipe

    selected = [part for part in PARTS if not args.only or part in args.only]
    plan = {**TRAINING, **TRAINING_LAST}
    # An unknown recipe is found now, not after minutes of GPU time spent on the parts before it.
    for part in selected:
        if part in plan:
            try:
                get_recipe(plan[part][0])
            except UserError as exc:
                print(f"gpu: part {part}: {exc} (leave it out with --only)", file=sys.stderr)
                return 2
    torch.zeros(1, device="cuda")  # CUDA's start-up, once, before any run is timed
    announce_host("cuda")

    done, skipped, failed = [], [], []
    out_of_budget = False
    with tempfile.TemporaryDirectory() as scratch:
        for part in selected:
            if out_of_budget:
                skipped.append(part)
                continue
            try:
                if part == "inference":
                    data = inference_part(args, budget)
                else:
                    recipe, runs = plan[part]
                    data = train_part(part, recipe, runs or args.seeds, args, budget, Path(scratch))
            except Exception as exc:
                # One part's failure should not cost the others their share of a GPU lent for minutes.
                message = str(exc) if isinstance(exc, UserError) else traceback.format_exc(limit=-3).strip()
                print(f"gpu: part {part} failed: {message}", file=sys.stderr, flush=True)
                failed.append(part)
                continue
            if data is None:
                skipped.append(part)
                out_of_budget = True
                continue
            path = write_result(f"gpu-{part}", data, args.results, device="cuda")
            done.append(part)
            print(f"{part} -> {path}", flush=True)
            out_of_budget = data["cut_by_budget"]
    print(
        f"done in {budget.used():.0f} s of {budget.seconds:.0f}: {', '.join(done) or 'nothing'}"
        + (f"; skipped for the budget: {', '.join(skipped)}" if skipped else "")
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
