"""Data augmentation on the device, one call per batch: random affine maps, elastic distortion, and ink.

A whole batch is warped with one ``affine_grid`` + ``grid_sample``, so the cost
is a few tensor ops per batch rather than Python work per image.

The ink augmentations model what separates a photo or scan of real handwriting from MNIST: pens
thicker or finer than MNIST's, focus and motion blur, faint ink, grey or unevenly lit paper, sensor
noise and specks, stray lines and marks, low resolution. Each is applied to a random share of the
batch (``ink_share``), so most digits still look like MNIST and clean accuracy is kept.
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
    # Ink (see augment_ink); all zero is off.
    thickness: float = 0.0  # stroke width change: up to this many dilations (positive) or erosions, 3x3
    blur: float = 0.0  # Gaussian or motion blur up to this sigma, pixels
    contrast: float = 0.0  # ink fainter by up to this fraction
    brightness: float = 0.0  # paper greyer by up to this much (of full ink), evenly or as a smooth shade
    noise: float = 0.0  # Gaussian noise up to this std, or salt-and-pepper specks on up to this share of pixels
    occlude: float = 0.0  # stray marks (1-3 lines, solid or dotted) up to this ink, or a band along one edge
    lowres: float = 0.0  # resolution loss: down to as few as 28 * (1 - lowres) pixels a side, then back up
    ink_share: float = 0.25  # the share of the images each ink augmentation above is applied to
    # Pixel scale of the batch (the trainer's normalization): ink augmentations work on [0, 1] ink.
    mean: float = 0.0
    std: float = 1.0

    @property
    def warps(self) -> bool:
        return any((self.rotate, self.shift, self.scale, self.shear, self.elastic_alpha, self.flip))

    @property
    def inks(self) -> bool:
        return any((self.thickness, self.blur, self.contrast, self.brightness, self.noise, self.occlude, self.lowres))

    @property
    def enabled(self) -> bool:
        return self.warps or self.inks


def _uniform(count: int, limit: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(count, generator=generator, device=device) * 2 - 1) * limit


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def augment_batch(images: torch.Tensor, config: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Randomly warp a batch [N, 1, H, W], then change its ink; labels are unchanged and values stay
    within the range of the pixel scale (ink 0 to 1 before normalization).

    Bilinear sampling only interpolates between input pixels, and the border
    padding repeats the background, so no new values appear.
    """
    if not config.enabled:
        return images
    if config.warps:
        images = _warp(images, config, generator)
    if config.inks:
        unit = images * config.std + config.mean
        images = (augment_ink(unit, config, generator) - config.mean) / config.std
    return images


def _warp(images: torch.Tensor, config: Augmentation, generator: torch.Generator) -> torch.Tensor:
    n, _, height, width = images.shape
    device = images.device
    angle = torch.deg2rad(_uniform(n, config.rotate, generator, device))
    shear = torch.deg2rad(_uniform(n, config.shear, generator, device))
    scale = 1 + _uniform(n, config.scale, generator, device)
    cos = torch.cos(angle)
    sin = torch.sin(angle)
    tan = torch.tan(shear)
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


