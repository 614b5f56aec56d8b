"""How well a checkpoint holds up on MNIST-C: its test accuracy under each of the 15 corruptions.

``robustness_report`` (``mnist-nn robustness CHECKPOINT``) corrupts the test images with each of
corruptions.py's corruptions (seeded: every run sees the same images), scores the checkpoint on
each set as ``mnist-nn evaluate`` scores the clean one (with the checkpoint's own normalization),
and draws one test digit under each corruption, titled with the accuracy. The mean is over the 15
corruptions; the clean accuracy is reported beside it, not in it, as in the MNIST-C paper.

Building the 15 sets of 10,000 images takes tens of seconds, so they are cached, one .npy per
corruption, under the data cache (``data.cache_dir``): ``mnist-c/<dataset>-<MD5 of the test
images>-v<CORRUPTIONS_VERSION>-<libraries>-seed<seed>/``. Other test images, a changed corruption,
another numpy, SciPy or scikit-image (the random streams, filters and edge detector the corruptions
call), or another seed name another folder, so a stale set is never read. Each file is written
atomically; a cache that cannot be written only costs building the sets again next time.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from mnist_nn.core.errors import UserError, option
from mnist_nn.core.fsutil import png_destination
from mnist_nn.data.corruptions import CORRUPTIONS_VERSION, NAMES, corrupt
from mnist_nn.models.bundled import bundled_name, model_title

if TYPE_CHECKING:
    from mnist_nn.data.datasets import Splits
    from mnist_nn.models.checkpoint import Checkpoint

SEED = 0
# Scoring batch: on 2 CPU cores cnn-best scored the 10,000 test digits in 16 s in batches of 256 or 1,000,
# in 41 s in batches of 64.
DEFAULT_BATCH_SIZE = 256
EXAMPLE = 0  # the test digit the grid shows under each corruption


def _libraries() -> str:
    """The versions of the libraries the corruptions call, e.g. "np2.3.5-sp1.16.3-sk0.25.2"."""
    import scipy
    import skimage

    return f"np{np.__version__}-sp{scipy.__version__}-sk{skimage.__version__}"


def cache_folder(dataset: str, images_md5: str, seed: int = SEED) -> Path:
    """Where the corrupted sets of a test set (named by its images' MD5) are cached."""
    from mnist_nn.data.datasets import cache_dir

    return cache_dir() / "mnist-c" / f"{dataset}-{images_md5}-v{CORRUPTIONS_VERSION}-{_libraries()}-seed{seed}"


def _read_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):  # absent, unreadable or not an .npy: build it again
        return None
    return array if array.dtype == np.uint8 and array.shape == shape else None


def _write_cached(path: Path, array: np.ndarray) -> bool:
    from mnist_nn.core.fsutil import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))
    except OSError:
        return False
    return True


def corrupted_sets(
    images: np.ndarray, folder: Path | None, seed: int = SEED
) -> Iterator[tuple[str, np.ndarray, bool, bool]]:
    """Each corruption of uint8 ``images`` [N, 28, 28], in MNIST-C's order, one at a time (they are large).

    Yields (name, corrupted images, whether they were built now, whether they are in the cache):
    read from ``folder`` when it holds them, else built and cached there (``folder`` None: never cached).
    """
    for name in NAMES:
        path = folder / f"{name}.npy" if folder is not None else None
        cached = _read_cached(path, images.shape) if path is not None else None
        if cached is not None:
            yield name, cached, False, True
            continue
        corrupted = corrupt(name, images, seed)
        yield name, corrupted, True, path is not None and _write_cached(path, corrupted)


def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalization: tuple[float, float],
    device: torch.device,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> float:
    """Accuracy of ``model`` on uint8 ``images`` [N, 28, 28], normalized as the checkpoint was trained."""
    from mnist_nn.data.datasets import normalize
    from mnist_nn.models.scoring import evaluate

    inputs = normalize(images, *normalization, device)
    return evaluate(model, inputs, labels.to(device), batch_size).accuracy


