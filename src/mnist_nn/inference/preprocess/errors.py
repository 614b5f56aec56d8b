"""The preprocessing's two kinds of failure: an image that cannot be used, and one that holds no digit."""

from __future__ import annotations

import numpy as np

from mnist_nn.core.errors import UserError


class ImageError(UserError):
    """One input image cannot be used; the message names the file and why."""


class ImageTooLarge(ImageError):
    """The image has more pixels than allowed: refused from its header, before a pixel is decoded.

    A type of its own so that callers tell it apart without reading the message: a server answers
    it 413, like an oversized body, while every other ImageError is the image's content (422).
    """


class NoDigitFound(Exception):
    """The image is readable but holds no digit: ``reason`` says why in one line, ``seen`` shows what was found.

    ``reason`` starts with "no ink" (blank, uniform, noise only), "too faint" (marks too close to
    the paper's tone) or "too many blobs" (many separate marks, not one digit). ``seen`` is uint8
    [H, W]: the ink mask (255 = ink) at the working resolution, or None.
    """

    def __init__(self, reason: str = "no ink: the image is blank", seen: np.ndarray | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seen = seen
