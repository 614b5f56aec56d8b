"""Reading run directories while they change: what ``mnist-nn watch`` shows, as plain JSON-ready dicts.

A run directory is written by ``mnist-nn train`` as it goes (see ``report.py``): ``config.json``
first, then a line in ``batches.jsonl`` every ``log_every`` batches, a line in ``metrics.jsonl``
and a new ``samples.json`` after each epoch, and ``summary.json`` at the very end. A resumed run
rewrites ``metrics.jsonl`` and ``batches.jsonl`` to its saved state and appends again.

So everything here is read as if it could be half-written or rewritten under us: a JSON-lines
file's last line without its newline is still being written and is left for the next read, a
line that is not a valid row is skipped and counted, and a file that cannot be read at all is
a problem named in the run's status, never an exception. Only regular files inside the run
directory are read, each up to a cap on the bytes read (``files.py``); the JSON-lines logs are
tailed, so a poll reads only what was appended (``series.py``). Nothing here imports torch: a
viewer starts in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mnist_nn.core.errors import UserError

from . import files
from .series import BatchCurve, EvalCurve, number, whole

log = logging.getLogger("mnist_nn.watch")

# The files a training run writes into its run directory.
CONFIG = "config.json"
METRICS = "metrics.jsonl"
BATCHES = "batches.jsonl"
SAMPLES = "samples.json"
SUMMARY = "summary.json"
WATCHED = (CONFIG, METRICS, BATCHES, SAMPLES, SUMMARY)
# Any of these marks a folder as a run directory (a run stopped before its first epoch has only some).
RUN_FILES = (*WATCHED, "state.pt", "model.pt")
# config.json, samples.json and summary.json are a few kilobytes: a larger one is not read.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
DIGIT_PIXELS = 28 * 28


def check_run_dir(path: str | os.PathLike) -> Path:
    """A folder that can be watched: a run directory, or an empty folder a run is about to fill.

    Anything else (a missing path, a file, a folder of other things) is a one-line UserError, so
    that a mistyped path is caught before a page is served that would wait for it forever.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: pass a run directory written by `mnist-nn train` (e.g. runs/...)")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a run directory: pass the folder that holds config.json")
    try:
        # Dotfiles are the trainer's temporary files (a write test, an atomic write in progress).
        entries = [entry for entry in path.iterdir() if not entry.name.startswith(".")]
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if not entries or any((path / name).exists() for name in RUN_FILES):
        return path
    runs = sorted(entry.name for entry in entries if entry.is_dir() and (entry / CONFIG).exists())
    hint = ""
    if runs:
        hint = f"; it holds run directories ({', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''}): pass those"
    raise UserError(f"{path} is not a run directory (no config.json, metrics.jsonl or state.pt in it){hint}")


def run_labels(paths: Sequence[Path]) -> list[str]:
    """A short, distinct label per run: its folder's name, with as many parent folders as it takes."""
    parts = [Path(os.path.abspath(path)).parts for path in paths]
    depth = 1
    while depth < max(len(p) for p in parts):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
        depth += 1
    return [str(path) for path in paths]