@dataclass
class Robustness:
    """A checkpoint's accuracy on the clean test set and under each corruption (``corruptions``, MNIST-C's order)."""

    checkpoint: str
    model: str
    recipe: str | None
    dataset: str
    test_size: int
    seed: int
    clean_accuracy: float
    corruptions: dict[str, float]
    cache: str | None  # the folder holding the corrupted sets; None when it could not be written
    built: list[str]  # the sets built by this call (the others were read from the cache)
    examples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # one digit per set, for the grid

    @property
    def mean_accuracy(self) -> float:
        """The mean over the corruptions; the clean accuracy is not in it."""
        return sum(self.corruptions.values()) / len(self.corruptions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "model": self.model,
            "recipe": self.recipe,
            "dataset": self.dataset,
            "test_size": self.test_size,
            "seed": self.seed,
            "corruptions_version": CORRUPTIONS_VERSION,
            "clean_accuracy": self.clean_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "corruptions": dict(self.corruptions),
            "cache": self.cache,
            "built": list(self.built),
        }


def console_progress(total: int = len(NAMES), stream: TextIO | None = None) -> Callable[[str], None]:
    """Where ``robustness`` says how far it is (the first run builds the sets: minutes): on a terminal a bar
    that goes away at the end, else (a log, a pipe, CI) one line per corruption, so silence never means a hang."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return lambda line: print(line, file=stream, flush=True)
    from tqdm import tqdm

    bar = tqdm(total=total, leave=False, file=stream, unit="corruption")

    def step(line: str) -> None:
        bar.set_postfix_str(line.split("] ", 1)[-1], refresh=False)
        bar.update(1)
        if bar.n >= total:
            bar.close()

    return step


def _score(
    loaded: Checkpoint,
    splits: Splits,
    device: torch.device,
    batch_size: int,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> Robustness:
    images, labels = splits.test_images, splits.test_labels
    normalization = (loaded.mean, loaded.std)
    folder = cache_folder(loaded.dataset, splits.checksums["t10k-images-idx3-ubyte"], seed)
    example = min(EXAMPLE, len(labels) - 1)

    def score(corrupted: torch.Tensor) -> float:
        return accuracy(loaded.model, corrupted, labels, normalization, device, batch_size)

    clean = score(images)
    accuracies: dict[str, float] = {}
    examples: dict[str, np.ndarray] = {"clean": images[example].numpy()}
    built: list[str] = []  # the sets this call had to build rather than read from the cache
    all_cached = True
    started = time.perf_counter()
    for name, corrupted, was_built, cached in corrupted_sets(images.numpy(), folder, seed):
        accuracies[name] = score(torch.from_numpy(corrupted))
        examples[name] = corrupted[example]
        if progress is not None:
            how = "built" if was_built else "from the cache"
            seconds, started = time.perf_counter() - started, time.perf_counter()
            progress(f"[{len(accuracies)}/{len(NAMES)}] {name}: {100 * accuracies[name]:.2f}% ({how}, {seconds:.1f} s)")
        if was_built:
            built.append(name)
        all_cached = all_cached and cached
    recipe = loaded.recipe.get("name") if isinstance(loaded.recipe, dict) else None
    return Robustness(
        checkpoint=str(loaded.path),
        model=model_title(loaded.path, loaded.model_name),
        recipe=recipe,
        dataset=loaded.dataset,
        test_size=len(labels),
        seed=seed,
        clean_accuracy=clean,
        corruptions=accuracies,
        cache=str(folder) if all_cached else None,
        built=built,
        examples=examples,
    )


def robustness_figure(result: Robustness) -> Figure:
    """The example digit clean and under each corruption (``result.examples``), titled with the accuracies."""
    from mnist_nn.core.plots import plt

    accuracies = {"clean": result.clean_accuracy, **result.corruptions}
    columns = 4
    rows = -(-len(result.examples) // columns)
    figure, axes_grid = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.3 * rows), squeeze=False)
    for index, axes in enumerate(axes_grid.flat):
        if index >= len(result.examples):
            axes.axis("off")
            continue
        name = list(result.examples)[index]
        axes.imshow(result.examples[name], cmap="gray", vmin=0, vmax=255)
        # A frame but no ticks: a white border (stripe, brightness) would melt into the page without it.
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(f"{name.replace('_', ' ')}\n{100 * accuracies[name]:.2f}%", fontsize=10)
    figure.suptitle(
        f"{result.model} on MNIST-C: mean {100 * result.mean_accuracy:.2f}% over {len(result.corruptions)} "
        f"corruptions (clean {100 * result.clean_accuracy:.2f}%)"
    )
    return figure


def _prepare(device: str, batch_size: int | None) -> tuple[torch.device, int]:
    """The device and the batch size to score with, checked before anything is loaded."""
    from mnist_nn.core.device import configure_cpu, resolve_device

    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if batch_size < 1:
        raise UserError(f"{option('batch_size')} must be a positive integer, got {batch_size}")
    torch_device = resolve_device(device)
    configure_cpu()
    return torch_device, batch_size


def score_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    seed: int = SEED,
) -> Robustness:
    """Score a checkpoint on the clean test set and on each MNIST-C corruption of it (cached); draw nothing.

    ``batch_size`` None: ``DEFAULT_BATCH_SIZE``. Every failure (checkpoint, data, options) is a UserError.
    """
    from mnist_nn.data.datasets import load_dataset
    from mnist_nn.models.checkpoint import load_checkpoint

    torch_device, batch_size = _prepare(device, batch_size)
    loaded = load_checkpoint(checkpoint, torch_device)
    return _score(loaded, load_dataset(loaded.dataset, data_dir), torch_device, batch_size, seed)


def _figure_path(out: str | os.PathLike | None, checkpoint: Path) -> Path:
    """``out``, whose folder must exist; by default robustness.png beside the checkpoint, or for a bundled
    model runs/robustness-NAME.png (never a file inside the installed package)."""
    if out is not None:
        return png_destination(out)
    name = bundled_name(checkpoint)
    default = Path("runs") / f"robustness-{name}.png" if name else checkpoint.parent / "robustness.png"
    return png_destination(default, default=True)


def robustness_report(
    checkpoint: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    out: str | os.PathLike | None = None,
    batch_size: int | None = None,
    seed: int = SEED,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``score_checkpoint``, and the grid of one digit under each corruption written to ``out`` (default:
    robustness.png beside the checkpoint). Returns what ``--json`` prints: ``mean_accuracy`` over the
    corruptions, ``clean_accuracy`` apart, ``corruptions`` by name, the figure's path.
    """
    from mnist_nn.core import plots
    from mnist_nn.data.datasets import load_dataset
    from mnist_nn.models.checkpoint import load_checkpoint

    torch_device, batch_size = _prepare(device, batch_size)
    loaded = load_checkpoint(checkpoint, torch_device)
    figure_path = _figure_path(out, loaded.path)
    splits = load_dataset(loaded.dataset, data_dir)
    result = _score(loaded, splits, torch_device, batch_size, seed, progress)
    plots.save_figure(robustness_figure(result), figure_path)
    return {**result.to_dict(), "figure": str(figure_path)}


