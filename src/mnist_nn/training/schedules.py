"""Learning-rate schedules as a multiplier of the recipe's lr, per optimizer step.

One pure function, so a schedule's curve can be tested (and plotted) without training.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "step", "cosine", "onecycle")


def lr_factor(
    schedule: str,
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    step_every: int = 1,
    gamma: float = 0.1,
) -> float:
    """The multiplier at optimizer step ``step`` (0-based) of ``total_steps``.

    Every schedule starts with a linear warm-up over ``warmup_steps`` (to 1.0); then
    ``constant`` stays at 1, ``step`` multiplies by ``gamma`` every ``step_every``
    steps, ``cosine`` falls to 0 along a half cosine, and ``onecycle`` (Smith's
    1cycle) falls linearly to 0 — with its warm-up starting at 1/25 rather than 0.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}")
    if step < warmup_steps:
        start = 1 / 25 if schedule == "onecycle" else 0.0
        return start + (1 - start) * (step + 1) / warmup_steps
    after = step - warmup_steps
    remaining = max(1, total_steps - warmup_steps)
    progress = min(1.0, after / remaining)
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** (after // max(1, step_every))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - progress
