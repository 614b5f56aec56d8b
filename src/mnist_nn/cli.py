"""The ``mnist-nn`` command: parses arguments, calls the library, maps errors to exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from .device import DEVICE_CHOICES
from .errors import UserError
from .version import __version__


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


RECIPE_HELP = {
    "model": "model name, overriding the recipe's (see `mnist-nn models`)",
    "dataset": "dataset name: mnist or fashion-mnist",
    "model_kwargs": "model arguments as JSON, e.g. '{\"hidden\": [512, 512]}'",
    "epochs": "number of passes over the training set",
    "batch_size": "training batch size",
    "optimizer": "adam, adamw or sgd",
    "lr": "learning rate (the peak, with a schedule)",
    "schedule": "learning-rate schedule: constant, step, cosine or onecycle",
    "warmup_epochs": "linear learning-rate warm-up, in epochs (may be fractional)",
    "label_smoothing": "label smoothing of the cross-entropy loss, 0 to <1",
    "grad_clip": "clip the gradient norm to this value (0: off)",
    "ema_decay": "evaluate and save an exponential moving average of the weights (e.g. 0.999; 0: off)",
    "shuffle": "shuffle the training set every epoch",
    "seed": "random seed for weights, order, augmentation and validation split",
    "val_size": "training images held out for validation (selects the best epoch)",
    "patience": "stop after this many epochs without a better validation accuracy (0: off)",
    "normalization": "unit ([0, 1]) or standard ((x - mean) / std)",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum for SGD",
    "weight_decay": "weight decay (decoupled for adamw)",
    "step_epochs": "for the step schedule: multiply the lr by --gamma every this many epochs",
    "gamma": "for the step schedule: the factor",
    "aug_rotate": "augmentation: random rotation up to this many degrees",
    "aug_shift": "augmentation: random shift up to this many pixels",
    "aug_scale": "augmentation: random zoom by up to this fraction (0.1: 90%%-110%%)",
    "aug_shear": "augmentation: random shear up to this many degrees",
    "aug_elastic": "augmentation: elastic distortion of up to this many pixels (0: off)",
    "aug_elastic_sigma": "augmentation: smoothness of the elastic distortion, pixels",
    "channels_last": "channels-last memory format (faster convolutions on CPU)",
    "eval_batch_size": "batch size for evaluation",
    "log_every": "print the loss every this many batches",
}


def _recipe_fields() -> list[str]:
    from dataclasses import fields

    from .recipes import Recipe

    return [f.name for f in fields(Recipe) if f.name not in ("name", "description")]


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Recipe field (--batch-size for batch_size, ...): the recipe is the single source of truth."""
    from dataclasses import fields

    from .recipes import Recipe

    parsers = {"int": int, "float": float, "str": str, "dict[str, Any]": _json_object}
    group = parser.add_argument_group("recipe overrides (default: the recipe's value; see `mnist-nn recipes`)")
    for field in fields(Recipe):
        if field.name in ("name", "description"):
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = RECIPE_HELP.get(field.name, f"recipe field {field.name}")
        if field.type == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, type=parsers[str(field.type)], default=None, help=help_text)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def build_parser() -> Parser:
    parser = Parser(prog="mnist-nn", description="Train, evaluate and use handwritten-digit classifiers.")
    parser.add_argument("--version", action="version", version=f"mnist-nn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    train = commands.add_parser("train", help="train a recipe and write a run directory")
    train.add_argument("--recipe", default="tutorial", help="named recipe (default: tutorial; see `mnist-nn recipes`)")
    _add_data_arguments(train)
    train.add_argument("--out", metavar="DIR", help="run directory to create (default: runs/<timestamp>)")
    _add_recipe_arguments(train)
    train.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to train (default: auto)")
    train.add_argument("--quiet", action="store_true", help="print only the final result")
    train.add_argument("--show", action="store_true", help="also open the plots in a window")
    train.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs in the run directory")

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

    overrides = {name: getattr(args, name) for name in _recipe_fields()}
    train(
        args.recipe,
        data_dir=args.data_dir,
        out=args.out,
        device=args.device,
        quiet=args.quiet,
        show=args.show,
        tensorboard=args.tensorboard,
        **overrides,
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
