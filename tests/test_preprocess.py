"""Preprocessing on tiny synthetic images: loading, polarity, cropping, centring, segmentation, bad files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from mnist_nn.preprocess import (
    ImageError,
    NoDigitFound,
    connected_components,
    load_grayscale,
    median3x3,
    preprocess_image,
    segment_digits,
    to_mnist,
)


def drawn_bar(size=(120, 90), ink=30, paper=220, box=(50, 20, 62, 75)) -> Image.Image:
    """A dark vertical bar (a '1') on light paper, off-centre."""
    image = Image.new("L", size, paper)
    ImageDraw.Draw(image).rectangle(box, fill=ink)
    return image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(pixels.shape)
    total = pixels.sum()
    return float((rows * pixels).sum() / total), float((cols * pixels).sum() / total)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_every_supported_format_loads_to_the_same_digit(fmt):
    gray = load_grayscale(encode(drawn_bar(), fmt))
    assert gray.shape == (90, 120) and gray.dtype == np.float32
    digit = preprocess_image(gray).pixels
    assert digit.shape == (28, 28)
    rows = np.nonzero(digit.max(axis=1) > 0)[0]
    assert 19 <= rows[-1] - rows[0] + 1 <= 22  # longer side scaled to MNIST's 20 px box (plus faint edge)
    assert digit.max() > 200  # the stroke is full strength, as in MNIST


def test_dark_on_light_is_inverted_and_centred_by_mass():
    digit = preprocess_image(load_grayscale(drawn_bar())).pixels
    assert digit[0, 0] == 0 and digit.max() > 200  # light ink on a dark field, like MNIST
    com_y, com_x = centre_of_mass(digit)
    assert abs(com_y - 14) <= 0.6 and abs(com_x - 14) <= 0.6


def test_light_on_dark_is_not_inverted():
    light = preprocess_image(load_grayscale(drawn_bar(ink=240, paper=20))).pixels
    dark = preprocess_image(load_grayscale(drawn_bar())).pixels
    assert np.abs(light - dark).max() < 1.0


def test_aspect_ratio_is_kept():
    wide = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(wide).rectangle((20, 90, 180, 110), fill=0)  # 161 x 21: a dash
    digit = preprocess_image(load_grayscale(wide)).pixels
    rows = np.nonzero(digit.max(axis=1) > 127)[0]
    cols = np.nonzero(digit.max(axis=0) > 127)[0]
    assert 19 <= len(cols) <= 21 and 2 <= len(rows) <= 4


def test_rgba_transparent_paper_is_white():
    rgba = np.zeros((60, 60, 4), np.uint8)
    rgba[10:50, 28:34] = (0, 0, 120, 255)  # opaque dark blue ink, fully transparent elsewhere
    gray = load_grayscale(encode(Image.fromarray(rgba), "PNG"))
    assert gray[0, 0] == 255 and gray[30, 30] < 60
    assert preprocess_image(gray).pixels.max() > 200


def test_colour_and_16_bit_images_become_grayscale():
    colour = drawn_bar().convert("RGB")
    assert np.allclose(load_grayscale(colour), load_grayscale(drawn_bar()), atol=1)
    deep = Image.fromarray((np.asarray(drawn_bar(), np.uint16) * 257).astype(np.uint16))
    assert np.allclose(load_grayscale(encode(deep, "PNG")), load_grayscale(drawn_bar()), atol=1)


def test_noise_specks_do_not_move_the_crop():
    rng = np.random.default_rng(0)
    clean = np.asarray(drawn_bar(size=(200, 200), box=(90, 40, 104, 160)), np.float32)
    noisy = clean + rng.normal(0, 8, clean.shape)
    noisy[5, 5] = noisy[190, 180] = 0  # two dark specks far from the digit
    for image in (clean, np.clip(noisy, 0, 255)):
        box = preprocess_image(image).box
        assert np.abs(np.subtract(box, (90, 40, 105, 161))).max() <= 2, box


@pytest.mark.parametrize(
    "gray",
    [
        np.full((50, 50), 255, np.float32),
        np.full((50, 50), 128, np.float32),
        np.zeros((28, 28), np.float32),
        np.clip(np.random.default_rng(1).normal(200, 6, (120, 120)), 0, 255).astype(np.float32),
    ],
    ids=["white", "grey", "black", "noise"],
)
def test_no_ink_is_no_digit(gray):
    with pytest.raises(NoDigitFound):
        preprocess_image(gray)
    with pytest.raises(NoDigitFound):
        segment_digits(gray)


def test_thin_pen_strokes_are_thickened():
    image = Image.new("L", (400, 400), 255)
    ImageDraw.Draw(image).ellipse((100, 60, 300, 340), outline=0, width=2)  # a '0' in a 2 px pen
    digit = preprocess_image(load_grayscale(image)).pixels
    assert (digit > 127).sum() >= 40  # a visible ring, not a faint hairline


def test_mnist_digit_round_trips():
    digit = np.zeros((28, 28), np.float32)
    digit[4:24, 12:16] = 255
    again = to_mnist(digit)
    assert np.abs(again - digit).mean() < 5


def test_connected_components_eight_connected():
    mask = np.zeros((6, 8), bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one component
    mask[4, 3:7] = True
    mask[5, 7] = True  # diagonal again
    labels, components = connected_components(mask)
    assert sorted(c.area for c in components) == [2, 5]
    assert labels[0, 0] == labels[1, 1] != labels[4, 3] == labels[5, 7]
    assert {c.box for c in components} == {(0, 0, 2, 2), (3, 4, 8, 6)}


def flood_fill_components(mask: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, tuple[int, int, int, int]]]]:
    """The slow, obvious 8-connected labelling: flood fill from each unlabelled pixel in raster order."""
    labels = np.zeros(mask.shape, np.int32)
    found = []
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        label = len(found) + 1
        labels[start] = label
        stack, pixels = [start], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = label
                        stack.append((ny, nx))
        ys, xs = zip(*pixels, strict=True)
        found.append((label, len(pixels), (min(xs), min(ys), max(xs) + 1, max(ys) + 1)))
    return labels, found


def test_connected_components_match_a_flood_fill_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = rng.random(tuple(rng.integers(1, 30, size=2))) < rng.random()
        labels, components = connected_components(mask)
        expected_labels, expected = flood_fill_components(mask)
        assert labels.dtype == np.int32 and np.array_equal(labels, expected_labels)
        assert [(c.label, c.area, c.box) for c in components] == expected


def test_median3x3_equals_pillows_median_filter():
    rng = np.random.default_rng(0)
    for i in range(100):
        image = (rng.random(tuple(rng.integers(1, 70, size=2))) * 255).astype(np.float32)
        if i % 2:
            image = np.round(image / 64) * 64  # many ties
        pillow = np.asarray(Image.fromarray(image).filter(ImageFilter.MedianFilter(3)), dtype=np.float32)
        assert np.array_equal(median3x3(image), pillow)


def test_median_is_numpys_to_the_bit():
    from mnist_nn.preprocess import _median

    rng = np.random.default_rng(0)
    for i in range(2000):
        values = (rng.random(int(rng.integers(1, 200))) * 255).astype(np.float32)
        if i % 2:
            values = np.round(values)  # ties, and halves between neighbours
        assert _median(values) == float(np.median(values))


def number_image(widths_and_gaps, height=60):
    """Bars as digits, left to right, with the given gaps; one piece '5-like' broken in two stacked parts."""
    width = sum(widths_and_gaps) + 40
    image = Image.new("L", (width, height + 40), 235)
    draw = ImageDraw.Draw(image)
    x = 20
    for i, size in enumerate(widths_and_gaps):
        if i % 2 == 0:
            draw.rectangle((x, 20, x + size - 1, 20 + height - 1), fill=25)
        x += size
    return image


def test_segmentation_left_to_right_with_boxes():
    segments = segment_digits(load_grayscale(number_image([8, 30, 8, 12, 8])))
    assert len(segments) == 3
    lefts = [s.box[0] for s in segments]
    assert lefts == sorted(lefts) and lefts[0] == 20
    assert all(s.pixels.shape == (28, 28) for s in segments)


def test_segmentation_merges_stacked_pieces_and_splits_touching_digits():
    image = Image.new("L", (200, 100), 240)
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 60, 26), fill=10)  # a 5's bar, detached above its body
    draw.ellipse((20, 35, 60, 80), outline=10, width=6)
    draw.ellipse((100, 20, 140, 80), outline=10, width=6)  # two 0s touching: one blob, twice as wide as tall
    draw.ellipse((136, 20, 176, 80), outline=10, width=6)
    segments = segment_digits(load_grayscale(image))
    assert len(segments) == 3
    assert segments[0].box[1] <= 21 and segments[0].box[3] >= 80  # bar and body together
    assert segments[1].box[2] <= segments[2].box[0] + 8


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (the pixel data is never needed to refuse it)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 100))


def put(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: put(d / "notes.txt", b"not an image"), "not an image"),
        (lambda d: put(d / "empty.png", b""), "empty file (0 bytes)"),
        (lambda d: put(d / "cut.png", encode(drawn_bar(size=(300, 300)), "PNG")[:400]), "truncated"),
        (lambda d: put(d / "cut.jpg", encode(drawn_bar(size=(300, 300)), "JPEG")[:300]), "truncated"),
        (lambda d: put(d / "bomb.png", bomb_png(100_000, 100_000)), "image too large"),
        (lambda d: d / "missing.png", "no such file"),
        (lambda d: d, "is a folder"),
    ],
    ids=["text", "zero-bytes", "truncated-png", "truncated-jpeg", "bomb", "missing", "folder"],
)
def test_bad_files_are_one_clear_error(tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(ImageError) as info:
        load_grayscale(path)
    message = str(info.value)
    assert fragment in message and str(path) in message and "\n" not in message


def test_pixel_limit_is_checked_before_decoding():
    data = encode(drawn_bar(size=(300, 300)), "PNG")
    assert load_grayscale(data, max_pixels=90_000).shape == (300, 300)
    with pytest.raises(ImageError, match="90,000 pixels, over the limit of 89,999"):
        load_grayscale(data, max_pixels=90_000 - 1)
