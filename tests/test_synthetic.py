"""The synthetic photo-like sets: every look seeded and deterministic, and each knob doing what it says."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_nn.testing import synthetic
from mnist_nn.testing.synthetic import LOOKS, Look, photo, photo_set


def fake_digits(count: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-like 28x28 digits (light rings and bars on black), no dataset needed."""
    images = np.zeros((count, 28, 28), np.uint8)
    for i in range(count):
        image = Image.new("L", (28, 28), 0)
        draw = ImageDraw.Draw(image)
        if i % 2:
            draw.ellipse((8, 4, 20, 24), outline=255, width=3)
        else:
            draw.line((14 + i % 3, 4, 12, 24), fill=255, width=3)
        images[i] = np.asarray(image)
    return images, np.arange(count) % 10


def decode(item: synthetic.SyntheticImage) -> Image.Image:
    return Image.open(io.BytesIO(item.data))


@pytest.mark.parametrize("look", list(LOOKS))
def test_every_look_is_seeded_and_deterministic(look):
    images, labels = fake_digits()
    first = photo_set(images, labels, count=6, seed=3, looks=(look,))
    again = photo_set(images, labels, count=6, seed=3, looks=(look,))
    other = photo_set(images, labels, count=6, seed=4, looks=(look,))
    assert [item.data for item in first] == [item.data for item in again]
    assert [item.data for item in first] != [item.data for item in other]
    assert {item.look for item in first} == {look}
    for item in first:
        decode(item).load()  # a readable file of its format
        assert item.name.endswith(synthetic.SUFFIXES.get(item.kind, ".png"))


def test_the_default_mix_draws_from_every_look():
    images, labels = fake_digits(60)
    items = photo_set(images, labels, count=60, seed=0)
    assert len({item.name for item in items}) == 60 and all(item.label == str(int(item.label)) for item in items)
    # Each image names the MNIST digit it was drawn from: all 60, once each, with that digit's label.
    assert sorted(item.source for item in items) == list(range(60))
    assert all(item.label == str(labels[item.source]) for item in items)
    assert len({item.look for item in items}) >= 10 and {item.look for item in items} <= set(LOOKS)
    assert sum(share for share, _ in LOOKS.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown look 'sepia'"):
        photo_set(images, labels, count=2, looks=("sepia",))


def test_a_gradient_of_60_grey_levels_with_noise():
    digit = fake_digits()[0][1]
    item = photo(digit, "0", Look(size=100, canvas=(2.0, 2.0), paper=220, gradient=60, noise=6), rng=0)
    gray = np.asarray(decode(item), np.float32)
    left, right = np.median(gray[:, :10]), np.median(gray[:, -10:])  # angle 0: darker towards the right
    assert left - right == pytest.approx(60, abs=4)
    assert 4 < np.std(gray[:20, 95:105]) < 8  # the noise asked for, on plain paper


def test_pens_markers_shadows_inversion_colour_and_size():
    digit = fake_digits()[0][1]

    def ink_area(look: Look) -> int:
        gray = np.asarray(decode(photo(digit, "0", look, rng=0)).convert("L"), np.float32)
        return int((gray < 128).sum())

    plain = ink_area(Look(size=200, noise=0))
    assert ink_area(Look(size=200, noise=0, thicken=1.5)) > 1.5 * plain  # a thick marker
    assert ink_area(Look(size=200, noise=0, pen=1.5)) < 0.5 * plain  # a fine pen
    shadowed = np.asarray(decode(photo(digit, "0", Look(noise=0, shadow=70, shadow_at=(0.1, 0.1, 0.2)), rng=0)))
    assert shadowed[0, 0] < shadowed[-1, -1] - 40  # darker under the shadow, in the top-left corner
    inverted = np.asarray(decode(photo(digit, "0", Look(noise=0, paper=30, ink=230), rng=0)), np.float32)
    assert inverted[0, 0] < 40 and inverted.max() > 200  # light ink on dark paper
    colour = decode(photo(digit, "0", Look(ink_colour=(30, 50, 160), paper_colour=(245, 238, 210), kind="jpeg")))
    assert colour.mode == "RGB" and colour.format == "JPEG"
    tiny = decode(photo(digit, "0", Look(low_res=12)))
    assert max(tiny.size) <= 40  # the digit's box 12 px tall, on a canvas to match
    enlarged = decode(photo(digit, "0", Look(low_res=12, upscale=4, upscale_filter="nearest")))
    assert enlarged.size == (4 * tiny.size[0], 4 * tiny.size[1])


def test_ink_on_transparency_carries_the_digit_in_alpha():
    digit = fake_digits()[0][1]
    image = decode(photo(digit, "0", Look(kind="png-rgba", ink_colour=(255, 255, 255), noise=0)))
    rgba = np.asarray(image)
    assert image.mode == "RGBA" and rgba[0, 0, 3] <= 10 and rgba[..., 3].max() >= 250
    assert (rgba[rgba[..., 3] > 128][:, :3] >= 250).all()  # white ink


def test_the_faint_look_keeps_the_ink_close_to_the_paper():
    rng = np.random.default_rng(0)
    for _ in range(20):
        look = LOOKS["faint"][1](rng)
        assert 35 <= look.paper - look.ink <= 80 and 0 <= look.fade <= 0.6
