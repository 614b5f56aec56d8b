"""Data augmentation on the device, one call per batch: random affine maps and elastic distortion.

A whole batch is warped with one ``affine_grid`` + ``grid_sample``, so the cost
is a few tensor ops per batch rather than Python work per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    rotate: float = 0.0  # degrees, uniform in [-rotate, rotate]
    shift: float = 0.0  # pixels, each axis uniform in [-shift, shift]
    scale: float = 0.0  # relative, uniform in [1 - scale, 1 + scale]
    shear: float = 0.0  # degrees
    elastic_alpha: float = 0.0  # displacement in pixels after smoothing; 0 turns elastic distortion off
    elastic_sigma: float = 4.0  # smoothing of the random displacement field, pixels
    flip: float = 0.0  # probability of a left-right mirror image (clothes, not digits: a mirrored 2 is no 2)

    @property
    def enabled(self) -> bool:
        return any((self.rotate, self.shift, self.scale, self.shear, self.elastic_alpha, self.flip))


def _uniform(count: int, limit: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(count, generator=generator, device=device) * 2 - 1) * limit


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def augment_batch(images: torch.Tensor, config: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Randomly warp a batch [N, 1, H, W]; labels are unchanged and values stay within the input's range.

    Bilinear sampling only interpolates between input pixels, and the border
    padding repeats the background, so no new values appear.
    """
    if not config.enabled:
        return images
    n, _, height, width = images.shape
    device = images.device
    angle = torch.deg2rad(_uniform(n, config.rotate, generator, device))
    shear = torch.deg2rad(_uniform(n, config.shear, generator, device))
    scale = 1 + _uniform(n, config.scale, generator, device)
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # theta maps output coordinates to input coordinates: rotation @ shear, divided by the zoom.
    theta = torch.empty(n, 2, 3, device=device)
    theta[:, 0, 0] = cos / scale
    theta[:, 0, 1] = (cos * tan - sin) / scale
    theta[:, 1, 0] = sin / scale
    theta[:, 1, 1] = (sin * tan + cos) / scale
    theta[:, 0, 2] = _uniform(n, config.shift, generator, device) * 2 / width
    theta[:, 1, 2] = _uniform(n, config.shift, generator, device) * 2 / height
    if config.flip:
        # Mirroring negates the output x coordinate, i.e. the first column of the map; same single warp.
        mirror = torch.rand(n, generator=generator, device=device) < config.flip
        theta[:, :, 0] = torch.where(mirror[:, None], -theta[:, :, 0], theta[:, :, 0])
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if config.elastic_alpha:
        noise = torch.rand(n * 2, 1, height, width, generator=generator, device=device) * 2 - 1
        kernel = _gaussian_kernel(config.elastic_sigma, device)
        pad = len(kernel) // 2
        noise = F.conv2d(F.pad(noise, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        noise = F.conv2d(F.pad(noise, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, -1, 1))
        noise = noise / noise.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        displacement = noise.view(n, 2, height, width).permute(0, 2, 3, 1) * config.elastic_alpha
        grid = grid + displacement * torch.tensor([2 / width, 2 / height], device=device)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
