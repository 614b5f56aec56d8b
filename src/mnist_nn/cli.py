"""The ``mnist-nn`` command: parses arguments, calls the library, maps errors to exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .device import DEVICE_CHOICES
from .errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the four IDX files, .gz or raw (default: $MNIST_NN_DATA, then the cache)",
    )


def build_parser() -> Parser:
    parser = Parser(prog="mnist-nn", description="Train, evaluate and use handwritten-digit classifiers.")
    parser.add_argument("--version", action="version", version=f"mnist-nn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    train = commands.add_parser("train", help="train a recipe and write a run directory")
    train.add_argument("--recipe", default="tutorial", help="named recipe (default: tutorial; see `mnist-nn recipes`)")
    train.add_argument("--model", help="model name, overriding the recipe's (see `mnist-nn models`)")
    train.add_argument("--dataset", help="dataset name: mnist or fashion-mnist (default: the recipe's)")
    _add_data_arguments(train)
    train.add_argument("--out", metavar="DIR", help="run directory to create (default: runs/<timestamp>)")
    train.add_argument("--epochs", type=int, help="number of passes over the training set")
    train.add_argument("--lr", type=float, help="learning rate")
    train.add_argument("--batch-size", type=int, help="training batch size")
    train.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=None, help="shuffle every epoch")
    train.add_argument("--seed", type=int, help="random seed for weights, order and validation split")
    train.add_argument("--val-size", type=int, help="images held out of training for validation")
    train.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to train (default: auto)")
    train.add_argument("--quiet", action="store_true", help="print only the final result")
    train.add_argument("--show", action="store_true", help="also open the plots in a window")

    evaluate = commands.add_parser("evaluate", help="score a checkpoint on the test set")
    evaluate.add_argument("checkpoint", help="a model.pt written by `mnist-nn train`")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    evaluate.add_argument("--out", metavar="DIR", help="where to write the PNGs (default: beside the checkpoint)")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")

    data = commands.add_parser("data", help="show where the data is and verify it")
    data.add_argument("--dataset", default="mnist", help="dataset name (default: mnist)")
    _add_data_arguments(data)
    data.add_argument("--download", action="store_true", help="download into the cache if it is not found")

    commands.add_parser("models", help="list the models")
    commands.add_parser("recipes", help="list the training recipes")
    return parser


def _train(args: argparse.Namespace) -> int:
    from .trainer import train

    train(
        args.recipe,
        data_dir=args.data_dir,
        out=args.out,
        device=args.device,
        quiet=args.quiet,
        show=args.show,
        model=args.model,
        dataset=args.dataset,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        shuffle=args.shuffle,
        seed=args.seed,
        val_size=args.val_size,
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_checkpoint, format_report

    report = evaluate_checkpoint(args.checkpoint, data_dir=args.data_dir, device=args.device, out=args.out)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _data(args: argparse.Namespace) -> int:
    from .data import cache_dir, get_dataset_spec, load_dataset, locate

    spec = get_dataset_spec(args.dataset)
    if not args.download and locate(spec, args.data_dir) is None:
        raise UserError(
            f"no {spec.name} data found (searched $MNIST_NN_DATA and {cache_dir()}); "
            "run `mnist-nn data --download` or pass --data-dir DIR"
        )
    splits = load_dataset(spec.name, args.data_dir)
    print(f"{spec.title} found in {splits.folder} (by {splits.source})")
    for split, labels in (("train", splits.train_labels), ("test", splits.test_labels)):
        counts = labels.bincount(minlength=len(spec.classes)).tolist()
        print(f"  {split}: {len(labels):,} images; per class: {' '.join(map(str, counts))}")
    verified = "content MD5 verified" if spec.md5 else "headers verified (no MD5 known for this dataset)"
    print(f"  all four files: IDX headers verified, {verified}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import MODELS, build_model, count_parameters

    for name, spec in MODELS.items():
        print(f"{name:<16} {count_parameters(build_model(name)):>10,}  {spec.description}")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from .recipes import RECIPES

    for name, recipe in RECIPES.items():
        print(f"{name:<12} {recipe.description}")
    return 0


HANDLERS = {"train": _train, "evaluate": _evaluate, "data": _data, "models": _models, "recipes": _recipes}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return HANDLERS[args.command](args)
    except UserError as exc:
        print(f"mnist-nn: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mnist-nn: interrupted", file=sys.stderr)
        return 130