def format_report(report: dict[str, Any]) -> str:
    """The report as terminal text: the clean accuracy, one line per corruption, the mean."""
    corruptions = report["corruptions"]
    width = max(len(name) for name in corruptions)
    named = report.get("recipe") and not report["model"].startswith(f"{report['recipe']} (")  # robust (cnn-best)
    recipe = f" (recipe {report['recipe']})" if named else ""
    lines = [
        f"{report['model']}{recipe} on MNIST-C: the {report['dataset']} test set ({report['test_size']:,} images) "
        f"under {len(corruptions)} corruptions",
        f"  {'clean':<{width}}  {100 * report['clean_accuracy']:6.2f}%",
        "",
    ]
    lines += [f"  {name:<{width}}  {100 * value:6.2f}%" for name, value in corruptions.items()]
    lines.append(
        f"  {'mean':<{width}}  {100 * report['mean_accuracy']:6.2f}%  "
        f"(over the {len(corruptions)} corruptions; clean not included)"
    )
    if report["built"]:
        where = f"cached in {report['cache']}" if report["cache"] else "not cached: the cache folder is not writable"
        sets = f"built {len(report['built'])} corrupted sets, {where}"
    else:
        sets = f"corrupted sets read from {report['cache']}"
    lines += ["", sets, f"grid: {report['figure']}"]
    return "\n".join(lines)
