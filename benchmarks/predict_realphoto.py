"""Real-photo prediction benchmark: plain vs photo-like accuracy, multi-digit reading, ONNX vs PyTorch speed.

    python benchmarks/predict_realphoto.py CHECKPOINT --data-dir DIR

Uses the same seeded synthetic sets as the tests (mnist_nn.testing.synthetic): 1,000 photo-like single
digits in every look (thick markers, fine pens, uneven light, shadows, inverted, low resolution...,
with the accuracy of each look and the images read wrong), 1,000 in the first, milder "classic"
look alone, and 500 numbers of 2-6 digits made from MNIST test images. Prints the figures and
writes them as JSON to benchmarks/results/predict-realphoto.json.

Each misread photo is checked against its MNIST digit as the model reads it in MNIST form: a miss
the model also makes there is one of MNIST's own hard digits, not one the photo caused. One set of
1,000 moves by a few images from one model to the next; ``--sets N`` also reads sets seeded 1..N-1
and reports the accuracy over all of them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import write_result

from mnist_nn.core.device import configure_cpu
from mnist_nn.core.errors import UserError
from mnist_nn.data.datasets import load_dataset
from mnist_nn.inference.predictor import Predictor
from mnist_nn.testing import synthetic


def throughput(run, repeats: int = 7) -> float:
    """Median images per second of ``run()`` over ``repeats`` timed runs (after one warm-up)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = run()
        times.append(time.perf_counter() - start)
    return count / statistics.median(times)


