"""MNIST-C robustness of trained checkpoints: accuracy under each of the 15 corruptions, the mean, the clean accuracy.

    python benchmarks/robustness.py runs/cnn-best/model.pt runs/cnn-fast/model.pt --data-dir DIR
    python benchmarks/robustness.py runs/cnn-best/model.pt --grid docs/images/robustness.png

Builds the 15 corrupted test sets into an empty cache (timed, per corruption), reads them back
(timed), then scores each checkpoint as `mnist-nn robustness` does (timed) and writes
benchmarks/results/robustness-<recipe>.json. `--grid` draws the first checkpoint's grid to a PNG.
`render_results.py` turns the result files into the README's robustness table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, default_data_dir, write_result

from mnist_nn.core.errors import UserError


def time_sets(images, folder: Path) -> tuple[dict[str, float], float]:
    """Seconds to build (and cache) each corrupted set into the empty ``folder``; then to read all back."""
    from mnist_nn.lab.robustness import corrupted_sets

    build, start = {}, time.perf_counter()
    for name, _, built, _ in corrupted_sets(images, folder):
        assert built, f"{name} was found in a cache that should be empty"
        build[name] = time.perf_counter() - start
        start = time.perf_counter()
    start = time.perf_counter()
    for name, _, built, _ in corrupted_sets(images, folder):
        assert not built, f"{name} was built again: the cache did not hold it"
    return build, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--device", default="auto")
    parser.add_argument("--grid", type=Path, help="draw the first checkpoint's grid into this PNG")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from mnist_nn.core import plots
    from mnist_nn.core.device import configure_cpu
    from mnist_nn.data.datasets import load_dataset
    from mnist_nn.lab.robustness import cache_folder, robustness_figure, score_checkpoint

    threads = configure_cpu()
    with tempfile.TemporaryDirectory(prefix="mnist-c-bench-") as scratch:
        os.environ["MNIST_NN_CACHE"] = scratch  # timed from empty; score_checkpoint then reads this cache
        try:
            splits = load_dataset("mnist", args.data_dir, allow_download=False)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        folder = cache_folder("mnist", splits.checksums["t10k-images-idx3-ubyte"])
        build, read = time_sets(splits.test_images.numpy(), folder)
        print(f"built the 15 corrupted sets in {sum(build.values()):.1f} s; read them back in {read:.2f} s", flush=True)
        for index, checkpoint in enumerate(args.checkpoints):
            start = time.perf_counter()
            try:
                result = score_checkpoint(checkpoint, data_dir=args.data_dir, device=args.device)
            except UserError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            seconds = time.perf_counter() - start
            # The cache was a temporary folder, and it built nothing for the scoring: neither is worth keeping.
            data = {key: value for key, value in result.to_dict().items() if key not in ("cache", "built")}
            data.update(
                device=args.device,
                threads=threads,
                build_seconds=sum(build.values()),
                build_seconds_per_corruption=build,
                cached_read_seconds=read,
                score_seconds=seconds,
            )
            path = write_result(f"robustness-{result.recipe or result.model}", data, args.results)
            print(
                f"{result.recipe or result.model}: mean {100 * result.mean_accuracy:.2f}% over the corruptions, "
                f"clean {100 * result.clean_accuracy:.2f}%, scored in {seconds:.1f} s -> {path}",
                flush=True,
            )
            for name, accuracy in result.corruptions.items():
                print(f"  {name:<14} {100 * accuracy:6.2f}%")
            if index == 0 and args.grid is not None:
                plots.save_figure(robustness_figure(result), args.grid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