def augment_ink(images: torch.Tensor, config: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Ink as pens, paper, light and cameras change it, on a batch [N, 1, H, W] of ink in [0, 1].

    Each augmentation draws its own share of the batch; an image may get several. The order is
    the physical one: the pen (stroke width), the camera (resolution, blur), the light (grey or
    shaded paper, fainter ink), stray marks, then sensor noise.
    """
    n, _, height, width = images.shape
    device = images.device

    def chosen() -> torch.Tensor:  # [N, 1, 1, 1]: which images get the next augmentation
        return (torch.rand(n, generator=generator, device=device) < config.ink_share).view(n, 1, 1, 1)

    def amount(limit: float, low: float = 0.0) -> torch.Tensor:  # [N, 1, 1, 1], uniform in [low, limit]
        return (low + torch.rand(n, generator=generator, device=device) * (limit - low)).view(n, 1, 1, 1)

    x = images
    if config.thickness:
        x = torch.where(chosen(), _stroke_width(x, config.thickness, generator), x)
    if config.lowres:
        # One size per batch (interpolate takes one), drawn anew each batch.
        side = max(4, round(height * (1 - config.lowres * torch.rand(1, generator=generator, device=device).item())))
        small = F.interpolate(x, size=(side, side), mode="area")
        x = torch.where(chosen(), F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False), x)
    if config.blur:
        x = torch.where(chosen(), _blur(x, amount(config.blur, 0.3), generator), x)
    if config.brightness:
        shade = _smooth_field(n, height, width, generator, device)  # 0..1, one gentle gradient per image
        even = torch.rand(n, generator=generator, device=device).view(n, 1, 1, 1) < 0.5
        level = amount(config.brightness) * torch.where(even, torch.ones_like(shade), shade)
        x = torch.where(chosen(), x + level, x)
    if config.contrast:
        x = torch.where(chosen(), x * (1 - amount(config.contrast)), x)
    if config.occlude:
        x = torch.where(chosen(), _marks(x, amount(config.occlude, config.occlude / 2), generator), x)
    if config.noise:
        gaussian = torch.randn(x.shape, generator=generator, device=device) * amount(config.noise)
        specks = torch.rand(x.shape, generator=generator, device=device) < amount(config.noise)
        salt = torch.rand(x.shape, generator=generator, device=device) < 0.5
        noisy = torch.where(specks, salt.to(x.dtype), x + gaussian)
        x = torch.where(chosen(), noisy, x)
    return x.clamp(0, 1)


def _stroke_width(x: torch.Tensor, limit: float, generator: torch.Generator) -> torch.Tensor:
    """Each image's strokes widened (a grey-level dilation, max over 3x3) or thinned (an erosion),
    by a random, fractional number of steps in [-limit, limit]: the pens from fine to marker; or hollow."""
    n = len(x)
    steps = _uniform(n, limit, generator, x.device).view(n, 1, 1, 1)
    out = x
    for step in range(1, math.ceil(limit) + 1):
        dilated = F.max_pool2d(out, 3, 1, 1)
        eroded = -F.max_pool2d(-out, 3, 1, 1)
        # This step's weight: 1 while |steps| covers it, the fraction left on the last one, 0 beyond.
        weight = (steps.abs() - (step - 1)).clamp(0, 1)
        out = out + weight * (torch.where(steps > 0, dilated, eroded) - out)
    # One in five drawn hollow instead: ink only along the stroke's edges (a worn or pooling marker, an
    # outlined "bubble" digit): the ring a dilation adds around the stroke, at full ink.
    ring = (F.max_pool2d(x, 3, 1, 1) - x).clamp(0, 1)
    ring = ring / ring.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    hollow = (torch.rand(n, generator=generator, device=x.device) < 0.2).view(n, 1, 1, 1)
    return torch.where(hollow, ring, out)


def _blur(x: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian blur of each image's sigma; for half of them stretched 3x along a random direction
    (a shaken camera). One grouped convolution for the whole batch, a kernel per image."""
    n, _, height, width = x.shape
    radius = 4
    axis = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    angle = torch.rand(n, generator=generator, device=x.device) * math.pi
    motion = torch.rand(n, generator=generator, device=x.device) < 0.5
    along = xx * torch.cos(angle).view(n, 1, 1) + yy * torch.sin(angle).view(n, 1, 1)
    across = -xx * torch.sin(angle).view(n, 1, 1) + yy * torch.cos(angle).view(n, 1, 1)
    s = sigma.view(n, 1, 1)
    long = torch.where(motion.view(n, 1, 1), s * 3, s)
    kernel = torch.exp(-0.5 * ((along / long) ** 2 + (across / s) ** 2))
    kernel = kernel / kernel.sum(dim=(1, 2), keepdim=True)
    padded = F.pad(x.view(1, n, height, width), (radius,) * 4, mode="constant", value=0.0)
    return F.conv2d(padded, kernel.unsqueeze(1), groups=n).view(n, 1, height, width)


def _smooth_field(n: int, height: int, width: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A smooth random shade in [0, 1] per image: 3x3 random levels, upsampled bicubically (light and shadow)."""
    coarse = torch.rand(n, 1, 3, 3, generator=generator, device=device)
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True).clamp(0, 1)
    low = field.amin(dim=(2, 3), keepdim=True)
    high = field.amax(dim=(2, 3), keepdim=True)
    return (field - low) / (high - low).clamp_min(1e-6)


def _marks(x: torch.Tensor, ink: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Stray marks of each image's ``ink``: 1-3 lines across the image (straight, dotted or zigzag, a third
    each), and for one image in four a band along one edge (a table or the page's edge in a crop)."""
    n, _, height, width = x.shape
    device = x.device
    rows = torch.arange(height, device=device, dtype=x.dtype).view(1, height, 1)
    cols = torch.arange(width, device=device, dtype=x.dtype).view(1, 1, width)
    marks = torch.zeros(n, height, width, device=device, dtype=x.dtype)
    lines = torch.randint(1, 4, (n,), generator=generator, device=device)
    for index in range(3):
        start = torch.rand(n, 2, generator=generator, device=device) * torch.tensor([height, width], device=device)
        angle = torch.rand(n, generator=generator, device=device) * math.pi
        thickness = 0.5 + torch.rand(n, generator=generator, device=device)
        dy, dx = torch.sin(angle).view(n, 1, 1), torch.cos(angle).view(n, 1, 1)
        # Distance of each pixel from the line through `start` in direction (dx, dy).
        across = (cols - start[:, 1].view(n, 1, 1)) * dy - (rows - start[:, 0].view(n, 1, 1)) * dx
        along = (cols - start[:, 1].view(n, 1, 1)) * dx + (rows - start[:, 0].view(n, 1, 1)) * dy
        kind = torch.randint(0, 3, (n, 1, 1), generator=generator, device=device)  # solid, dotted, zigzag
        # A zigzag (a scribble) swings across its line: a triangle wave of 4-8 px period, 1.5-3 px each side.
        period = 4 + 4 * torch.rand(n, 1, 1, generator=generator, device=device)
        swing = 1.5 + 1.5 * torch.rand(n, 1, 1, generator=generator, device=device)
        wave = swing * (4 * (along / period - (along / period + 0.5).floor()).abs() - 1)
        distance = torch.where(kind == 2, across - wave, across).abs()
        line = (1 - (distance - thickness.view(n, 1, 1)).clamp(0, 1)) * (index < lines).view(n, 1, 1)
        gaps = (along.floor().remainder(4) >= 2).to(x.dtype)
        marks = torch.maximum(marks, torch.where(kind == 1, line * gaps, line))
    band = torch.randint(2, 8, (n, 1, 1), generator=generator, device=device)
    side = torch.randint(0, 4, (n, 1, 1), generator=generator, device=device)
    # Each pixel's distance from the chosen edge (top, bottom, left, right).
    edge = torch.where(
        side < 2,
        torch.where(side == 0, rows, height - 1 - rows).expand(n, height, width),
        torch.where(side == 2, cols, width - 1 - cols).expand(n, height, width),
    )
    in_band = edge < band
    banded = (torch.rand(n, generator=generator, device=device) < 0.25).view(n, 1, 1)
    # A band inverts what lies under it, as a dark table beyond a cropped page does after inversion.
    out = torch.maximum(x, marks.unsqueeze(1) * ink)
    inverted = 1 - x
    return torch.where((banded & in_band).unsqueeze(1), inverted, out)
