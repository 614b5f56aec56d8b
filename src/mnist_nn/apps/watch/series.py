"""A run's JSON-lines logs as the curves the page plots, built up as the files grow.

Each poll feeds only the new rows (``files.JsonLinesTail``); a row without the expected fields,
or with values no run writes (an epoch of 400 digits, a loss that is text), is skipped and
counted, never an error for the whole run. A curve keeps at most ``MAX_POINTS`` points, thinned
evenly as it grows (as TensorBoard keeps a sample of a long scalar series): a chart a thousand
pixels wide shows no more, and a poll then costs the same at the millionth row as at the tenth.
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Any

from .files import JsonLinesTail

MAX_POINTS = 4096
# A JSON-lines file beyond this is no run's log: the rest of it is not read.
MAX_LOG_BYTES = 64 * 1024 * 1024
# Integers past this are not counts a run writes (and a browser's numbers cannot hold them exactly).
MAX_WHOLE = 2**53 - 1
# metrics.jsonl's columns the page plots: the name sent, the field read.
EVAL_COLUMNS = (
    ("train_loss", "train_loss"),
    ("loss", "eval_loss"),
    ("accuracy", "eval_accuracy"),
    ("seconds", "epoch_seconds"),
)


def number(value: Any) -> float | None:
    """A finite number as a float; None for anything else (JSON has no NaN, and a page cannot plot text)."""
    kind = type(value)  # exact types: True is no number here
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is not int:
        return None
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None


def whole(value: Any) -> int | None:
    """A non-negative integer a run could write, or None."""
    return value if type(value) is int and 0 <= value <= MAX_WHOLE else None


class Thinned:
    """Points kept in key order, at most ``limit`` of them (and the latest), thinned evenly as more come.

    A run appends in key order; a key seen again replaces its point (the last row of an epoch
    counts). A key older than the latest is put in its place.
    """

    def __init__(self, limit: int = MAX_POINTS) -> None:
        self.limit = limit
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.stride = 1
        self.count = 0
        self.latest: tuple[Any, Any] | None = None  # the newest point, kept or not

    def add(self, key: Any, value: Any) -> None:
        if self.latest is not None and key == self.latest[0]:
            self.latest = (key, value)
            if self.keys and self.keys[-1] == key:
                self.values[-1] = value
            return
        if self.latest is not None and key < self.latest[0]:
            self._place(key, value)
            return
        self.latest = (key, value)
        self.count += 1
        if (self.count - 1) % self.stride == 0:
            self.keys.append(key)
            self.values.append(value)
            if len(self.keys) > self.limit:  # every other point goes, and from now on every other new one
                self.keys = self.keys[::2]
                self.values = self.values[::2]
                self.stride *= 2

    def _place(self, key: Any, value: Any) -> None:
        at = bisect.bisect_left(self.keys, key)
        if at < len(self.keys) and self.keys[at] == key:
            self.values[at] = value
        elif len(self.keys) < self.limit:
            self.keys.insert(at, key)
            self.values.insert(at, value)

    def items(self) -> list[tuple[Any, Any]]:
        points = list(zip(self.keys, self.values, strict=True))
        if self.latest is not None and (not self.keys or self.latest[0] > self.keys[-1]):
            points.append(self.latest)
        return points


class LogCurve:
    """One JSON-lines log, tailed, as points keyed and valued by ``row``; rows it refuses are counted."""

    name = ""

    def __init__(self) -> None:
        self.tail = JsonLinesTail(MAX_LOG_BYTES)
        self._clear()

    def _clear(self) -> None:
        self.points = Thinned()
        self.skipped = 0

    def row(self, fields: dict[str, Any]) -> tuple[Any, Any] | None:
        raise NotImplementedError

    def update(self, folder: Path) -> None:
        """Read what was appended since the last update. Raises OSError or ValueError (files.Refused)."""
        self.tail.poll(folder, self.name, self._take, self._clear)

    def _take(self, rows: list[Any]) -> None:
        row, add = self.row, self.points.add
        for fields in rows:
            point = row(fields) if type(fields) is dict else None
            if point is None:
                self.skipped += 1
            else:
                add(*point)

    def problems(self) -> list[str]:
        found = []
        bad = self.tail.not_json
        if bad:
            found.append(f"{self.name}: {bad} line{'s' if bad > 1 else ''} not JSON, skipped")
        if self.skipped:
            rows = f"{self.skipped} row{'s' if self.skipped > 1 else ''}"
            found.append(f"{self.name}: {rows} without the expected fields, skipped")
        if self.tail.capped:
            found.append(f"{self.name}: more than {MAX_LOG_BYTES:,} bytes, more than a run writes: the rest not read")
        return found


class BatchCurve(LogCurve):
    """batches.jsonl: the training loss every ``log_every`` batches, x in epochs (epoch 2, batch 469 of 938: 1.5)."""

    name = "batches.jsonl"

    def _clear(self) -> None:
        super()._clear()
        self.longest = 0  # batches in the longest epoch seen: stands in for the epoch's length without config.json

    def row(self, fields: dict[str, Any]) -> tuple[Any, Any] | None:
        epoch = whole(fields.get("epoch"))
        batch = whole(fields.get("batch"))
        loss = number(fields.get("train_loss"))
        if not epoch or not batch or loss is None:
            return None
        self.longest = max(self.longest, batch)
        return (epoch, batch), (whole(fields.get("step")), loss)

    def series(self, per_epoch: int | None) -> dict[str, list]:
        per_epoch = per_epoch or self.longest or 1
        points: dict[float, tuple[int | None, float]] = {}
        for (epoch, batch), value in self.points.items():
            points[round(epoch - 1 + min(batch, per_epoch) / per_epoch, 6)] = value
        xs = sorted(points)
        return {"x": xs, "step": [points[x][0] for x in xs], "loss": [points[x][1] for x in xs]}


class EvalCurve(LogCurve):
    """metrics.jsonl: one value per epoch (the last line of an epoch counts)."""

    name = "metrics.jsonl"

    def row(self, fields: dict[str, Any]) -> tuple[Any, Any] | None:
        epoch = whole(fields.get("epoch"))
        if not epoch:
            return None
        split = fields.get("eval_split")
        values = tuple(number(fields.get(key)) for _, key in EVAL_COLUMNS)
        return epoch, (values, split if isinstance(split, str) else None)

    def series(self) -> dict[str, Any]:
        points = self.points.items()
        series: dict[str, Any] = {"split": points[-1][1][1] if points else None, "epoch": [e for e, _ in points]}
        for column, (name, _) in enumerate(EVAL_COLUMNS):
            series[name] = [values[column] for _, (values, _) in points]
        return series
