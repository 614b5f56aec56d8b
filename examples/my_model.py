"""Write your own model: define a network, register it, give it a recipe, train it with mnist_nn.train.

    python examples/my_model.py --data-dir DIR --epochs 1 --out runs/my-cnn

The network is registered in this process only: ``mnist-nn train --model my-cnn`` in another process does
not know it (the command reads the registry in src/mnist_nn/models/networks.py). Its run directory is an
ordinary one, and in this process ``mnist_nn.load_checkpoint`` and ``mnist_nn.predict`` read its model.pt.
docs/write-your-own-model.md walks through this file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

import mnist_nn
from mnist_nn.models.networks import ModelSpec, count_parameters, register_model
from mnist_nn.training.recipes import get_recipe, register_recipe

DIGIT = Path(__file__).resolve().parents[1] / "docs" / "images" / "digit.png"


# 1. The network: any nn.Module that takes [N, 1, 28, 28] normalized pixels and returns [N, 10] logits.
class SmallCNN(nn.Sequential):
    """Two 3x3 conv + batch norm + ReLU blocks, each max-pooled (28 -> 14 -> 7), then one linear layer."""

    def __init__(self, channels: tuple[int, int] | list[int] = (16, 32), num_classes: int = 10) -> None:
        c1, c2 = channels
        super().__init__(
            nn.Conv2d(1, c1, 3, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, num_classes),
        )


# 2. Register it by name. A checkpoint stores (name, kwargs): the defaults must be plain JSON values.
register_model(
    ModelSpec(
        name="my-cnn",
        description="my small CNN: two pooled 3x3 conv+BN+ReLU blocks (16, 32 channels) and a linear layer",
        build=SmallCNN,
        defaults={"channels": [16, 32]},
    )
)

# 3. A recipe for it: cnn-fast's one-cycle Adam and light augmentation, with the new model.
register_recipe(
    get_recipe("cnn-fast").replace(
        name="my-cnn",
        description="my small CNN, trained like cnn-fast",
        model="my-cnn",
        lr=5e-3,
    )
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder with the four MNIST files (default: $MNIST_NN_DATA, the cache)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the training set (default: 2)")
    parser.add_argument("--out", help="run directory to create (default: runs/<timestamp>)")
    args = parser.parse_args()

    # 4. Train it like any recipe: a run directory with model.pt, metrics, plots and summary.json.
    run = mnist_nn.train("my-cnn", data_dir=args.data_dir, out=args.out, epochs=args.epochs, quiet=True)
    parameters = count_parameters(run.model)
    accuracy = run.summary["test_accuracy"]
    print(f"my-cnn ({parameters:,} parameters): test accuracy {100 * accuracy:.2f}%  run directory {run.run_dir}")

    # 5. Use it: its checkpoint loads and reads digits in this process, where "my-cnn" is registered.
    reading = mnist_nn.predict(DIGIT, run.run_dir / "model.pt", device="cpu")
    print(f"{DIGIT.name} reads as {reading.label} (probability {reading.confidence:.3f})")


if __name__ == "__main__":
    main()
