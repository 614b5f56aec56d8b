"""What a training run shows and writes besides its resumable state.

Console lines, the progress bar, ``metrics.jsonl``, TensorBoard, the three figures and
``summary.json``. Under data-parallel training every rank runs the same loop; only rank 0
reports, so a report built with ``main=False`` prints and writes nothing.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mnist_nn.core import plots
from mnist_nn.core.errors import UserError, option
from mnist_nn.core.fsutil import atomic_write, write_json
from mnist_nn.models.scoring import Evaluation

METRICS_NAME = "metrics.jsonl"
# The training loss every log_every batches, and the sample digits' predictions after each epoch:
# what a live view of the run (``mnist-nn watch``) draws besides metrics.jsonl.
BATCHES_NAME = "batches.jsonl"
SAMPLES_NAME = "samples.json"
SAMPLE_COUNT = 10


def sample_indices(test_size: int, seed: int) -> torch.Tensor:
    """The test digits a run shows (the predictions figure, the live view): seeded, the same every epoch."""
    return torch.randperm(test_size, generator=torch.Generator().manual_seed(seed))[:SAMPLE_COUNT]


def summary_writer_class() -> type:
    """TensorBoard's writer, or a one-line error naming the extra that provides it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            f"{option('tensorboard')} needs the tensorboard package: pip install 'mnist-nn[tensorboard]'"
        ) from None
    return SummaryWriter


class RunReport:
    """The run's console output and its human-readable files (rank 0 only)."""

    def __init__(
        self, run_dir: Path, *, quiet: bool, progress: bool | None, tensorboard: bool, main: bool = True
    ) -> None:
        self.run_dir = run_dir
        self.main = main
        self.quiet = quiet or not main
        self.show_bar = (sys.stderr.isatty() if progress is None else progress) and not quiet and main
        self.metrics_path = run_dir / METRICS_NAME
        self.batches_path = run_dir / BATCHES_NAME
        self.samples: dict[str, Any] = {}
        self._board_class = summary_writer_class() if tensorboard and main else None
        self._board: Any = None
        self._bar: Any = None
        self._metrics: Any = None
        self._batches: Any = None

    # ----------------------------------------------------------------- console

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    def log(self, message: str) -> None:
        """A line inside an epoch: above the progress bar when one is shown."""
        if self._bar is not None and self.show_bar:
            self._bar.write(message)
        else:
            self.say(message)

    def start_epoch(self, epoch: int, epochs: int, batches: int, first_batch: int) -> None:
        self._bar = tqdm(
            total=batches,
            initial=first_batch,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            leave=False,
            disable=not self.show_bar,
        )

    def advance(self) -> None:
        self._bar.update()

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()

    # ----------------------------------------------------------------- files

    def start(self, config: dict[str, Any], history: list[dict[str, Any]], step: int, resumed: bool) -> None:
        """config.json (kept when resuming), and metrics.jsonl, batches.jsonl and samples.json as the state
        knows them: rows written after it (a kill between a line and the state) are dropped here and
        recorded again."""
        if not self.main:
            return
        if not resumed or not (self.run_dir / "config.json").exists():
            write_json(self.run_dir / "config.json", config)
        _rewrite_lines(self.metrics_path, history)
        _rewrite_lines(self.batches_path, [row for row in _read_lines(self.batches_path) if row["step"] <= step])
        samples = self.run_dir / SAMPLES_NAME
        if resumed and samples.exists():
            with contextlib.suppress(ValueError, KeyError, OSError):
                self.samples = json.loads(samples.read_text())
                done = {row["epoch"] for row in history}
                self.samples["epochs"] = [e for e in self.samples["epochs"] if e["epoch"] in done]

    def open_board(self, history: list[dict[str, Any]]) -> None:
        if self._board_class is not None:
            purge = len(history) + 1 if history else None
            self._board = self._board_class(str(self.run_dir / "tensorboard"), purge_step=purge)

    @contextlib.contextmanager
    def metrics_file(self) -> Iterator[None]:
        """metrics.jsonl and batches.jsonl open for appending while the loop runs."""
        if not self.main:
            yield
            return
        with open(self.metrics_path, "a", encoding="utf-8") as metrics, open(self.batches_path, "a") as batches:
            self._metrics, self._batches = metrics, batches
            try:
                yield
            finally:
                self._metrics = self._batches = None

    def log_point(self, epoch: int, batch: int, step: int, loss: float) -> None:
        """The training loss of one batch, every log_every batches (flushed: a live view reads it)."""
        if self._batches is not None:
            self._batches.write(json.dumps({"epoch": epoch, "batch": batch, "step": step, "train_loss": loss}) + "\n")
            self._batches.flush()

    def record_samples(
        self, epoch: int, images: torch.Tensor, labels: torch.Tensor, probabilities: torch.Tensor
    ) -> None:
        """samples.json: the sample test digits (0-255) and, per epoch so far, what the model answered."""
        if not self.main:
            return
        if not self.samples:
            self.samples = {"labels": labels.tolist(), "pixels": images.tolist(), "epochs": []}
        confidence, predicted = probabilities.max(1)
        answer = {"epoch": epoch, "predictions": predicted.tolist(), "confidences": confidence.tolist()}
        self.samples["epochs"] = [e for e in self.samples["epochs"] if e["epoch"] != epoch] + [answer]
        write_json(self.run_dir / SAMPLES_NAME, self.samples)

    def record(self, row: dict[str, Any]) -> None:
        """One epoch's metrics line, flushed before the state that counts the epoch as done is written."""
        if self._metrics is not None:
            self._metrics.write(json.dumps(row) + "\n")
            self._metrics.flush()

    def epoch_line(self, row: dict[str, Any], epochs: int) -> None:
        if self._board is not None:
            for key in ("train_loss", "eval_loss", "eval_accuracy", "lr"):
                self._board.add_scalar(key, row[key], row["epoch"])
        split = row["eval_split"]
        self.say(
            f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f}  {split} loss "
            f"{row['eval_loss']:.4f}  {split} accuracy {100 * row['eval_accuracy']:.2f}%  {row['epoch_seconds']:.2f}s"
        )

    def write_results(
        self,
        history: list[dict[str, Any]],
        test: Evaluation,
        test_images: torch.Tensor,
        classes: tuple[str, ...],
        seed: int,
        summary: dict[str, Any],
    ) -> list[Path]:
        """The figures, the last TensorBoard entries and summary.json; returns the figures' paths."""
        figures = write_figures(self.run_dir, history, test_images, test, classes, seed)
        if self._board is not None:
            last_epoch = history[-1]["epoch"]
            self._board.add_scalar("test_accuracy", test.accuracy, last_epoch)
            self._board.add_image("predictions", _png_as_chw(figures[-1]), last_epoch)
            self._board.close()
        write_json(self.run_dir / "summary.json", summary)
        return figures