def photo_figures(photos: list[synthetic.SyntheticImage], readings: list[str | None], plain_read: np.ndarray) -> dict:
    """One set's accuracy, and how many of its misses the model also makes on the MNIST digit itself."""
    wrong = [item for read, item in zip(readings, photos, strict=True) if read != item.label]
    return {
        "images": len(photos),
        "right": len(photos) - len(wrong),
        "accuracy": (len(photos) - len(wrong)) / len(photos),
        "wrong_in_mnist_form": sum(str(plain_read[item.source]) != item.label for item in wrong),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data-dir", help="folder with the MNIST IDX files")
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--sets", type=int, default=1, help="photo-like sets to read, seeded 0..N-1 (default 1)")
    parser.add_argument("--numbers", type=int, default=500)
    parser.add_argument("--batch", type=int, default=1000, help="batch size for the throughput comparison")
    parser.add_argument("--name", default="predict-realphoto", help="result file name (benchmarks/results/NAME.json)")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    if args.sets < 1:
        print(f"error: --sets must be at least 1, got {args.sets}", file=sys.stderr)
        return 2
    threads = configure_cpu()
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint)
        splits = load_dataset(predictor.metadata["dataset"], args.data_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images, labels = splits.test_images.numpy(), splits.test_labels.numpy()
    plain_read = predictor.probabilities(images).argmax(1).numpy()
    plain = float((plain_read == labels).mean())

    photos = synthetic.photo_set(images, labels, count=args.photos, seed=0)
    start = time.perf_counter()
    readings = [predictor.predict(item.data).label for item in photos]
    photo_seconds = time.perf_counter() - start
    set_figures = [photo_figures(photos, readings, plain_read)]
    for seed in range(1, args.sets):
        more = synthetic.photo_set(images, labels, count=args.photos, seed=seed)
        set_figures.append(photo_figures(more, [predictor.predict(item.data).label for item in more], plain_read))
    by_look = {}
    for look in synthetic.LOOKS:
        pairs = [(read, item) for read, item in zip(readings, photos, strict=True) if item.look == look]
        by_look[look] = {"images": len(pairs), "accuracy": float(np.mean([r == item.label for r, item in pairs]))}
    wrong = [
        {
            "name": item.name,
            "look": item.look,
            "label": item.label,
            "read": read,
            "mnist_form_read": str(plain_read[item.source]),
        }
        for read, item in zip(readings, photos, strict=True)
        if read != item.label
    ]
    classic = synthetic.photo_set(images, labels, count=args.photos, seed=0, looks=("classic",))
    classic_right = sum(predictor.predict(item.data).label == item.label for item in classic)

    numbers = synthetic.number_set(images, labels, count=args.numbers, seed=1)
    numbers_read = [predictor.predict(item.data, multi=True).label or "" for item in numbers]
    exact = float(np.mean([r == item.label for r, item in zip(numbers_read, numbers, strict=True)]))
    counted = float(np.mean([len(r) == len(item.label) for r, item in zip(numbers_read, numbers, strict=True)]))
    ceiling = float(np.mean([plain ** len(item.label) for item in numbers]))

    from mnist_nn.inference.export import export_checkpoint, onnx_session

    batch = torch.from_numpy(images[: args.batch]).float()
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = Path(folder) / "model.onnx"
        export_checkpoint(args.checkpoint, fmt="onnx", out=onnx_path)
        session = onnx_session(onnx_path, threads=threads)
        onnx_logits = session.run(["logits"], {"pixels": batch.numpy()})[0]

    def run_torch() -> int:
        with torch.inference_mode():
            predictor.pixel_model(batch)
        return len(batch)

    def run_onnx() -> int:
        session.run(["logits"], {"pixels": batch.numpy()})
        return len(batch)

    with torch.inference_mode():
        parity = float((torch.from_numpy(onnx_logits) - predictor.pixel_model(batch)).abs().max())
    torch_speed, onnx_speed = throughput(run_torch), throughput(run_onnx)

    result = {
        "checkpoint": str(args.checkpoint),
        "model": predictor.metadata["model"],
        "threads": threads,
        "plain_test_accuracy": plain,
        "photo_accuracy": set_figures[0]["accuracy"],
        "photo_images": len(photos),
        "photo_seconds": photo_seconds,
        "photo_accuracy_by_look": by_look,
        "photo_wrong": wrong,
        "photo_sets": set_figures,
        "photo_sets_accuracy": sum(f["right"] for f in set_figures) / sum(f["images"] for f in set_figures),
        "classic_photo_accuracy": classic_right / len(classic),
        "multi_exact": exact,
        "multi_digit_count_right": counted,
        "multi_ceiling_from_plain": ceiling,
        "multi_numbers": len(numbers),
        "onnx_max_abs_diff": parity,
        "throughput_batch": len(batch),
        "pytorch_images_per_s": torch_speed,
        "onnxruntime_images_per_s": onnx_speed,
    }
    print(f"{args.checkpoint}: network {predictor.metadata['model']}, {threads} threads")
    print(f"  plain test accuracy        {100 * plain:6.2f}%  (10,000 images)")
    print(
        f"  photo-like accuracy        {100 * result['photo_accuracy']:6.2f}%  ({len(photos):,} images, "
        f"{100 * (result['photo_accuracy'] - plain):+.2f} points; {photo_seconds / len(photos) * 1000:.1f} ms/image)"
    )
    for look, figures in by_look.items():
        print(f"    {look:<24} {100 * figures['accuracy']:6.2f}%  ({figures['images']} images)")
    if wrong:
        shown = ", ".join(f"{w['name']} ({w['look']}: {w['label']} read {w['read'] or 'nothing'})" for w in wrong[:20])
        print(f"    read wrong: {shown}{' ...' if len(wrong) > 20 else ''}")
        print(f"    of these, misread in MNIST form too: {set_figures[0]['wrong_in_mnist_form']} of {len(wrong)}")
    if args.sets > 1:
        total = sum(f["images"] for f in set_figures)
        hard = sum(f["wrong_in_mnist_form"] for f in set_figures)
        wrong_all = total - sum(f["right"] for f in set_figures)
        per_set = " ".join(f"{100 * f['accuracy']:.1f}" for f in set_figures)
        print(
            f"  photo-like, {args.sets} sets     {100 * result['photo_sets_accuracy']:6.2f}%  ({total:,} images; "
            f"per set {per_set}; {wrong_all} misread, "
            f"{hard} of them in MNIST form too)"
        )
    print(f"  classic photo-like         {100 * result['classic_photo_accuracy']:6.2f}%  ({len(classic):,} images)")
    print(
        f"  numbers read exactly       {100 * exact:6.2f}%  ({len(numbers)} numbers of 2-6 digits; digit count right "
        f"{100 * counted:.1f}%; p^n ceiling {100 * ceiling:.1f}%)"
    )
    print(f"  ONNX vs PyTorch logits     max abs diff {parity:.2e}")
    print(
        f"  throughput (batch {len(batch)})     PyTorch {torch_speed:,.0f} images/s, ONNX Runtime {onnx_speed:,.0f} "
        f"images/s ({onnx_speed / torch_speed:.2f}x)"
    )
    out = write_result(args.name, result, *([args.results] if args.results else []))
    print(f"  written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
