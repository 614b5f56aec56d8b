"""Write notebooks/tutorial.ipynb from the cells below (no outputs are stored).

    python notebooks/make_notebook.py          # rewrite the notebook
    python notebooks/make_notebook.py --check  # exit 1 if the notebook differs from these cells

Edit the cells here, not in Jupyter, so the notebook stays reviewable text; tests/test_notebook.py
checks the two agree and runs the notebook top to bottom.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).resolve().with_name("tutorial.ipynb")

CELLS: list[tuple[str, str]] = [
    (
        "md",
        """# Handwritten digits with PyTorch: the tutorial, step by step

This notebook follows the classic MNIST tutorial with the `mnist_nn` package:

1. load the data and look at some digits,
2. build the tutorial's network and see what one forward pass, one backward pass and one optimizer step do,
3. train it (the tutorial recipe: Adam, learning rate 0.0045, batch 64, 25 epochs),
4. plot the loss and look at its predictions,
5. evaluate it: accuracy per class and the confusion matrix,
6. read digits with it from Python: `mnist_nn.predict`,
7. try a small convolutional network,
8. the learning lab: compare runs, find a learning rate, look inside the network, ask it why.

Every step calls the same code as the `mnist-nn` command; the README explains each concept
([English](../README.md), [中文](../README_Chinese.md)).

**Data.** Set `MNIST_NN_DATA` to a folder with the four MNIST IDX files to work offline; otherwise
the files are found in (or downloaded into) the per-user cache.
**Runs** go to `runs/` at the repository's root, as in the README's quick tour (also when Jupyter
was started inside `notebooks/`).
**A quick try.** `MNIST_NN_MAX_EPOCHS=1` caps every recipe at one epoch (the tests run this notebook that way).""",
    ),
    (
        "code",
        """import os
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Image, display

import mnist_nn
from mnist_nn.data.datasets import load_dataset, normalize
from mnist_nn.inference.evaluate import evaluate_checkpoint
from mnist_nn.models.networks import build_model, count_parameters
from mnist_nn.models.scoring import evaluate

DATA_DIR = os.environ.get("MNIST_NN_DATA")  # None: look in the cache, download if missing
# The repository's root when Jupyter runs here in notebooks/, so runs land where the README says.
HERE = Path.cwd()
ROOT = HERE.parent if HERE.name == "notebooks" and (HERE.parent / "pyproject.toml").is_file() else HERE
RUNS = ROOT / "runs"
print("mnist_nn", mnist_nn.__version__, "| torch", torch.__version__)
print("epoch cap (MNIST_NN_MAX_EPOCHS):", os.environ.get("MNIST_NN_MAX_EPOCHS") or "none")""",
    ),
    ("md", "## 1. The data\n\n60,000 training and 10,000 test images of 28x28 pixels, each a digit 0-9."),
    (
        "code",
        """splits = load_dataset("mnist", DATA_DIR)
print("found in", splits.folder)
print("train:", tuple(splits.train_images.shape), splits.train_images.dtype)
print("test: ", tuple(splits.test_images.shape))
print("images per class (train):", splits.train_labels.bincount().tolist())""",
    ),
    (
        "code",
        """figure, axes = plt.subplots(2, 5, figsize=(8, 3.6))
for ax, image, label in zip(axes.flat, splits.train_images[:10], splits.train_labels[:10], strict=True):
    ax.imshow(image, cmap="gray")
    ax.set_title(f"label {label.item()}")
    ax.axis("off")
plt.show()""",
    ),
    (
        "md",
        """Each pixel is a number from 0 (black) to 255 (white). The tutorial scales them to [0, 1]
(`ToTensor`); `normalize` does that once for the whole set and adds the channel axis: [N, 1, 28, 28].""",
    ),
    (
        "code",
        """x = normalize(splits.train_images[:64], 0.0, 1.0, "cpu")
y = splits.train_labels[:64]
print(tuple(x.shape), "min", x.min().item(), "max", x.max().item())""",
    ),
    (
        "md",
        """## 2. The network, and one training step by hand