class DocumentCache:
    """Whole small files (config.json, samples.json, summary.json), parsed again only when they change."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[int, int, int], Any]] = {}

    def get(self, folder: Path, name: str, parse: Callable[[bytes], Any]) -> Any:
        """``parse(bytes)`` of the file, from the cache while it is unchanged; None when it is missing.

        Raises OSError or ValueError (``files.Refused`` among them) for a file that cannot be read or parsed.
        """
        info = files.safe_stat(folder, name)
        cached = self._entries.get(name)
        if info is not None and cached is not None and cached[0] == files.stamp_of(info):
            return cached[1]
        self._entries.pop(name, None)
        read = files.read_document(folder, name, MAX_DOCUMENT_BYTES) if info is not None else None
        if read is None:
            return None
        stamp, data = read
        value = parse(data)
        self._entries[name] = (stamp, value)
        return value


def latest_samples(data: bytes) -> dict[str, Any]:
    """samples.json reduced to what the page draws: the digits and the latest epoch's answers.

    The pixels come flat, 784 integers 0-255 per digit. Raises ValueError for any other shape.
    """
    samples = json.loads(data)
    labels = samples["labels"]
    pixels = samples["pixels"]
    epochs = samples.get("epochs", [])
    if not (isinstance(labels, list) and isinstance(pixels, list) and isinstance(epochs, list)):
        raise ValueError("labels, pixels and epochs must be lists")
    if len(pixels) != len(labels) or any(whole(label) is None for label in labels):
        raise ValueError("one label per digit, each a class number")
    flat = []
    for digit in pixels:
        values = [number(v) for row in digit for v in row] if isinstance(digit, list) else []
        if len(values) != DIGIT_PIXELS or any(v is None for v in values):
            raise ValueError("each digit must be 28 rows of 28 numbers")
        flat.append([min(255, max(0, round(v))) for v in values])
    answers = [e for e in epochs if isinstance(e, dict) and whole(e.get("epoch"))]
    latest = max(answers, key=lambda e: e["epoch"], default=None)
    predictions = confidences = None
    if latest is not None:
        predictions = [whole(p) for p in latest.get("predictions", [])]
        confidences = [number(c) for c in latest.get("confidences", [])]
        if len(predictions) != len(labels) or len(confidences) != len(labels):
            raise ValueError(f"epoch {latest['epoch']}: one prediction and one confidence per digit")
    return {
        "epoch": latest["epoch"] if latest is not None else None,
        "labels": labels,
        "predictions": predictions,
        "confidences": confidences,
        "pixels": flat,
    }


def _json_object(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg}, line {exc.lineno})"
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} field"
    return str(exc) or type(exc).__name__


class RunView:
    """One watched run directory: its files, read again only as far as they changed, as one JSON-ready dict."""

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label
        self.documents = DocumentCache()
        self.batches = BatchCurve()
        self.metrics = EvalCurve()

    def stamps(self) -> list[tuple[int, int, int] | None]:
        """What identifies the state of the run's files (their inode, size and modification time)."""
        stamps = []
        for name in WATCHED:
            try:
                stamps.append(files.stamp_of(os.stat(self.path / name)))  # a stat never opens, never waits
            except OSError:
                stamps.append(None)
        return stamps

    def _read(self, name: str, parse: Callable[[bytes], Any], problems: list[str]) -> Any:
        try:
            return self.documents.get(self.path, name, parse)
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            problems.append(f"{name}: {_reason(exc)}")
            return None

    def _curves(self, per_epoch: int | None, problems: list[str]) -> dict[str, Any]:
        """The two logs' new rows read, and their curves and skipped-row counts."""
        for curve in (self.batches, self.metrics):
            try:
                curve.update(self.path)
            except (OSError, ValueError) as exc:
                problems.append(f"{curve.name}: {_reason(exc)}")
            problems.extend(curve.problems())
        skipped = {c.name: c.skipped + c.tail.not_json for c in (self.batches, self.metrics)}
        return {"train": self.batches.series(per_epoch), "eval": self.metrics.series(), "skipped": skipped}

    def snapshot(self) -> dict[str, Any]:
        """The run as the page shows it; a missing or unreadable file is a status or a problem, never an error."""
        problems: list[str] = []
        view: dict[str, Any] = {"name": self.label, "path": str(self.path), "problems": problems}
        if not self.path.is_dir():
            return {**view, **_waiting("the folder does not exist yet")}
        config = self._read(CONFIG, _json_object, problems)
        if config is None and not problems:
            return {**view, **_waiting("no config.json yet")}
        config = config or {}
        recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
        data = config.get("data") if isinstance(config.get("data"), dict) else {}
        distributed = config.get("distributed") if isinstance(config.get("distributed"), dict) else {}
        per_epoch = _batches_per_epoch(data.get("train_size"), recipe.get("batch_size"))
        curves = self._curves(per_epoch, problems)
        summary = self._read(SUMMARY, _json_object, problems)
        view.update(
            recipe=recipe.get("name") if isinstance(recipe.get("name"), str) else None,
            model=recipe.get("model") if isinstance(recipe.get("model"), str) else None,
            dataset=data.get("dataset") if isinstance(data.get("dataset"), str) else None,
            parameters=whole(config.get("parameters")),
            processes=whole(distributed.get("world_size")) or 1,
            batches_per_epoch=per_epoch,
            log_every=whole(recipe.get("log_every")),
            **curves,
            samples=self._read(SAMPLES, latest_samples, problems),
            summary=_summary(summary),
            modified=self._modified(),
        )
        view.update(progress(whole(recipe.get("epochs")), view["eval"], view["train"], view["summary"]))
        return view

    def _modified(self) -> float | None:
        times = []
        for name in WATCHED:
            try:
                times.append(os.stat(self.path / name).st_mtime)
            except OSError:
                continue
        return max(times, default=None)


