"""Make the models bundled in the package (src/mnist_nn/models/pretrained/) from our own recipes and seeds.

    python scripts/make_pretrained.py --data-dir DIR                       # train and bundle all three
    python scripts/make_pretrained.py --data-dir DIR --only tutorial       # one of them
    python scripts/make_pretrained.py --data-dir DIR --from-run robust=runs/robust-seed0   # bundle a finished run

Each model is trained with `mnist-nn train --recipe RECIPE --seed SEED` (or taken from a finished run
of exactly that recipe and seed), its model.pt is copied into the package and calibrated (training fits the
temperature of a recipe that holds a validation split out; `mnist-nn calibrate` that of one that does not,
on 5,000 training digits), and models.json records its
sha256, its clean accuracy on the MNIST test set and its MNIST-C mean accuracy (`mnist-nn robustness`).
tests/test_bundled.py re-checks every hash and re-scores the clean accuracies against those numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from mnist_nn import train
from mnist_nn.data.datasets import load_dataset, normalize
from mnist_nn.inference.calibrate import calibrate_checkpoint
from mnist_nn.lab.robustness import score_checkpoint
from mnist_nn.models.bundled import DEFAULT_MODEL, INDEX_NAME, PRETRAINED_DIR, BundledModel
from mnist_nn.models.checkpoint import load_checkpoint
from mnist_nn.models.scoring import evaluate

# (name, recipe, seed, description), the default first.
MODELS = (
    (DEFAULT_MODEL, "robust", 0, "reads real handwriting: photos, scans, thick and fine pens, uneven light"),
    ("cnn-fast", "cnn-fast", 0, "small and quick: 99% on MNIST in seconds of training"),
    ("tutorial", "tutorial", 0, "the tutorial's MLP (784-128-256-128-64-10), trained the tutorial's way"),
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def trained_model(recipe: str, seed: int, data_dir: str, run: Path | None, scratch: Path) -> Path:
    """model.pt of a run of ``recipe`` with ``seed``: the given finished run (checked), or a new one."""
    if run is None:
        run = scratch / recipe
        train(recipe, data_dir=data_dir, out=run, seed=seed, quiet=True)
    config = json.loads((run / "config.json").read_text())["recipe"]
    if (config["name"], config["seed"]) != (recipe, seed):
        sys.exit(f"{run} is a run of {config['name']} seed {config['seed']}, not {recipe} seed {seed}")
    return run / "model.pt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder with MNIST's four IDX files")
    parser.add_argument("--only", action="append", choices=[name for name, *_ in MODELS], help="only these models")
    parser.add_argument("--from-run", action="append", default=[], metavar="NAME=RUN_DIR", help="bundle a finished run")
    args = parser.parse_args()
    runs = dict(item.split("=", 1) for item in args.from_run)
    index_path = PRETRAINED_DIR / INDEX_NAME
    existing = {m["name"]: m for m in json.loads(index_path.read_text())["models"]} if index_path.exists() else {}
    splits = load_dataset("mnist", args.data_dir)
    PRETRAINED_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        for name, recipe, seed, description in MODELS:
            if args.only and name not in args.only:
                continue
            source = trained_model(
                recipe, seed, args.data_dir, Path(runs[name]) if name in runs else None, Path(scratch)
            )
            target = PRETRAINED_DIR / f"{name}.pt"
            shutil.copyfile(source, target)
            if not load_checkpoint(target).meta.calibration:
                calibrate_checkpoint(target, data_dir=args.data_dir, device="cpu", out=target)
            checkpoint = load_checkpoint(target)
            images = normalize(splits.test_images, checkpoint.mean, checkpoint.std, "cpu")
            clean = evaluate(checkpoint.model, images, splits.test_labels).accuracy
            corrupted = score_checkpoint(target, data_dir=args.data_dir)
            entry = BundledModel(
                name=name,
                file=target.name,
                recipe=recipe,
                seed=seed,
                sha256=sha256(target),
                parameters=sum(p.numel() for p in checkpoint.model.parameters()),
                clean_accuracy=clean,
                mnist_c_mean=corrupted.mean_accuracy,
                description=description,
            )
            existing[name] = asdict(entry)
            print(f"{name}: {target.stat().st_size:,} bytes, clean {100 * clean:.2f}%, MNIST-C mean "
                  f"{100 * corrupted.mean_accuracy:.2f}%, temperature {checkpoint.temperature:.4g}, "
                  f"sha256 {entry.sha256[:16]}...")  # fmt: skip
    order = [name for name, *_ in MODELS]
    models = sorted(existing.values(), key=lambda m: order.index(m["name"]))
    index_path.write_text(json.dumps({"models": models}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