The tutorial's network: **flatten** the 28x28 image into 784 numbers, then **Linear** layers
784 → 128 → 256 → 128 → 64 → 10 with a **ReLU** between them. The 10 outputs are *logits*, one score per digit.""",
    ),
    (
        "code",
        """torch.manual_seed(0)
model = build_model("tutorial-mlp")
print(model)
print(f"{count_parameters(model):,} parameters")""",
    ),
    (
        "md",
        """One step of training on one batch of 64 images:

- **forward**: the model turns the batch into logits; **cross-entropy** measures how wrong they are;
- **backward**: `loss.backward()` computes the gradient of the loss for every weight;
- **step**: `optimizer.step()` (here **Adam**) moves every weight a little against its gradient.

`mnist_nn.train` runs exactly this loop over all batches, epoch after epoch (`src/mnist_nn/training/trainer.py`).""",
    ),
    (
        "code",
        """loss_fn = torch.nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=0.0045)
for step in range(5):
    logits = model(x)  # forward
    loss = loss_fn(logits, y)
    optimizer.zero_grad()
    loss.backward()  # backward
    optimizer.step()  # step
    print(f"step {step}: loss {loss.item():.4f}")""",
    ),
    (
        "md",
        """The loss falls on this one batch: the model is learning it. On all 60,000 images, one pass is
one **epoch** of 938 batches of 64.

## 3. Train the tutorial recipe

The same network, trained by the package: Adam, learning rate 0.0045, batch 64, 25 epochs, no shuffling.
It writes a run directory with the model, the metrics and the plots.""",
    ),
    (
        "code",
        """run = mnist_nn.train("tutorial", data_dir=DATA_DIR, out=RUNS / "tutorial", quiet=True)
print(f"test accuracy {run.summary['test_accuracy']:.2%} after {run.summary['epochs']} epoch(s)")
print(sorted(p.name for p in run.run_dir.iterdir()))""",
    ),
    ("md", "## 4. Plot the loss and look at predictions"),
    (
        "code",
        """epochs = [row["epoch"] for row in run.history]
plt.plot(epochs, [row["train_loss"] for row in run.history], marker="o", label="train loss")
plt.plot(epochs, [row["eval_loss"] for row in run.history], marker="s", label="test loss")
plt.xlabel("epoch")
plt.ylabel("cross-entropy loss")
plt.legend()
plt.show()""",
    ),
    ("code", 'display(Image(filename=str(run.run_dir / "predictions.png")))'),
    (
        "md",
        """## 5. Evaluate

For evaluation the model goes into **eval mode** (`model.eval()`: dropout off, batch norm uses its
running statistics) and runs under `torch.inference_mode()` (no gradients are tracked: faster, less memory).""",
    ),
    (
        "code",
        """checkpoint = mnist_nn.load_checkpoint(run.run_dir / "model.pt")
test_x = normalize(splits.test_images, checkpoint.mean, checkpoint.std, "cpu")
result = evaluate(checkpoint.model, test_x, splits.test_labels)
print(f"accuracy {result.accuracy:.2%}, loss {result.loss:.4f}")
for digit, accuracy in enumerate(result.per_class_accuracy()):
    print(f"  {digit}: {accuracy:.2%}")""",
    ),
    (
        "code",
        """report = evaluate_checkpoint(run.run_dir / "model.pt", data_dir=DATA_DIR)
display(Image(filename=report["files"]["confusion"]))""",
    ),
    (
        "md",
        """Rows are the true digits, columns the predicted ones: everything off the diagonal is a mistake.

## 6. Read digits from Python

`mnist_nn.predict(images, checkpoint)` takes image files, PIL images or numpy arrays of gray levels
0-255, one or a list. A photo or scan (dark ink on paper, any size) is cropped to its ink and centred
in 28x28, as MNIST's digits are; the model's normalization is applied inside. Each answer has a
`label` and the `probabilities` of every class.""",
    ),
    (
        "code",
        """import PIL.Image

digit, truth = splits.test_images[0].numpy(), splits.test_labels[0].item()
scan = RUNS / "my-digit.png"  # a test digit made to look like a scan: dark ink on white, 140x140
PIL.Image.fromarray(255 - digit).resize((140, 140)).save(scan)
reading = mnist_nn.predict(scan, run.run_dir / "model.pt")
print(f"predicted {reading.label} (true {truth}) with probability {reading.confidence:.3f}")
print({label: round(p, 3) for label, p in reading.probabilities.items()})

