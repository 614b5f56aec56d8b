"""Other writers' digits: scikit-learn's 8x8 handwritten digits, read as `mnist-nn predict` reads an image.

    python benchmarks/other_writers.py [MODEL ...]

MODEL is a bundled model's name or a checkpoint (default: the bundled default). The 1,797 digits
(UCI "optdigits", written by 43 people who are not MNIST's writers, in 16 grey levels) are each drawn
dark on white paper as a PNG, once at their own 8x8 pixels and once enlarged 4x, and read through
predict's preprocessing. Prints each model's accuracy and its most frequent misreadings, and writes
them to benchmarks/results/other-writers.json.

Nothing is tuned on this set: it measures how a model reads digits written in styles MNIST's writers
did not use (a 1 with a flag and a foot, a 9 with a small loop), at a resolution far below MNIST's.
"""

from __future__ import annotations

import argparse
import collections
import io
import sys
from pathlib import Path

import numpy as np
from common import RESULTS, write_result
from PIL import Image

from mnist_nn.core.device import configure_cpu
from mnist_nn.core.errors import UserError
from mnist_nn.inference.predictor import Predictor
from mnist_nn.inference.preprocess import NoDigitFound
from mnist_nn.models.bundled import DEFAULT_MODEL, bundled_name, resolve_model

ENLARGED = 4


def digit_images(scale: int, limit: int | None = None) -> tuple[list[bytes], np.ndarray]:
    """The first ``limit`` digits as PNG files (dark ink on white, ``scale`` x 8 pixels a side); their labels."""
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    pixels, labels = pixels[:limit], labels[:limit]
    files = []
    for row in pixels:
        image = Image.fromarray((255 - row.reshape(8, 8) * 255 / 16).astype(np.uint8))
        if scale > 1:
            image = image.resize((8 * scale, 8 * scale), Image.NEAREST)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        files.append(buffer.getvalue())
    return files, labels


def prepared(files: list[bytes]) -> np.ndarray:
    """Each file's 28x28 MNIST-form digit as predict makes it; a blank one where no digit is found."""
    out = []
    for data in files:
        try:
            out.append(Predictor.prepare(None, data)[0].pixels)
        except NoDigitFound:
            out.append(np.zeros((28, 28), np.float32))
    return np.stack(out)


def figures(predictor: Predictor, pixels: np.ndarray, labels: np.ndarray) -> dict:
    read = predictor.zoomed_probabilities(pixels).argmax(1).numpy()
    confusions = collections.Counter(f"{a}->{b}" for a, b in zip(labels, read, strict=True) if a != b)
    return {
        "images": len(labels),
        "accuracy": float((read == labels).mean()),
        "misread": int((read != labels).sum()),
        "most_misread": dict(confusions.most_common(6)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=[DEFAULT_MODEL], help="bundled model names or checkpoints")
    parser.add_argument("--name", default="other-writers", help="result file name (benchmarks/results/NAME.json)")
    parser.add_argument("--limit", type=int, default=None, help="read only the first N digits (a quick try)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be at least 1, got {args.limit}", file=sys.stderr)
        return 2
    configure_cpu()
    try:
        paths = {model: resolve_model(model) for model in args.models}
        predictors = {model: Predictor.from_checkpoint(path) for model, path in paths.items()}
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sizes = {"8x8": 1, f"{8 * ENLARGED}x{8 * ENLARGED}": ENLARGED}
    # Preprocessed once for all the models, then read as read_image reads (zoomed_probabilities).
    inputs = {}
    for size, scale in sizes.items():
        files, labels = digit_images(scale, args.limit)
        inputs[size] = (prepared(files), labels)
    rows = []
    for model, predictor in predictors.items():
        row = {"model": bundled_name(paths[model]) or str(model), "network": predictor.metadata["model"]}
        for size, (pixels, labels) in inputs.items():
            row[size] = figures(predictor, pixels, labels)
            print(
                f"{row['model']} ({row['network']}), {size}: {100 * row[size]['accuracy']:.2f}% of "
                f"{row[size]['images']:,} ({row[size]['misread']} misread; most often {row[size]['most_misread']})"
            )
        rows.append(row)
    write_result(
        args.name,
        results_dir=args.results,
        data={"digits": "scikit-learn load_digits (UCI optdigits), 1,797", "models": rows},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