def write_figures(
    run_dir: Path,
    history: list[dict[str, Any]],
    test_images: torch.Tensor,
    test: Evaluation,
    classes: tuple[str, ...],
    seed: int,
) -> list[Path]:
    """The loss and accuracy curves, and 10 random test digits (seeded) with true and predicted labels."""
    eval_split = history[-1]["eval_split"]
    sample = sample_indices(len(test.labels), seed)
    return [
        plots.save_figure(plots.loss_curve(history, eval_split), run_dir / "loss.png"),
        plots.save_figure(plots.accuracy_curve(history, eval_split), run_dir / "accuracy.png"),
        plots.save_figure(
            plots.digit_grid(
                test_images[sample],
                test.labels[sample].tolist(),
                test.predictions[sample].tolist(),
                classes,
                title="10 random test images: true and predicted labels",
            ),
            run_dir / "predictions.png",
        ),
    ]


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (none if it is missing); a line cut short by a kill ends the list."""
    rows = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
    return rows


def _rewrite_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    atomic_write(path, lambda handle: handle.write(text.encode()))


def show(figures: list[Path]) -> None:
    """Open the figures in a window; without a display the PNGs are still in the run directory."""
    try:
        plots.show_saved(figures)
    except Exception as exc:  # no display or no GUI toolkit
        print(f"mnist-nn: warning: cannot open a window ({exc}); the plots are in the run directory", file=sys.stderr)


def _png_as_chw(path: Path) -> torch.Tensor:
    import matplotlib.image

    pixels = torch.from_numpy(matplotlib.image.imread(path)[..., :3].copy())
    return pixels.permute(2, 0, 1)