# Arrays already in MNIST form (28x28, light on dark) skip the preprocessing: a batch of 8.
readings = mnist_nn.predict(splits.test_images[:8].numpy(), run.run_dir / "model.pt", preprocess=False)
print("first 8 test digits:", [r.label for r in readings], "true:", splits.test_labels[:8].tolist())""",
    ),
    (
        "md",
        """## 7. Try a CNN

A convolutional network looks at neighbouring pixels together instead of a flat list of 784 numbers.
The `cnn-fast` recipe (2 epochs) reaches about 99%; it holds 5,000 training images out for
**validation** and keeps the epoch that scores best there, so the **test** set only measures.""",
    ),
    (
        "code",
        """cnn = mnist_nn.train("cnn-fast", data_dir=DATA_DIR, out=RUNS / "cnn-fast", quiet=True)
print(f"tutorial MLP: {run.summary['test_accuracy']:.2%} with {run.summary['parameters']:,} parameters")
print(f"cnn-fast:     {cnn.summary['test_accuracy']:.2%} with {cnn.summary['parameters']:,} parameters")""",
    ),
    (
        "md",
        """## 8. The learning lab

The same tools as the `mnist-nn` commands of the README's Learning lab, from Python:
**compare** two runs, find a **learning rate** with the range test, look **inside** the network,
and ask it **why** it gave an answer (they need `pip install "mnist-nn[lab]"`; `mnist-nn watch`
shows a run live in the browser).""",
    ),
    (
        "code",
        """from mnist_nn.lab.compare import compare_runs, format_table

comparison = compare_runs([run.run_dir, cnn.run_dir], out=RUNS / "compare.png")
print(format_table(comparison))
display(Image(filename=comparison["figure"]))""",
    ),
    (
        "code",
        """from mnist_nn.lab.lr_find import lr_find

# The loss against an exponentially growing learning rate, on training images only.
sweep = lr_find("tutorial", steps=100, data_dir=DATA_DIR, out=RUNS / "lr-find.png")
print(f"suggested learning rate: {sweep.suggestion:.2g}")
display(Image(filename=str(RUNS / "lr-find.png")))""",
    ),
    (
        "code",
        """from mnist_nn.lab.inspection import inspect_checkpoint

# The first layer's 128 units as 28x28 pictures, one digit's activations, a 2-D map of features.
inside = inspect_checkpoint(run.run_dir / "model.pt", out=RUNS / "inspection", data_dir=DATA_DIR, feature_digits=500)
display(Image(filename=str(RUNS / "inspection" / "weights.png")))
display(Image(filename=str(RUNS / "inspection" / "features.png")))""",
    ),
    (
        "code",
        """from mnist_nn.inference.predictor import Predictor
from mnist_nn.lab.explain import save_explanations

# Why this answer? The image the model saw beside each pixel's part in it (integrated gradients).
predictor = Predictor.from_checkpoint(run.run_dir / "model.pt")
why = save_explanations(predictor, predictor.read_image(scan), RUNS / "why.png")
display(Image(filename=str(why[0])))""",
    ),
    (
        "md",
        """## Next

- `mnist-nn recipes` and `mnist-nn models` list what else there is; `mnist-nn train --help` every option.
- `mnist-nn predict runs/tutorial/model.pt my-digit.png` reads your own handwriting.""",
    ),
]


def build() -> nbformat.NotebookNode:
    cells = [new_markdown_cell(source) if kind == "md" else new_code_cell(source) for kind, source in CELLS]
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    # Stable cell ids keep the file identical from run to run of this script.
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"
    return notebook


def render() -> str:
    return nbformat.writes(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if tutorial.ipynb differs from these cells")
    args = parser.parse_args(argv)
    text = render()
    current = NOTEBOOK.read_text(encoding="utf-8") if NOTEBOOK.exists() else None
    if args.check:
        if current != text:
            print(f"out of date: {NOTEBOOK} (run notebooks/make_notebook.py)")
            return 1
        print("up to date")
        return 0
    NOTEBOOK.write_text(text, encoding="utf-8")
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
