"""Why this answer: attribution maps (explain.py), `mnist-nn predict --explain`, and the most confused pairs.

The maps are tested for meaning as well as form: on real test digits, blanking the pixels they rank
highest must hurt the model's answer more than blanking random pixels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from conftest import run_main
from mnist_nn.inference.evaluate import format_report, most_confused
from mnist_nn.inference.predictor import Predictor
from mnist_nn.lab.explain import attributions, normalized, save_explanations

pytest.importorskip("captum")

MEAN, STD = 0.1307, 0.3081


def linear_predictor() -> tuple[Predictor, torch.Tensor]:
    """A linear model whose class k weighs the pixels of row k+4 by +1 and every other pixel by a little."""
    torch.manual_seed(0)
    layer = nn.Linear(28 * 28, 10)
    weight = torch.full((10, 28, 28), 0.01) + 0.002 * torch.randn(10, 28, 28)
    for k in range(10):
        weight[k, k + 4] = 1.0
    with torch.no_grad():
        layer.weight.copy_(weight.reshape(10, -1))
        layer.bias.zero_()
    model = nn.Sequential(nn.Flatten(), layer).eval()
    return Predictor(model, MEAN, STD, [str(d) for d in range(10)], {"model": "linear"}), weight


def bar_digits(rows: list[int]) -> np.ndarray:
    """Images with a bright bar (200) in the given rows, columns 4-23, a faint scratch elsewhere."""
    pixels = np.zeros((len(rows), 28, 28), dtype=np.float32)
    for i, row in enumerate(rows):
        pixels[i, row, 4:24] = 200
        pixels[i, 20, 2:6] = 30
    return pixels


# --------------------------------------------------------------------------- the maps


def test_integrated_gradients_of_a_linear_model_is_input_times_weight():
    """For a linear model the exact attribution is known: (pixel - black) x the weight it passes through."""
    predictor, weight = linear_predictor()
    pixels = bar_digits([6, 9, 13])
    maps = attributions(predictor, pixels)
    assert maps.shape == (3, 28, 28) and maps.dtype == np.float32
    predicted = [2, 5, 9]  # row k + 4 is class k
    expected = pixels * weight[predicted].numpy() / (255 * STD)
    assert np.allclose(maps, expected, rtol=1e-4, atol=1e-6)
    # Completeness: the shares add up to the logit's change from the black image.
    with torch.no_grad():
        logits = predictor.pixel_model(torch.as_tensor(pixels)) - predictor.pixel_model(torch.zeros(3, 28, 28))
    assert np.allclose(maps.sum((1, 2)), logits[range(3), predicted].numpy(), rtol=1e-4)
    assert (maps[pixels == 0] == 0).all()  # the background gives nothing to share
    # Another class on request; one image as a 2-D array; none at all.
    other = attributions(predictor, pixels[0], targets=[7])
    assert np.allclose(other[0], pixels[0] * weight[7].numpy() / (255 * STD), rtol=1e-4, atol=1e-6)
    assert attributions(predictor, np.zeros((0, 28, 28))).shape == (0, 28, 28)
    with pytest.raises(ValueError, match=r"\[N, 28, 28\]"):
        attributions(predictor, np.zeros((2, 27, 28)))


def test_top_pixels_of_a_toy_models_map_matter_more_than_random_ones():
    predictor, _ = linear_predictor()
    pixels = bar_digits([4 + k % 10 for k in range(40)])
    drops = deletion_drops(predictor, pixels, fraction=0.05, seed=0)
    assert drops["attribution"] > 0.5 > 0.05 > drops["random"]


def test_normalized_maps_span_minus_one_to_one_keeping_signs():
    maps = np.stack([np.full((28, 28), 0.5), np.zeros((28, 28)), np.full((28, 28), np.nan)]).astype(np.float32)
    maps[0, 3, 3] = -2.0
    out = normalized(maps)
    assert out[0, 3, 3] == -1.0 and out[0, 0, 0] == 0.25  # divided by the largest magnitude, 2
    assert (out[1] == 0).all() and (out[2] == 0).all()  # a flat or broken map is no map, not NaN


def test_explanation_png_shows_the_seen_digit_beside_the_map(tmp_path):
    predictor, _ = linear_predictor()
    reading = predictor.read_image(bar_digits([8])[0], preprocess=False)
    written = save_explanations(predictor, reading, tmp_path / "bar")
    assert [p.name for p in written] == ["bar.png"]
    image = Image.open(written[0])
    assert image.width > 1.5 * image.height  # two panels side by side
    colours = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    red = ((colours[:, 0] > 90) & (colours[:, 0] - colours[:, 2] > 50)).sum()
    assert red > 100  # the bar that made the answer is drawn in the "towards" colour
    blank = predictor.read_image(np.zeros((28, 28), dtype=np.float32), preprocess=False)
    assert save_explanations(predictor, blank, tmp_path / "blank") == [] and not (tmp_path / "blank.png").exists()


# --------------------------------------------------------------------------- the test of meaning


def deletion_drops(predictor: Predictor, pixels: np.ndarray, fraction: float = 0.1, seed: int = 0) -> dict:
    """Mean fall in the probability of the model's answer when a fraction of each image's pixels is set to 0.

    Which pixels: the ones the map ranks highest ("attribution"), random ones ("random"), or random
    pixels of the ink ("random ink": the stronger baseline, as blanking background changes nothing).
    """
    images = torch.as_tensor(pixels, dtype=torch.float32)
    count, size = len(images), images[0].numel()
    k = round(fraction * size)
    before = predictor.probabilities(images)
    answer = before.argmax(1)
    rows = torch.arange(count)
    maps = torch.as_tensor(attributions(predictor, images, targets=answer)).reshape(count, -1)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(count, size, generator=generator)
    ink = images.reshape(count, -1) > 0
    rankings = {"attribution": maps, "random": noise, "random ink": noise + 2 * ink}
    drops = {}
    for name, ranking in rankings.items():
        deleted = images.reshape(count, -1).clone()
        deleted.scatter_(1, ranking.topk(k, dim=1).indices, 0.0)
        after = predictor.probabilities(deleted.reshape(images.shape))
        drops[name] = float((before[rows, answer] - after[rows, answer]).mean())
    return drops


@pytest.mark.realdata
def test_blanking_the_top_attributed_tenth_hurts_the_answer_more_than_random_pixels(trained_checkpoint, mnist_dir):
    from mnist_nn.data.datasets import load_dataset

    splits = load_dataset("mnist", mnist_dir, allow_download=False)
    predictor = Predictor.from_checkpoint(trained_checkpoint)
    drops = deletion_drops(predictor, splits.test_images[:200].numpy(), fraction=0.1, seed=0)
    print(
        "mean drop in the answer's probability, 200 test digits, 10% of pixels set to 0: "
        + ", ".join(f"{name} {value:.3f}" for name, value in drops.items())
    )
    assert drops["attribution"] > drops["random"]
    # Also against random pixels of the ink itself, and by a wide margin: the map knows which strokes count.
    assert drops["attribution"] > drops["random ink"] + 0.2


# --------------------------------------------------------------------------- mnist-nn predict --explain


def digit_png(path, box=(40, 20, 50, 100), size=(90, 120)):
    image = Image.new("L", size, 225)
    ImageDraw.Draw(image).rectangle(box, fill=20)
    image.save(path)
    return path


def test_predict_explain_writes_a_png_per_image_and_per_digit(random_checkpoint, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    digit_png(images / "one.png")
    number = Image.new("L", (200, 100), 230)
    ImageDraw.Draw(number).rectangle((30, 20, 40, 80), fill=10)
    ImageDraw.Draw(number).ellipse((90, 20, 140, 80), outline=10, width=7)
    number.save(images / "ten.v2.png")
    Image.new("L", (40, 40), 255).save(images / "blank.png")
    out = tmp_path / "why"
    code, _out, err = run_main(capsys, "predict", random_checkpoint, images, "--multi", "--explain", out)
    assert code == 0, err
    # Named after each file (a dotted stem keeps its dot); a blank image has no digit and no picture.
    assert sorted(p.name for p in out.iterdir()) == ["one.png", "ten.v2-0.png", "ten.v2-1.png"]
    assert all(Image.open(p).width > 300 for p in out.iterdir())


def test_predict_explain_skips_an_unreadable_file_with_its_error_row(random_checkpoint, tmp_path, capsys):
    digit_png(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    out = tmp_path / "why"
    code, table, err = run_main(
        capsys, "predict", random_checkpoint, tmp_path / "ok.png", tmp_path / "broken.png", "--explain", out
    )
    assert code == 1
    ok, broken = table.splitlines()[1:]
    assert ok.split()[0].endswith("ok.png") and ok.split()[1].isdigit()
    assert broken.split()[0].endswith("broken.png") and broken.split()[1] == "error"
    assert err.count("\n") == 1 and err.startswith(f"mnist-nn: error: {tmp_path / 'broken.png'}: ")
    assert [p.name for p in out.iterdir()] == ["ok.png"]  # nothing for the file that could not be read


@pytest.mark.parametrize(
    ("target", "extra", "fragment"),
    [
        ("file.txt/why", [], "cannot write to output folder"),
        ("why", ["--save-preprocessed", "{tmp}/why"], "give them two folders"),
    ],
)
def test_predict_explain_folder_problems_are_one_line_exit_2(
    random_checkpoint, tmp_path, capsys, target, extra, fragment
):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    digit = digit_png(tmp_path / "a.png")
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    code, out, err = run_main(capsys, "predict", random_checkpoint, digit, "--explain", tmp_path / target, *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and fragment in err


def test_predict_explain_without_captum_says_how_to_install_it(random_checkpoint, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "captum" else real(name, *a))
    code, out, err = run_main(
        capsys, "predict", random_checkpoint, digit_png(tmp_path / "a.png"), "--explain", tmp_path / "why"
    )
    assert code == 2 and out == "" and not (tmp_path / "why").exists()
    assert err.strip() == 'mnist-nn: error: explanations need Captum: pip install "mnist-nn[lab]"'


# --------------------------------------------------------------------------- the most confused pairs


def test_most_confused_lists_the_largest_off_diagonal_cells():
    classes = ["0", "1", "2"]
    matrix = [[50, 3, 7], [0, 60, 3], [9, 1, 40]]
    assert most_confused(matrix, classes) == [
        {"true": "2", "predicted": "0", "count": 9},
        {"true": "0", "predicted": "2", "count": 7},
        {"true": "0", "predicted": "1", "count": 3},  # a tie keeps class order
        {"true": "1", "predicted": "2", "count": 3},
        {"true": "2", "predicted": "1", "count": 1},
    ]
    assert most_confused(matrix, classes, top=2, min_count=8) == [{"true": "2", "predicted": "0", "count": 9}]
    assert most_confused([[5, 0], [0, 5]], ["a", "b"]) == []  # no mistakes, no pairs


def test_the_report_prints_the_most_confused_pairs():
    report = {
        "model": "m",
        "dataset": "mnist",
        "test_size": 20,
        "test_accuracy": 0.7,
        "test_loss": 0.5,
        "errors": 6,
        "per_class_accuracy": {"0": 0.8, "1": 0.6},
        "confusion_matrix": [[8, 2], [4, 6]],
        "classes": ["0", "1"],
        "most_confused": most_confused([[8, 2], [4, 6]], ["0", "1"]),
        "files": {"confusion": "c.png", "mistakes": "m.png"},
    }
    text = format_report(report)
    section = text.split("most confused (true -> predicted: images):\n")[1].split("\n\n")[0].splitlines()
    assert [line.split() for line in section] == [["1", "->", "0", "4"], ["0", "->", "1", "2"]]
    json.dumps(report)  # the JSON report holds it as plain lists and strings


@pytest.mark.realdata
def test_evaluate_json_lists_the_most_confused_pairs(trained_checkpoint, mnist_dir, tmp_path, capsys):
    code, out, _ = run_main(
        capsys, "evaluate", trained_checkpoint, "--data-dir", mnist_dir, "--out", tmp_path, "--json"
    )
    assert code == 0
    report = json.loads(out)
    matrix = np.array(report["confusion_matrix"])
    pairs = report["most_confused"]
    assert 1 <= len(pairs) <= 10
    counts = [p["count"] for p in pairs]
    assert counts == sorted(counts, reverse=True)
    off_diagonal = matrix - np.diag(np.diag(matrix))
    assert counts[0] == off_diagonal.max()
    for pair in pairs:
        assert matrix[int(pair["true"]), int(pair["predicted"])] == pair["count"] and pair["true"] != pair["predicted"]
    assert json.loads((tmp_path / "evaluation.json").read_text())["most_confused"] == pairs