def _waiting(why: str) -> dict[str, Any]:
    return {"status": "waiting", "message": f"waiting for the run to start ({why})", "train": None, "eval": None}


def _batches_per_epoch(train_size: Any, batch_size: Any) -> int | None:
    train_size, batch_size = whole(train_size), whole(batch_size)
    return -(-train_size // batch_size) if train_size and batch_size else None


def _summary(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The figures of summary.json the page shows; None until it is there with a test accuracy."""
    if summary is None or number(summary.get("test_accuracy")) is None:
        return None
    return {
        "test_accuracy": number(summary.get("test_accuracy")),
        "test_loss": number(summary.get("test_loss")),
        "train_seconds": number(summary.get("train_seconds")),
        "epochs": whole(summary.get("epochs")),
        "selected_epoch": whole(summary.get("selected_epoch")),
    }


def progress(
    total: int | None, evals: dict[str, Any], train: dict[str, list], summary: dict[str, Any] | None
) -> dict[str, Any]:
    """Where the run is: its status, the epoch it is on (or ended at) of ``total``, and a line saying so."""
    done = evals["epoch"][-1] if evals["epoch"] else 0
    if summary is not None:
        epoch = summary["epochs"] or done
        accuracy = f"test accuracy {100 * summary['test_accuracy']:.2f}%"
        early = f" (stopped early: {total} planned)" if total and epoch and epoch < total else ""
        return {
            "status": "finished",
            "epoch": epoch,
            "epochs": total,
            "done": done,
            "message": f"finished after {epoch} epoch{'s' if epoch != 1 else ''}{early}: {accuracy}",
        }
    # The epoch in progress: the one after the last scored, or a later one that already logged batches.
    training = math.ceil(train["x"][-1]) if train["x"] else 0
    epoch = max(done + 1, training)
    if total:
        epoch = min(epoch, total)
    if total and done >= total:
        message = f"all {total} epochs trained: scoring the test set"
    else:
        message = f"training epoch {epoch}" + (f" of {total}" if total else "")
    return {"status": "training", "epoch": epoch, "epochs": total, "done": done, "message": message}


class Watcher:
    """The watched runs, and a version that changes whenever any of their files does."""

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        # The same folder named twice (runs/a, runs/a/) is watched once.
        unique = list(dict.fromkeys(Path(os.path.abspath(path)) for path in paths))
        self.runs = [RunView(path, label) for path, label in zip(unique, run_labels(unique), strict=True)]

    def version(self) -> str:
        stamps = [(run.path.is_dir(), run.stamps()) for run in self.runs]
        return hashlib.sha1(repr(stamps).encode()).hexdigest()[:16]

    def snapshot(self) -> list[dict[str, Any]]:
        return [_safe_snapshot(run) for run in self.runs]


def _safe_snapshot(run: RunView) -> dict[str, Any]:
    """A run's snapshot; a fault in reading one run is its status, not a failed page (and it is logged)."""
    try:
        return run.snapshot()
    except Exception as exc:  # files written by anything: no content may take the page down
        log.error("cannot read run %s", run.path, exc_info=exc)
        message = f"cannot read this run: {type(exc).__name__}: {exc}"
        return {
            "name": run.label,
            "path": str(run.path),
            "status": "unreadable",
            "message": message,
            "train": None,
            "eval": None,
            "problems": [message],
        }
