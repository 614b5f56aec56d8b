"""mnist_nn.predict: images in (paths, bytes, PIL images, arrays), labels and probabilities out."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import mnist_nn
from conftest import REPO
from mnist_nn.core.errors import UserError
from mnist_nn.inference.predictor import Predictor

DIGIT = REPO / "docs" / "images" / "digit.png"


def test_predict_reads_the_readme_example(random_checkpoint):
    reading = mnist_nn.predict(str(DIGIT), random_checkpoint)
    assert reading.source == str(DIGIT)
    assert reading.label in [str(d) for d in range(10)]
    assert list(reading.probabilities) == [str(d) for d in range(10)]
    assert sum(reading.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert reading.confidence == max(reading.probabilities.values())


def test_every_kind_of_image_gives_the_same_answer(random_checkpoint):
    expected = mnist_nn.predict(DIGIT, random_checkpoint)
    image = Image.open(DIGIT)
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    for source in (DIGIT.read_bytes(), image, gray):
        reading = mnist_nn.predict(source, random_checkpoint)
        assert reading.label == expected.label
        assert reading.probabilities == pytest.approx(expected.probabilities, abs=1e-4)


def test_a_list_or_a_stack_gives_a_list(random_checkpoint):
    readings = mnist_nn.predict([DIGIT, str(DIGIT)], random_checkpoint)
    assert [r.label for r in readings] == [readings[0].label] * 2
    stack = np.zeros((3, 28, 28), dtype=np.uint8)
    stack[:, 6:22, 13:15] = 255  # three light bars on black, already MNIST form
    readings = mnist_nn.predict(stack, random_checkpoint, preprocess=False)
    assert len(readings) == 3 and len({r.label for r in readings}) == 1


def test_a_loaded_checkpoint_or_a_predictor_works_too(random_checkpoint):
    expected = mnist_nn.predict(DIGIT, random_checkpoint, device="cpu")
    for given in (mnist_nn.load_checkpoint(random_checkpoint), Predictor.from_checkpoint(random_checkpoint)):
        assert mnist_nn.predict(DIGIT, given).probabilities == pytest.approx(expected.probabilities)


def test_a_blank_image_has_no_label(random_checkpoint):
    reading = mnist_nn.predict(np.zeros((40, 40), dtype=np.uint8), random_checkpoint)
    assert reading.label is None and reading.probabilities == {} and reading.confidence is None


def test_an_unreadable_image_is_a_user_error(random_checkpoint, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(UserError, match=r"notes\.png"):
        mnist_nn.predict(text, random_checkpoint)
    with pytest.raises(UserError, match=r"expected a model\.pt path"):
        mnist_nn.predict(DIGIT, 42)


@pytest.mark.parametrize(
    "first",
    [
        "import mnist_nn",
        "from mnist_nn.inference.predictor import Predictor",
        "import mnist_nn.inference.predictor",
        "import mnist_nn.api",
        "from mnist_nn import predict",
    ],
)
def test_mnist_nn_predict_is_a_plain_function_whatever_was_imported_first(first, random_checkpoint):
    # The Predictor's module is mnist_nn.inference.predictor: no module of the package is named predict.
    code = (
        f"{first}\nimport inspect, mnist_nn\nimport mnist_nn.inference.predictor\n"
        "print(inspect.isfunction(mnist_nn.predict))\n"
        f"print(mnist_nn.predict({str(DIGIT)!r}, {str(random_checkpoint)!r}).label is not None)\n"
        "print(mnist_nn.Predictor is mnist_nn.inference.predictor.Predictor)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.split() == ["True", "True", "True"], done.stderr[-2000:]


def test_importing_the_package_does_not_load_torch_and_training_flushes_denormals():
    code = (
        "import sys\nimport mnist_nn\nprint('torch' in sys.modules)\n"
        "mnist_nn.train  # a public name: loads torch, flushing denormals to zero\n"
        "import torch\nprint(torch.tensor([1e-40]).item() == 0.0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.split() == ["False", "True"], done.stderr[-2000:]
