"""`mnist-nn predict` and the Predictor: per-file results and errors, and accuracy on photo-like images."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import mnist_nn
from conftest import run_main
from mnist_nn.core.errors import UserError
from mnist_nn.data.datasets import load_dataset
from mnist_nn.inference.evaluate import zoom_views
from mnist_nn.inference.predictor import Predictor
from mnist_nn.models.bundled import resolve_model
from mnist_nn.models.checkpoint import load_checkpoint
from mnist_nn.testing import synthetic


def digit_png(path, size=(90, 120)):
    image = Image.new("L", size, 225)
    ImageDraw.Draw(image).rectangle((40, 20, 50, 100), fill=20)
    image.save(path)
    return path


def test_pixel_model_applies_the_checkpoints_normalization(random_checkpoint):
    predictor = Predictor.from_checkpoint(random_checkpoint)
    checkpoint = load_checkpoint(random_checkpoint)
    pixels = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    expected = checkpoint.model((pixels.float().unsqueeze(1) / 255 - checkpoint.mean) / checkpoint.std)
    with torch.inference_mode():
        assert torch.allclose(predictor.pixel_model(pixels), expected, atol=1e-5)
        assert torch.allclose(predictor.pixel_model(pixels.float()), expected, atol=1e-5)
    assert predictor.probabilities(pixels.numpy()).sum(1).sub(1).abs().max() < 1e-5


def test_zoom_views_enlarge_and_shrink_the_digit_about_the_centre():
    pixels = torch.zeros(1, 28, 28)
    pixels[0, 9:19, 9:19] = 255.0  # a 10 px square around the centre
    plain, enlarged, shrunk = zoom_views(pixels, 0.1)
    assert torch.equal(plain, pixels)
    rows = torch.arange(28.0)

    def side_and_centre(view):
        profile = view[0].sum(1)  # ink per row
        return float(view[0].sum() / 255 / 10), float((profile * rows).sum() / profile.sum())

    assert side_and_centre(plain) == (10.0, 13.5)
    side, centre = side_and_centre(enlarged)
    assert side == pytest.approx(10 / 0.9 * (10 / 0.9) / 10, rel=0.03) and centre == pytest.approx(13.5, abs=0.01)
    side, centre = side_and_centre(shrunk)
    assert side == pytest.approx(10 / 1.1 * (10 / 1.1) / 10, rel=0.03) and centre == pytest.approx(13.5, abs=0.01)


def test_an_image_is_read_at_the_zooms_its_recipe_trained_on(random_checkpoint, tmp_path):
    """A checkpoint's zoom is its recipe's aug_scale (none for the tutorial's); a reading averages the
    probabilities of the three views, and ``zoom=0`` reads the digit once."""
    assert Predictor.from_checkpoint(random_checkpoint).zoom == 0.0  # no recipe recorded: one reading
    assert Predictor.from_checkpoint(resolve_model("robust")).zoom == 0.1  # robust: aug_scale 0.1
    assert Predictor.from_checkpoint(resolve_model("tutorial")).zoom == 0.0
    predictor = Predictor.from_checkpoint(random_checkpoint, zoom=0.2)
    assert predictor.metadata["zoom"] == 0.2
    path = digit_png(tmp_path / "one.png")
    reading = predictor.read_image(path)
    views = zoom_views(torch.from_numpy(reading.pixels), 0.2)
    mean = sum(predictor.probabilities(view) for view in views) / 3
    assert torch.allclose(reading.probabilities, mean, atol=1e-6)
    assert not torch.allclose(reading.probabilities, predictor.probabilities(reading.pixels), atol=1e-4)
    once = Predictor.from_checkpoint(random_checkpoint, zoom=0).read_image(path)
    assert torch.equal(once.probabilities, predictor.probabilities(reading.pixels))
    with pytest.raises(UserError, match="zoom must be at least 0 and below 1"):
        Predictor.from_checkpoint(random_checkpoint, zoom=1.0)


def test_folder_with_mixed_files_gives_every_file_a_result(random_checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    digit_png(folder / "a.png")
    digit_png(folder / "b.jpg")
    Image.new("L", (40, 40), 255).save(folder / "blank.png")
    (folder / "notes.txt").write_text("a shopping list")
    (folder / "empty.png").write_bytes(b"")
    (folder / ".hidden").write_text("skipped")
    code, out, err = run_main(capsys, "predict", random_checkpoint, folder, tmp_path / "missing.png", "--json")
    assert code == 1
    results = {r["source"].rsplit("/", 1)[-1]: r for r in json.loads(out)}
    assert set(results) == {"a.png", "b.jpg", "blank.png", "notes.txt", "empty.png", "missing.png"}
    assert results["a.png"]["status"] == "ok" and len(results["a.png"]["top"]) == 3
    assert results["a.png"]["label"] == results["a.png"]["top"][0]["label"]
    assert results["blank.png"]["status"] == "no digit found" and results["blank.png"]["label"] is None
    assert "not an image" in results["notes.txt"]["error"]
    assert "empty file (0 bytes)" in results["empty.png"]["error"]
    assert "no such file" in results["missing.png"]["error"]
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("mnist-nn: error: ") for line in lines)
    assert "Traceback" not in err


def test_table_output_and_exit_zero_when_all_read(random_checkpoint, tmp_path, capsys):
    code, out, err = run_main(capsys, "predict", random_checkpoint, digit_png(tmp_path / "one.png"), "--top-k", "2")
    assert code == 0 and err == ""
    header, row = out.strip().splitlines()
    assert header.split()[:3] == ["FILE", "ANSWER", "CONF"]
    assert row.split()[0].endswith("/one.png") and row.count("%") == 3  # confidence + top-2


def test_threshold_makes_the_answer_uncertain(random_checkpoint, tmp_path, capsys):
    path = digit_png(tmp_path / "one.png")
    code, out, _ = run_main(capsys, "predict", random_checkpoint, path, "--threshold", "1.0", "--json")
    (result,) = json.loads(out)
    assert code == 0 and result["status"] == "uncertain" and result["label"] is None
    assert result["top"][0]["probability"] < 1.0  # the best guess is still reported


def test_no_preprocess_takes_mnist_form_and_refuses_other_sizes(random_checkpoint, tmp_path, capsys):
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 13:16] = 255
    Image.fromarray(digit).save(tmp_path / "mnist.png")
    digit_png(tmp_path / "big.png")
    code, out, _err = run_main(
        capsys, "predict", random_checkpoint, tmp_path / "mnist.png", tmp_path / "big.png", "--no-preprocess", "--json"
    )
    ok, bad = json.loads(out)
    assert code == 1 and ok["status"] == "ok"
    predictor = Predictor.from_checkpoint(random_checkpoint)
    assert ok["confidence"] == pytest.approx(float(predictor.probabilities(digit).max()), abs=1e-6)
    assert "image is 90x120; without preprocessing it must be 28x28" in bad["error"]


def test_save_preprocessed_writes_what_the_model_saw(random_checkpoint, tmp_path, capsys):
    out_dir = tmp_path / "seen"
    image = Image.new("L", (200, 100), 230)
    draw = ImageDraw.Draw(image)
    draw.rectangle((30, 20, 40, 80), fill=10)
    draw.ellipse((90, 20, 140, 80), outline=10, width=7)
    image.save(tmp_path / "number.png")
    code, _out, _ = run_main(
        capsys, "predict", random_checkpoint, tmp_path / "number.png", "--multi", "--save-preprocessed", out_dir
    )
    assert code == 0
    saved = sorted(p.name for p in out_dir.iterdir())
    assert saved == ["number-0.png", "number-1.png"]
    first = np.asarray(Image.open(out_dir / "number-0.png"))
    assert first.shape == (28, 28) and first.max() > 200 and first[0, 0] == 0


def test_no_digit_says_why_and_save_preprocessed_writes_the_mask_seen(random_checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("L", (60, 80), 235).save(folder / "blank.png")
    faint = Image.new("L", (120, 120), 220)
    ImageDraw.Draw(faint).line((60, 20, 55, 100), fill=208, width=10)  # 12 grey levels: under the 20 needed
    faint.save(folder / "faint.png")
    dots = Image.new("L", (180, 180), 230)
    for y in range(10, 180, 30):
        for x in range(10, 180, 30):
            ImageDraw.Draw(dots).ellipse((x, y, x + 10, y + 10), fill=20)
    dots.save(folder / "dots.png")
    digit_png(folder / "one.png")
    out = tmp_path / "seen"
    code, table, err = run_main(capsys, "predict", random_checkpoint, folder, "--save-preprocessed", out)
    assert code == 0 and err == ""
    rows = {line.split()[0].rsplit("/", 1)[-1]: line for line in table.strip().splitlines()[1:]}
    for name, reason in (("blank.png", "no ink"), ("faint.png", "too faint"), ("dots.png", "too many blobs")):
        assert "no digit found" in rows[name] and reason in rows[name], rows[name]
    assert sorted(p.name for p in out.iterdir()) == ["blank-mask.png", "dots-mask.png", "faint-mask.png", "one.png"]
    mask = np.asarray(Image.open(out / "dots-mask.png"))
    assert mask.shape == (180, 180) and mask[15, 15] == 255 and mask[0, 0] == 0  # what was seen: every dot
    assert not np.asarray(Image.open(out / "blank-mask.png")).any()
    code, out_json, _ = run_main(capsys, "predict", random_checkpoint, folder / "faint.png", "--json")
    (result,) = json.loads(out_json)
    assert result["status"] == "no digit found" and result["reason"].startswith("too faint: ")
    assert "\n" not in result["reason"] and result["label"] is None


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--multi", "--no-preprocess"], "--multi needs preprocessing"),
        (["--top-k", "0"], "--top-k must be a positive integer"),
        (["--threshold", "1.5"], "--threshold must be a probability between 0 and 1"),
        (["--max-pixels", "0"], "--max-pixels must be a positive integer"),
    ],
)
def test_bad_options_are_one_line(random_checkpoint, tmp_path, capsys, extra, fragment):
    code, out, err = run_main(capsys, "predict", random_checkpoint, digit_png(tmp_path / "a.png"), *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and fragment in err


def test_bad_checkpoint_is_one_line(tmp_path, capsys):
    code, _, err = run_main(capsys, "predict", tmp_path / "nope.pt", digit_png(tmp_path / "a.png"))
    assert code == 2 and err.strip() == f"mnist-nn: error: checkpoint {tmp_path / 'nope.pt'} not found"


def test_huge_image_is_refused_per_file(random_checkpoint, tmp_path, capsys):
    Image.new("L", (1000, 1000), 255).save(tmp_path / "big.png")
    digit_png(tmp_path / "ok.png")
    code, out, _err = run_main(capsys, "predict", random_checkpoint, tmp_path, "--max-pixels", "500000", "--json")
    big, ok = json.loads(out)
    assert code == 1 and "image too large" in big["error"] and ok["status"] == "ok"


# --------------------------------------------------------------------------- real MNIST


@pytest.fixture
def mnist_test(mnist_dir):
    splits = load_dataset("mnist", mnist_dir, allow_download=False)
    return splits.test_images.numpy(), splits.test_labels.numpy()


@pytest.mark.realdata
def test_photo_like_images_score_within_one_point_of_the_same_digits_in_mnist_form(
    trained_checkpoint, mnist_test, tmp_path, capsys
):
    images, labels = mnist_test
    predictor = Predictor.from_checkpoint(trained_checkpoint)
    # The first, milder set: dark ink on light paper, any size and place, noise, JPEG, transparency.
    photos = synthetic.photo_set(images, labels, count=1000, seed=0, looks=("classic",))
    # Against the same 1,000 digits as MNIST gives them: a random thousand of the test set is itself a
    # point or so from the whole set's accuracy for a briefly trained model, which would swamp the comparison.
    sources = np.array([item.source for item in photos])
    plain = float((predictor.probabilities(images[sources]).argmax(1).numpy() == labels[sources]).mean())
    truth = synthetic.write_set(photos, tmp_path / "photos")
    code, out, err = run_main(capsys, "predict", trained_checkpoint, tmp_path / "photos", "--json")
    assert code == 0 and err == ""
    read = {r["source"].rsplit("/", 1)[-1]: r["label"] for r in json.loads(out)}
    assert read.keys() == truth.keys()
    accuracy = sum(read[name] == label for name, label in truth.items()) / len(truth)
    print(f"plain accuracy {plain:.4f}; photo-like accuracy {accuracy:.4f} (the same 1,000 digits)")
    assert accuracy >= plain - 0.01


@pytest.mark.realdata
def test_the_strengthened_photo_set_is_read(trained_checkpoint, mnist_test):
    # Thick markers, fine pens, pencil, uneven light and shadows, off-centre, inverted, low resolution,
    # coloured ink, ink on transparency, heavy JPEG: the preprocessing must hand the model MNIST's digits.
    images, labels = mnist_test
    predictor = Predictor.from_checkpoint(trained_checkpoint)
    plain = float((predictor.probabilities(images).argmax(1).numpy() == labels).mean())
    photos = synthetic.photo_set(images, labels, count=1000, seed=0)
    right = [predictor.predict(item.data).label == item.label for item in photos]
    accuracy = float(np.mean(right))
    worst = min(
        (float(np.mean([r for r, item in zip(right, photos, strict=True) if item.look == look])), look)
        for look in synthetic.LOOKS
    )
    print(f"plain {plain:.4f}; strengthened photo-like {accuracy:.4f}; worst look {worst[1]} {worst[0]:.3f}")
    # No look collapses (before: 47% of shadowed photos read, 64% of phone photos); an MLP is weakest on
    # a marker's bold digits, 84% for the tutorial's after 2 epochs.
    assert accuracy >= plain - 0.03 and worst[0] >= 0.8
    if plain >= 0.995:  # a strong checkpoint (cnn-best): the issue's bar
        assert accuracy >= 0.995


def issue_three(images: np.ndarray, labels: np.ndarray, predictor: Predictor) -> np.ndarray:
    """An MNIST test 3 that reads 3 on evenly lit paper (the issue's control)."""
    for index in np.flatnonzero(labels == 3):
        even = synthetic.photo(images[index], "3", synthetic.Look(size=200, paper=215, ink=30, noise=2))
        if predictor.predict(even.data).label == "3":
            return images[index]
    raise AssertionError("no 3 of the test set reads 3 on plain paper")


@pytest.mark.realdata
def test_a_dark_three_on_unevenly_lit_paper_reads_3(trained_checkpoint, mnist_test, tmp_path, capsys):
    # The issue: a gradient of 35 grey levels across the page, or 60 with noise, gave "no digit found".
    images, labels = mnist_test
    three = issue_three(images, labels, Predictor.from_checkpoint(trained_checkpoint))
    folder = tmp_path / "photos"
    folder.mkdir()
    looks = {
        "even": synthetic.Look(size=200, canvas=(2.2, 1.8), paper=215, ink=30, noise=2, kind="jpeg"),
        "gradient-35": synthetic.Look(size=200, canvas=(2.2, 1.8), paper=215, ink=30, gradient=35, noise=2),
        "gradient-60-noise": synthetic.Look(
            size=200, canvas=(2.2, 1.8), paper=215, ink=30, gradient=60, angle=200, noise=10, kind="jpeg", quality=80
        ),
    }
    for name, look in looks.items():
        item = synthetic.photo(three, "3", look, stem=name)
        (folder / item.name).write_bytes(item.data)
    code, out, err = run_main(
        capsys, "predict", trained_checkpoint, folder, "--json", "--save-preprocessed", tmp_path / "seen"
    )
    assert code == 0 and err == ""
    read = {r["source"].rsplit("/", 1)[-1].split(".")[0]: r for r in json.loads(out)}
    assert {name: r["label"] for name, r in read.items()} == {name: "3" for name in looks}, read
    assert sorted(p.name for p in (tmp_path / "seen").iterdir()) == [f"{name}.png" for name in sorted(looks)]
    # The Python API (and the server) take the same Predictor: the same answers.
    readings = mnist_nn.predict(sorted(folder.iterdir()), trained_checkpoint, device="cpu")
    assert [reading.label for reading in readings] == ["3"] * len(looks)


@pytest.mark.realdata
def test_white_ink_on_a_transparent_png_reads(trained_checkpoint, mnist_test, tmp_path, capsys):
    images, labels = mnist_test
    three = issue_three(images, labels, Predictor.from_checkpoint(trained_checkpoint))
    for colour in ((255, 255, 255), (250, 230, 60)):  # white ink, yellow ink: both vanish on white
        item = synthetic.photo(three, "3", synthetic.Look(size=160, kind="png-rgba", ink_colour=colour, noise=0))
        (tmp_path / "white.png").write_bytes(item.data)
        code, out, _ = run_main(capsys, "predict", trained_checkpoint, tmp_path / "white.png", "--json")
        (result,) = json.loads(out)
        assert code == 0 and result["status"] == "ok" and result["label"] == "3", result


@pytest.mark.realdata
def test_multi_digit_numbers_are_read(trained_checkpoint, mnist_test):
    images, labels = mnist_test
    predictor = Predictor.from_checkpoint(trained_checkpoint)
    plain = float((predictor.probabilities(images).argmax(1).numpy() == labels).mean())
    numbers = synthetic.number_set(images, labels, count=500, seed=1)
    readings = [predictor.predict(item.data, multi=True).label or "" for item in numbers]
    exact = np.mean([r == item.label for r, item in zip(readings, numbers, strict=True)])
    counted = np.mean([len(r) == len(item.label) for r, item in zip(readings, numbers, strict=True)])
    # With per-digit accuracy p, an n-digit number is read exactly with probability p**n at best.
    ceiling = np.mean([plain ** len(item.label) for item in numbers])
    print(f"multi-digit: exact {exact:.3f}, digit count right {counted:.3f}, ceiling from plain accuracy {ceiling:.3f}")
    assert counted >= 0.98
    assert exact >= ceiling - 0.04
    if plain >= 0.99:  # a strong checkpoint (a CNN): the issue's bar
        assert exact >= 0.95


@pytest.mark.realdata
def test_mnist_pngs_without_preprocessing_match_the_tensors(trained_checkpoint, mnist_test):
    images, _ = mnist_test
    predictor = Predictor.from_checkpoint(trained_checkpoint)
    for index in range(20):
        buffer = io.BytesIO()
        Image.fromarray(images[index]).save(buffer, format="PNG")
        result = predictor.predict(buffer.getvalue(), preprocess=False)
        expected = predictor.probabilities(images[index : index + 1])[0]
        assert result.label == str(int(expected.argmax()))
        assert result.confidence == pytest.approx(float(expected.max()), abs=1e-6)
