"""Train a recipe over several seeds; write mean ± std, time and parameters (and the seeds' ensemble) to JSON.

    python benchmarks/seeds.py --recipe cnn-fast --seeds 5
    python benchmarks/seeds.py --recipe cnn-best --seeds 3 --ensemble --tta
    python benchmarks/seeds.py --recipe cnn-best --dataset fashion-mnist --seeds 1

Writes benchmarks/results/recipe-<recipe>[-<dataset>].json; `render_results.py` turns those into
the README's table. Run directories go to benchmarks/runs/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import RESULTS, ROOT, default_data_dir, describe, write_result

import mnist_nn
from mnist_nn.inference.evaluate import evaluate_checkpoint
from mnist_nn.training.recipes import Recipe
from mnist_nn.training.trainer import resolve_recipe


def _finished_run(out: Path, recipe: Recipe, seed: int) -> dict | None:
    """The summary of a finished run of this recipe and seed in ``out``; None when there is no finished run.

    Fields added to Recipe since the run count with their defaults. A finished run of another
    recipe stops the script: --reuse never deletes a run.
    """
    try:
        config = json.loads((out / "config.json").read_text())
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    saved = Recipe(**config["recipe"]).to_dict()
    if saved != {**recipe.to_dict(), "seed": seed}:
        raise SystemExit(f"seeds: {out} holds a run of another recipe; move it away or drop --reuse")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--dataset", default=None, help="default: the recipe's")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds: 0, 1, ... (default 3)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (smoke runs)")
    parser.add_argument("--ensemble", action="store_true", help="also score the ensemble of the seeds' checkpoints")
    parser.add_argument("--tta", action="store_true", help="with --ensemble: score it with test-time augmentation too")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--reuse", action="store_true", help="count a seed's finished run directory (same recipe) instead of retraining"
    )
    args = parser.parse_args(argv)
    if args.tta and not args.ensemble:
        parser.error("--tta scores the ensemble: add --ensemble")

    recipe = resolve_recipe(args.recipe, dataset=args.dataset, epochs=args.epochs)
    label = f"recipe-{recipe.name}" + ("" if recipe.dataset == "mnist" else f"-{recipe.dataset}")
    if args.epochs is not None:
        label += f"-{args.epochs}ep"
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        out = args.runs / f"{label}-seed{seed}"
        summary = _finished_run(out, recipe, seed) if args.reuse else None
        if summary is None:
            if out.exists() and args.reuse:
                raise SystemExit(f"seeds: {out} holds an unfinished run; move it away or drop --reuse")
            if out.exists():
                shutil.rmtree(out)
            summary = mnist_nn.train(
                recipe, data_dir=args.data_dir, out=out, seed=seed, quiet=True, progress=False
            ).summary
        runs.append({"seed": seed, "run_dir": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)})
        runs[-1].update({k: summary[k] for k in ("test_accuracy", "test_loss", "train_seconds", "selected_epoch")})
        print(
            f"seed {seed}: test accuracy {100 * summary['test_accuracy']:.2f}%  "
            f"training {summary['train_seconds']:.1f}s ({summary['threads']} threads)",
            flush=True,
        )
    accuracy = describe([r["test_accuracy"] for r in runs])
    summaries = {r["run_dir"]: json.loads((ROOT / r["run_dir"] / "summary.json").read_text()) for r in runs}
    seconds = describe([r["train_seconds"] for r in runs])
    data = {
        "recipe": recipe.name,
        "dataset": recipe.dataset,
        "model": recipe.model,
        "parameters": summary["parameters"],
        "epochs": recipe.epochs,
        "device": summary["device"],
        "threads": sorted({summaries[r["run_dir"]]["threads"] for r in runs}),
        "precision": sorted({summaries[r["run_dir"]].get("precision", "fp32") for r in runs}),
        "seeds": len(runs),
        "test_accuracy": accuracy,
        "train_seconds": seconds,
        "runs": runs,
    }
    if args.ensemble and len(runs) > 1:
        members = [ROOT / r["run_dir"] / "model.pt" for r in runs]
        report = evaluate_checkpoint(
            members,
            data_dir=args.data_dir,
            out=args.runs / f"{label}-ensemble",
        )
        data["ensemble_accuracy"] = report["test_accuracy"]
        print(f"ensemble of {len(runs)}: test accuracy {100 * report['test_accuracy']:.2f}%")
        if args.tta:
            report = evaluate_checkpoint(
                members, data_dir=args.data_dir, out=args.runs / f"{label}-ensemble-tta", tta=True
            )
            data["ensemble_tta_accuracy"] = report["test_accuracy"]
            print(f"ensemble of {len(runs)} with TTA: test accuracy {100 * report['test_accuracy']:.2f}%")
    path = write_result(label, data, args.results)
    print(
        f"{recipe.name} on {recipe.dataset}: {100 * accuracy['mean']:.2f}% ± {100 * accuracy['std']:.2f} "
        f"over {len(runs)} seeds, {seconds['mean']:.1f}s training per run -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
