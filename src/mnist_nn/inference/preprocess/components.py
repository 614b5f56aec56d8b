"""Connected blobs of ink: labelling, selecting and dropping specks of noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mnist_nn.inference.preprocess.thresholds import EIGHT_CONNECTED, SPECK_PIXELS, SPECK_SHARE


@dataclass
class Component:
    """A connected blob of ink: its pixel count and bounding box (x0, y0, x1, y1), ends exclusive."""

    label: int
    area: int
    box: tuple[int, int, int, int]


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, list[Component]]:
    """8-connected components of a boolean mask: (label image, 0 = background; components).

    Components are numbered 1, 2, ... in the raster order of their first pixel.
    """
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
    labels = labels.astype(np.int32, copy=False)
    if not count:
        return labels, []
    area = np.bincount(labels[mask.astype(bool, copy=False)], minlength=count + 1)  # over the ink only: 3x faster
    components = [
        Component(label, int(area[label]), (cols.start, rows.start, cols.stop, rows.stop))
        for label, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1)
    ]
    return labels, components


def select(labels: np.ndarray, chosen: list[int]) -> np.ndarray:
    """Where ``labels`` is one of ``chosen`` (labels > 0): a lookup table, several times faster than np.isin."""
    table = np.zeros(int(labels.max(initial=0)) + 1, dtype=bool)
    table[[label for label in chosen if label < len(table)]] = True
    return np.take(table, labels)


def drop_specks(
    components: list[Component], fraction: float = SPECK_SHARE, minimum: int = SPECK_PIXELS
) -> list[Component]:
    """Keep blobs that are not noise: at least ``fraction`` of the largest blob's area, and ``minimum`` pixels."""
    if not components:
        return []
    largest = max(c.area for c in components)
    return [c for c in components if c.area >= max(minimum, fraction * largest)]
