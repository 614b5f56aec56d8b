"""The ``mnist-nn`` command: parses arguments, calls the library, maps errors to exit codes.

Every command is one row of ``COMMANDS`` (name, help, the function adding its arguments, the
function running it); the parser and the dispatch are both built from that table.

Start-up is kept short: this module imports neither torch nor any module that does, and each
handler imports what it needs. `mnist-nn --help`, `recipes`, `models` and argument errors
answer without loading torch (see benchmarks/startup.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NoReturn

from mnist_nn.core.device import DEVICE_CHOICES
from mnist_nn.core.errors import Interrupted, UserError
from mnist_nn.core.version import __version__

# Library options whose flag is not `--` + the Python name with dashes (errors.option, errors.cli_flag).
FLAGS = {"fmt": "--format", "compile_model": "--compile", "allow_download": "--download"}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the four IDX files, .gz or raw (default: $MNIST_NN_DATA, then the cache)",
    )


def _add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="NAME|PATH",
        help="a bundled model's name (see `mnist-nn models --pretrained`) or a checkpoint file "
        "(default: the bundled robust model)",
    )


def _chosen_model(model: str | None, checkpoint: str | None) -> Path:
    """The checkpoint file a command uses: --model, else the positional CHECKPOINT, else the bundled default."""
    from mnist_nn.models.bundled import resolve_model

    if model is not None and checkpoint is not None:
        raise UserError(f"two models given ({checkpoint} and --model {model}): give one")
    return resolve_model(model if model is not None else checkpoint)


def _split_model_and_images(model: str | None, paths: list[str]) -> tuple[Path, list[str]]:
    """``predict [CHECKPOINT] IMAGE...``: the first path is the checkpoint when it looks like one."""
    from mnist_nn.models.bundled import looks_like_model

    if model is None and paths and looks_like_model(paths[0]):
        if len(paths) == 1:
            raise UserError(f"no images given after the checkpoint {paths[0]}: mnist-nn predict [CHECKPOINT] IMAGE...")
        return _chosen_model(None, paths[0]), paths[1:]
    return _chosen_model(model, None), paths


def _add_device_argument(
    parser: argparse.ArgumentParser, what: str, auto: str = "a CUDA GPU, else Apple's MPS, else the CPU"
) -> None:
    """--device, with the same default in every command: auto (``auto`` says what it picks)."""
    parser.add_argument(
        "--device",
        default="auto",
        choices=DEVICE_CHOICES,
        help=f"where to {what}: auto (the default: {auto}), cpu, cuda or mps",
    )


# Recipe fields with no flag: its identity, and the per-dataset overrides (a flag would override those anyway).
NOT_FLAGS = ("name", "description", "dataset_overrides")


def _recipe_fields() -> list[str]:
    from mnist_nn.training.recipes import Recipe

    return [f.name for f in fields(Recipe) if f.name not in NOT_FLAGS]


def _add_recipe_argument(parser: argparse.ArgumentParser, default: str | None, what: str = "the recipe") -> None:
    """--recipe: a recipe's name or a recipe file (training/recipe_files.py), wherever a recipe is taken."""
    help_text = f"{what}: a name or a recipe file (default: tutorial; see `mnist-nn recipes`)"
    parser.add_argument("--recipe", default=default, metavar="NAME|FILE.toml", help=help_text)


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Recipe field (--batch-size for batch_size, ...): the recipe is the single source of truth."""
    from mnist_nn.training.recipes import Recipe

    parsers = {"int": int, "float": float, "str": str, "dict[str, Any]": _json_object}
    group = parser.add_argument_group("recipe overrides (default: the recipe's value; see `mnist-nn recipes`)")
    for field in fields(Recipe):
        if field.name in NOT_FLAGS:
            continue
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata["help"].replace("%", "%%")  # the help lives on the field; argparse formats %
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


# --------------------------------------------------------------------------- train


def _train_arguments(train: argparse.ArgumentParser) -> None:
    _add_recipe_argument(train, None)
    _add_data_argument(train)
    train.add_argument("--out", metavar="DIR", help="run directory to create (default: runs/<timestamp>)")
    _add_recipe_arguments(train)
    _add_device_argument(
        train, "train", "the CPU or a CUDA GPU, whichever runs a few timed steps of this recipe faster; else MPS"
    )
    train.add_argument("--quiet", action="store_true", help="print only the final result")
    train.add_argument("--show", action="store_true", help="also open the plots in a window")
    train.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs in the run directory")
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run where it stopped, with its own recipe (from RUN_DIR/state.pt)",
    )
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="STEPS",
        help="also save the resumable state every STEPS optimizer steps (default: 0, only at the end of each epoch)",
    )
    train.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="repeatable CUDA kernels (deterministic algorithms, cuDNN without autotuning, a fixed cuBLAS "
        "workspace): bitwise-identical GPU runs, often 10-30%% slower for CNNs; CPU runs are repeatable without it",
    )
    train.add_argument(
        "--compile",
        dest="compile_model",
        action="store_true",
        help="torch.compile the model for training (CUDA: mode max-autotune with CUDA graphs); "
        "costs tens of seconds of compilation first, so it pays off only on long runs",
    )
    train.add_argument(
        "--sync-bn",
        action="store_true",
        default=None,
        help="under torchrun: batch-norm statistics over the global batch (one all-reduce per batch-norm layer per "
        "step); default off: each process normalizes with its own shard's statistics",
    )
    train.add_argument(
        "--dist-backend",
        default="auto",
        choices=("auto", "gloo", "nccl"),
        help="under torchrun: the collective backend (default auto: NCCL on CUDA, gloo on the CPU)",
    )
    train.add_argument(
        "--watch",
        action="store_true",
        help="also serve a live page of the run's curves and sample predictions on this machine (the `mnist-nn "
        "watch` page; needs the serve extra); it stays up after training, until Ctrl-C",
    )
    train.add_argument(
        "--watch-port", type=int, default=8001, metavar="PORT", help="the --watch page's port (default: 8001)"
    )


def _train(args: argparse.Namespace) -> int:
    if args.recipe is not None and args.resume is None:
        from mnist_nn.training.recipe_files import lookup_recipe

        lookup_recipe(args.recipe)  # a mistyped name or a bad recipe file is refused before torch loads (seconds)
    from mnist_nn.training.distributed import PeerFailed, env_rank
    from mnist_nn.training.trainer import RunOptions, train

    overrides = {name: getattr(args, name) for name in _recipe_fields()}
    # Under torchrun rank 0 reports errors and interruptions; another rank stays quiet about what rank 0
    # reports, and names itself when the error is its own (e.g. its data folder is missing).
    rank = env_rank()
    try:
        # Every run option with a flag of its own (`progress` has none: a bar shows on a terminal).
        given = {field.name: getattr(args, field.name) for field in fields(RunOptions) if hasattr(args, field.name)}
        with _watching(args, rank, given):
            train(args.recipe, RunOptions(**given), **overrides)
    except PeerFailed as exc:
        return exc.exit_code
    except UserError as exc:
        if rank:
            raise UserError(f"rank {rank}: {exc.template}") from None
        raise
    except Interrupted as exc:
        if rank:
            return exc.exit_code
        raise
    return 0


def _watching(args: argparse.Namespace, rank: int, given: dict) -> contextlib.AbstractContextManager:
    """--watch: the watch page beside the run (rank 0's, under torchrun), serving until Ctrl-C after it."""
    if not args.watch or rank:
        return contextlib.nullcontext()
    _require_serve_extra("train --watch")
    from mnist_nn.apps.watch import beside_training

    if given.get("out") is None and given.get("resume") is None:
        from mnist_nn.training.run_plan import default_run_dir

        given["out"] = str(default_run_dir())  # the page must know the folder before the run makes it
    return beside_training(given["resume"] or given["out"], port=args.watch_port)


# --------------------------------------------------------------------------- evaluate, data


def _evaluate_arguments(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument(
        "checkpoints", nargs="+", metavar="CHECKPOINT", help="model.pt files; several are averaged as an ensemble"
    )
    evaluate.add_argument("--tta", action="store_true", help="test-time augmentation: average over 1-pixel shifts")
    evaluate.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the four IDX files, .gz or raw (default: $MNIST_NN_DATA, then the folder the run was "
        "trained on if it still verifies, then the cache)",
    )
    _add_device_argument(evaluate, "evaluate")
    evaluate.add_argument(
        "--out",
        metavar="DIR",
        help="where to write the PNGs (default: evaluation/ beside the checkpoint; runs/evaluation-NAME for a "
        "bundled model)",
    )
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")


def _evaluate(args: argparse.Namespace) -> int:
    from mnist_nn.inference.evaluate import evaluate_checkpoint, format_report

    data_dir = args.data_dir
    if data_dir is None and not os.environ.get("MNIST_NN_DATA"):
        data_dir = _recorded_data_dir(args.checkpoints)
    report = evaluate_checkpoint(args.checkpoints, data_dir=data_dir, device=args.device, out=args.out, tta=args.tta)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _recorded_data_dir(checkpoints: Sequence[str]) -> str | None:
    """The data folder the first checkpoint's run was trained on, when it still verifies; said on stderr.

    Without it, a run trained with --data-dir would be evaluated from the cache, or a download.
    """
    from mnist_nn.data.datasets import recorded_data_dir

    folder, note = recorded_data_dir(checkpoints[0])
    if note:
        print(f"mnist-nn: {'using ' + note if folder else note + '; looking elsewhere'}", file=sys.stderr)
    return str(folder) if folder is not None else None


def _calibrate_arguments(calibrate: argparse.ArgumentParser) -> None:
    calibrate.add_argument("checkpoint", metavar="CHECKPOINT", help="a model.pt written by `mnist-nn train`")
    _add_data_argument(calibrate)
    _add_device_argument(calibrate, "run the model")
    calibrate.add_argument(
        "--out", metavar="FILE", help="write the calibrated checkpoint here (default: rewrite CHECKPOINT in place)"
    )
    calibrate.add_argument("--json", action="store_true", help="print the result as JSON")


def _calibrate(args: argparse.Namespace) -> int:
    from mnist_nn.inference.calibrate import calibrate_checkpoint, format_calibration

    data_dir = args.data_dir
    if data_dir is None and not os.environ.get("MNIST_NN_DATA"):
        data_dir = _recorded_data_dir([args.checkpoint])
    report = calibrate_checkpoint(args.checkpoint, data_dir=data_dir, device=args.device, out=args.out)
    print(json.dumps(report, indent=2) if args.json else format_calibration(report))
    return 0


def _data_arguments(data: argparse.ArgumentParser) -> None:
    data.add_argument("--dataset", default="mnist", help="dataset name (default: mnist)")
    _add_data_argument(data)
    data.add_argument("--download", action="store_true", help="download into the cache if it is not found")


def _data(args: argparse.Namespace) -> int:
    from mnist_nn.data.datasets import get_dataset_spec, load_dataset, locate, not_found_message

    spec = get_dataset_spec(args.dataset)
    if not args.download and locate(spec, args.data_dir) is None:
        raise UserError(not_found_message(spec))
    splits = load_dataset(spec.name, args.data_dir)
    print(f"{spec.title} found in {splits.folder} (by {splits.source})")
    for split, labels in (("train", splits.train_labels), ("test", splits.test_labels)):
        counts = labels.bincount(minlength=len(spec.classes)).tolist()
        print(f"  {split}: {len(labels):,} images; per class: {' '.join(map(str, counts))}")
    verified = "content MD5 verified" if spec.md5 else "headers verified (no MD5 known for this dataset)"
    print(f"  all four files: IDX headers verified, {verified}")
    return 0


# --------------------------------------------------------------------------- models, recipes


def _models_arguments(models: argparse.ArgumentParser) -> None:
    models.add_argument(
        "--parameters", action="store_true", help="also build each model and count its parameters (loads PyTorch)"
    )
    models.add_argument(
        "--pretrained",
        action="store_true",
        help="list the trained models bundled with mnist-nn, with their accuracies (use them with --model NAME)",
    )


def _models(args: argparse.Namespace) -> int:
    if args.pretrained:
        from mnist_nn.models.bundled import DEFAULT_MODEL, bundled_models

        print(f"{'name':<10} {'recipe':<10} {'parameters':>10} {'MNIST':>7} {'MNIST-C':>8}  description")
        for name, model in bundled_models().items():
            default = " (default)" if name == DEFAULT_MODEL else ""
            print(
                f"{name:<10} {model.recipe:<10} {model.parameters:>10,} {100 * model.clean_accuracy:>6.2f}% "
                f"{100 * model.mnist_c_mean:>7.2f}%  {model.description}{default}"
            )
        return 0
    if args.parameters:
        from mnist_nn.models.networks import MODELS, build_model, count_parameters

        for name, spec in MODELS.items():
            print(f"{name:<16} {count_parameters(build_model(name)):>10,}  {spec.description}")
        return 0
    for name, description in _model_catalog():
        print(f"{name:<16} {description}")
    return 0


def _model_catalog() -> list[tuple[str, str]]:
    """(name, description) of each model registered in models/networks.py, read from its source without running it.

    networks.py defines the networks as torch classes, so importing it loads torch (seconds); the
    listing only needs the names. tests/test_cli.py checks that this equals the registry.
    """
    import ast
    from importlib.util import find_spec

    spec = find_spec(f"{__package__}.models.networks")
    source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ModelSpec":
            fields = {k.arg: k.value for k in node.keywords if isinstance(k.value, ast.Constant)}
            if "name" in fields and "description" in fields:
                found.append((fields["name"].value, fields["description"].value))
    return found


def _recipes_arguments(recipes: argparse.ArgumentParser) -> None:
    recipes.add_argument(
        "--show",
        metavar="NAME|FILE.toml|RUN_DIR",
        help="print a recipe, a recipe file or a run directory's recipe as a recipe file (every field, with its help): "
        "save it, change it, train it with --recipe FILE.toml",
    )


def _recipes(args: argparse.Namespace) -> int:
    from mnist_nn.training.recipes import RECIPES

    if args.show is not None:
        from mnist_nn.training.recipe_files import show_recipe

        print(show_recipe(args.show), end="")
        return 0
    for name, recipe in RECIPES.items():
        print(f"{name:<12} {recipe.description}")
    return 0


# --------------------------------------------------------------------------- predict, export


def _predict_arguments(predict: argparse.ArgumentParser) -> None:
    predict.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files, or folders of them (not recursive); a first PATH ending in .pt, or naming a bundled "
        "model, is the checkpoint (`predict CHECKPOINT IMAGE...`)",
    )
    _add_model_argument(predict)
    predict.add_argument("--top-k", type=int, default=3, help="alternatives to show per digit (default: 3)")
    predict.add_argument(
        "--threshold",
        type=float,
        default=0.0,
        metavar="P",
        help="answer 'uncertain' when the best probability is below P, 0-1 (default: 0, never)",
    )
    predict.add_argument("--multi", action="store_true", help="read a number: several digits, left to right")
    predict.add_argument(
        "--no-preprocess", action="store_true", help="images are already 28x28 in MNIST form (light on dark)"
    )
    predict.add_argument("--save-preprocessed", metavar="DIR", help="write the 28x28 images the model saw into DIR")
    predict.add_argument(
        "--explain",
        metavar="DIR",
        help="write into DIR, per digit, the image the model saw beside a map of the pixels that made its answer "
        "(integrated gradients; needs the lab extra)",
    )
    predict.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="refuse images with more pixels than N, before decoding (default: 50,000,000)",
    )
    _add_device_argument(predict, "run")
    predict.add_argument("--json", action="store_true", help="print the results as JSON")


def _predict(args: argparse.Namespace) -> int:
    from mnist_nn.core.fsutil import ensure_writable_dir
    from mnist_nn.inference.predictor import Predictor, check_options, format_table, several_digits_hints
    from mnist_nn.inference.preprocess import DEFAULT_MAX_PIXELS

    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    check_options(args.top_k, args.threshold, max_pixels)
    if args.multi and args.no_preprocess:
        raise UserError("--multi needs preprocessing (it finds the digits); drop --no-preprocess")
    checkpoint, args.paths = _split_model_and_images(args.model, args.paths)
    predictor = Predictor.from_checkpoint(checkpoint, device=args.device)
    if args.multi and predictor.metadata["dataset"] != "mnist":
        raise UserError(f"--multi reads handwritten numbers; this checkpoint is for {predictor.metadata['dataset']}")
    save_dir = ensure_writable_dir(args.save_preprocessed) if args.save_preprocessed else None
    explain_dir = explainer = None
    if args.explain:
        from mnist_nn.lab.explain import require_captum, save_explanations

        require_captum()
        explainer = save_explanations
        explain_dir = ensure_writable_dir(args.explain)
        if save_dir is not None and explain_dir.resolve() == save_dir.resolve():
            raise UserError("--explain and --save-preprocessed write files of the same names: give them two folders")
    results = predictor.predict_paths(
        args.paths,
        save_dir=save_dir,
        explain_dir=explain_dir,
        explainer=explainer,
        preprocess=not args.no_preprocess,
        multi=args.multi,
        top_k=args.top_k,
        threshold=args.threshold,
        max_pixels=max_pixels,
    )
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(format_table(results, args.top_k))
        if not args.multi and not args.no_preprocess:
            for source in several_digits_hints(results, max_pixels):
                print(f"note: {source} looks like several digits side by side: --multi reads it as a number")
    failed = [r for r in results if r.failed]
    for result in failed:
        print(f"mnist-nn: error: {result.error}", file=sys.stderr)
    return 1 if failed else 0


def _export_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument(
        "checkpoint", help="a model.pt written by `mnist-nn train` (for --format web also a bundled model's name)"
    )
    export.add_argument(
        "--format",
        required=True,
        choices=("onnx", "torchscript", "web"),
        help="what to write; web: a static page that reads digits in the browser (a folder: --out DIR)",
    )
    export.add_argument(
        "--out",
        metavar="PATH",
        help="file to write (default: beside the checkpoint, .onnx or .torchscript.pt); for web, the folder (required)",
    )
    export.add_argument(
        "--input-dtype",
        default="float32",
        choices=("float32", "uint8"),
        help="type of the [N, 28, 28] pixel input, 0-255 (default: float32)",
    )
    export.add_argument("--json", action="store_true", help="print the report as JSON")


def _export(args: argparse.Namespace) -> int:
    from mnist_nn.inference.export import export_checkpoint

    if args.format == "web":
        return _export_web(args)
    report = export_checkpoint(args.checkpoint, fmt=args.format, out=args.out, input_dtype=args.input_dtype)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"wrote {report['path']} ({report['format']}, {report['bytes']:,} bytes, input {report['input_dtype']} "
            f"[N, 28, 28]); matches PyTorch: logits within {report['max_rel_diff']:.1e} of their scale "
            f"(up to {report['max_abs_logit']:.3g}), same answers"
        )
    return 0


def _export_web(args: argparse.Namespace) -> int:
    from mnist_nn.apps.serve.web_export import export_web

    if args.out is None:
        raise UserError("--format web writes a folder: give it with --out DIR")
    report = export_web(_chosen_model(None, args.checkpoint), args.out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"wrote {report['path']} ({report['files']} files, {report['bytes']:,} bytes; model "
            f"{report['model_bytes']:,} bytes, its ONNX export checked against PyTorch, layer by layer); "
            f"serve the folder from any static host, e.g. python -m http.server --directory {report['path']}"
        )
    return 0


# --------------------------------------------------------------------------- serve


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "checkpoint", nargs="?", help="a model.pt written by `mnist-nn train` (default: the bundled default model)"
    )
    _add_model_argument(serve)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    _add_device_argument(serve, "run")
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes sharing the port (default: one per CPU core, at most 4, on the CPU under Linux; else 1)",
    )
    serve.add_argument(
        "--engine",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="what runs the model: onnx (ONNX Runtime, on the CPU: 2-4x faster on small batches; needs the export "
        "extra), torch (PyTorch), or auto (default): onnx when the export extra is installed and the device is the CPU",
    )
    _serve_guard_arguments(serve)


def _serve_guard_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header names NAME (repeatable); by default only the --host name, "
        "localhost, 127.0.0.1 and [::1] (and any IP address when --host is 0.0.0.0 or ::): a foreign Host gets 421",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages from ORIGIN (scheme://host[:port]) call the API from a browser (repeatable); by default "
        "a request from any other site's page is refused (403)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close a connection whose request headers take longer (default: 10)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="close a connection whose request body takes longer to arrive (default: 30)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=256,
        metavar="N",
        help="open connections per server process; more are answered 503 (default: 256)",
    )


def _require_serve_extra(command: str) -> None:
    from importlib.util import find_spec

    # python-multipart installs as `python_multipart` (older releases: `multipart`).
    missing = [name for name in ("fastapi", "uvicorn") if find_spec(name) is None]
    if find_spec("python_multipart") is None and find_spec("multipart") is None:
        missing.append("python-multipart")
    if missing:
        raise UserError(
            f'`mnist-nn {command}` needs the serve extra ({", ".join(missing)} missing): pip install "mnist-nn[serve]"'
        )


def _serve(args: argparse.Namespace) -> int:
    _require_serve_extra("serve")
    from mnist_nn.apps.serve import run
    from mnist_nn.apps.serve.protocol import Limits

    checkpoint = _chosen_model(args.model, args.checkpoint)
    limits = Limits(args.header_timeout, args.body_timeout, args.max_connections)
    options = {"allowed_hosts": args.allowed_host, "cors_origins": args.cors_origin, "limits": limits}
    options["engine"] = args.engine
    run(checkpoint, host=args.host, port=args.port, device=args.device, workers=args.workers, **options)
    return 0


# --------------------------------------------------------------------------- compare, inspect, lr-find


def _compare_arguments(compare: argparse.ArgumentParser) -> None:
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by `mnist-nn train`")
    compare.add_argument(
        "--out",
        metavar="FILE",
        help="the PNG of the overlaid curves (default: compare-RUN+RUN.png in the runs' common folder)",
    )
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")


def _compare(args: argparse.Namespace) -> int:
    from mnist_nn.lab.compare import compare_runs, format_table

    report = compare_runs(args.runs, out=args.out)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def _inspect_arguments(inspect: argparse.ArgumentParser) -> None:
    inspect.add_argument("checkpoint", help="a model.pt written by `mnist-nn train` (or a run's state.pt)")
    inspect.add_argument(
        "--out", metavar="DIR", help="where to write the pictures (default: an inspection folder beside the checkpoint)"
    )
    inspect.add_argument(
        "--index", type=int, default=0, metavar="N", help="the test digit whose activations to show (default: 0)"
    )
    inspect.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the four IDX files, .gz or raw (default: $MNIST_NN_DATA, then the folder the run was "
        "trained on if it still verifies, then the cache)",
    )


def _inspect(args: argparse.Namespace) -> int:
    from mnist_nn.lab.inspection import format_report, inspect_checkpoint, require_scikit_learn

    require_scikit_learn()  # before loading anything: the feature map needs it
    data_dir = args.data_dir
    if data_dir is None and not os.environ.get("MNIST_NN_DATA"):
        data_dir = _recorded_data_dir([args.checkpoint])
    report = inspect_checkpoint(args.checkpoint, out=args.out, data_dir=data_dir, index=args.index)
    print(format_report(report))
    return 0


def _lr_find_arguments(lr_find: argparse.ArgumentParser) -> None:
    _add_recipe_argument(lr_find, "tutorial")
    lr_find.add_argument("--start", type=float, default=1e-7, help="the first learning rate (default: 1e-7)")
    lr_find.add_argument("--end", type=float, default=10.0, help="the last learning rate (default: 10)")
    lr_find.add_argument(
        "--steps", type=int, default=200, help="training steps from --start to --end, at least 10 (default: 200)"
    )
    lr_find.add_argument(
        "--out", metavar="FILE", help="the PNG of loss against learning rate (default: runs/lr-find-RECIPE-TIME.png)"
    )
    _add_data_argument(lr_find)


def _lr_find(args: argparse.Namespace) -> int:
    from mnist_nn.training.recipe_files import lookup_recipe

    lookup_recipe(args.recipe)  # a mistyped name or a bad recipe file is refused before torch loads
    from mnist_nn.lab.lr_find import check_range, format_result, lr_find

    check_range(args.start, args.end, args.steps)
    result = lr_find(
        args.recipe, start=args.start, end=args.end, steps=args.steps, out=args.out, data_dir=args.data_dir
    )
    print(format_result(result))
    return 0


# --------------------------------------------------------------------------- sweep


def _sweep_arguments(sweep: argparse.ArgumentParser) -> None:
    _add_recipe_argument(sweep, "tutorial", "the recipe every trial starts from")
    sweep.add_argument(
        "--space", required=True, metavar="FILE.toml", help="the search space: a range or choices per recipe field"
    )
    sweep.add_argument(
        "--trials", type=int, default=20, help="finished trials the study should hold, over all workers (default: 20)"
    )
    sweep.add_argument("--out", required=True, metavar="DIR", help="folder for the trials' run directories and results")
    sweep.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the recipe's)")
    sweep.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="start no trial after S seconds (default: none)"
    )
    sweep.add_argument(
        "--sampler",
        default="tpe",
        choices=("tpe", "random", "grid"),
        help="how trials' values are drawn: tpe (Optuna's default), random, or grid (every combination of the "
        "choices, once; --trials caps it) (default: tpe)",
    )
    sweep.add_argument(
        "--pruner",
        default="median",
        choices=("median", "hyperband", "none"),
        help="how bad trials are stopped early, after any epoch (default: median)",
    )
    sweep.add_argument(
        "--storage",
        metavar="URL",
        help="the study's database, any SQLAlchemy URL (e.g. postgresql://user:pass@host/db) shared by workers on "
        "many machines (default: an SQLite file in --out)",
    )
    sweep.add_argument("--study", default="sweep", help="the study's name in the storage (default: sweep)")
    sweep.add_argument(
        "--seed", type=int, default=None, help="the sampler's seed, for a repeatable search (default: none)"
    )
    sweep.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        metavar="S",
        help="seconds between a worker's heartbeats; a trial silent for twice that is marked failed and retried "
        "(default: 30)",
    )
    _add_data_argument(sweep)
    _add_device_argument(
        sweep,
        "train the trials",
        "the CPU or a CUDA GPU, whichever runs a few timed steps of this recipe faster; else MPS",
    )


def _sweep(args: argparse.Namespace) -> int:
    from mnist_nn.training.recipe_files import lookup_recipe

    lookup_recipe(args.recipe)  # a mistyped name or a bad recipe file is refused before torch loads
    try:
        from mnist_nn.lab.sweep import SweepOptions, run_sweep
    except ModuleNotFoundError as exc:
        raise UserError(f"sweep needs Optuna ({exc.name} is missing): pip install 'mnist-nn[sweep]'") from None
    names = ("recipe", "space", "trials", "out", "epochs", "timeout", "pruner", "storage", "study", "seed")
    given = {name: getattr(args, name) for name in (*names, "data_dir", "device", "heartbeat", "sampler")}
    run_sweep(SweepOptions(**given))
    return 0


# --------------------------------------------------------------------------- watch


def _watch_arguments(watch: argparse.ArgumentParser) -> None:
    watch.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories (several: overlaid in the same charts)"
    )
    watch.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    watch.add_argument("--port", type=int, default=8001, help="TCP port (default: 8001; 0: any free port)")


def _watch(args: argparse.Namespace) -> int:
    _require_serve_extra("watch")
    from mnist_nn.apps.watch import run

    run(args.runs, host=args.host, port=args.port)
    return 0


# --------------------------------------------------------------------------- robustness


def _robustness_arguments(robustness: argparse.ArgumentParser) -> None:
    robustness.add_argument(
        "checkpoint",
        nargs="?",
        help="a model.pt written by `mnist-nn train` (or a run's state.pt); default: the bundled default model",
    )
    _add_model_argument(robustness)
    robustness.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the four IDX files, .gz or raw (default: $MNIST_NN_DATA, then the folder the run was "
        "trained on if it still verifies, then the cache)",
    )
    robustness.add_argument(
        "--out",
        metavar="PNG",
        help="the grid of one digit under each corruption (default: robustness.png beside the checkpoint; "
        "for a bundled model, runs/robustness-NAME.png)",
    )
    robustness.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_device_argument(robustness, "run")
    robustness.add_argument(
        "--batch-size", type=int, default=None, metavar="N", help="images scored at once (default: 256)"
    )


def _robustness(args: argparse.Namespace) -> int:
    from mnist_nn.lab.robustness import console_progress, format_report, robustness_report

    checkpoint = _chosen_model(args.model, args.checkpoint)
    out = args.out
    data_dir = args.data_dir
    if data_dir is None and not os.environ.get("MNIST_NN_DATA"):
        data_dir = _recorded_data_dir([checkpoint])
    report = robustness_report(
        checkpoint,
        data_dir=data_dir,
        device=args.device,
        out=out,
        batch_size=args.batch_size,
        progress=console_progress(),
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Command:
    """One `mnist-nn` command: its parser is built by ``arguments``, and ``run`` answers it with an exit status."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] | None
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


COMMANDS = (
    Command("train", "train a recipe and write a run directory", _train_arguments, _train),
    Command(
        "evaluate", "score a checkpoint, or an ensemble of several, on the test set", _evaluate_arguments, _evaluate
    ),
    Command(
        "robustness",
        "score a checkpoint on MNIST-C: the test set under 15 corruptions (noise, blur, affine, fog, lines...)",
        _robustness_arguments,
        _robustness,
        description="Corrupt the 10,000 test digits with each of MNIST-C's 15 corruptions (Mu & Gilmer 2019), "
        "seeded and cached, and print the checkpoint's accuracy on each, their mean and the clean accuracy; draw "
        "one digit under each corruption, with the accuracy, in a PNG.",
    ),
    Command(
        "calibrate",
        "fit a checkpoint's temperature so that its confidence matches how often it is right",
        _calibrate_arguments,
        _calibrate,
        description="Temperature scaling (Guo et al. 2017): fit one number T on held-out digits (the validation "
        "split the checkpoint's recipe held out; without one, 5,000 training digits chosen as --val-size 5000 "
        "would choose them; never the test set) by minimizing the negative log-likelihood, and save it in the "
        "checkpoint. predict, serve, evaluate and export then divide the logits by T: the probabilities change, "
        "the answers never do.",
    ),
    Command("data", "show where the data is and verify it", _data_arguments, _data),
    Command("models", "list the models", _models_arguments, _models),
    Command("recipes", "list the training recipes, or print one as a recipe file", _recipes_arguments, _recipes),
    Command(
        "predict",
        "read digits in image files (PNG, JPEG, BMP, GIF, WebP, TIFF)",
        _predict_arguments,
        _predict,
        description="Read digits in image files or folders of them. Exit status: 0 when every file was read, "
        "1 when some could not be (each named on stderr), 2 for a usage or checkpoint error.",
    ),
    Command("export", "export a checkpoint as ONNX, TorchScript or a static web page", _export_arguments, _export),
    Command(
        "serve",
        "a web page to draw digits on, and a REST API (needs the serve extra)",
        _serve_arguments,
        _serve,
        description="Serve a checkpoint: the page at / (draw a digit, watch the network read it), the API at "
        "/api/predict, /api/health and /api/model, its documentation at /docs. Ctrl-C stops it.",
    ),
    Command(
        "watch",
        "a live page of training runs: curves, progress, sample predictions (needs the serve extra)",
        _watch_arguments,
        _watch,
        description="Serve a page that follows run directories as they are written: the training loss every "
        "log_every batches, the held-out loss and accuracy per epoch, the epoch and the time per epoch, ten test "
        "digits with the network's answers after each epoch, and the test accuracy once a run ends. Several run "
        "directories are overlaid for comparing. A folder still empty waits for its run. Ctrl-C stops it.",
    ),
    Command("compare", "overlay runs' curves in one PNG and tabulate how they differ", _compare_arguments, _compare),
    Command(
        "inspect",
        "look inside a checkpoint: first-layer weights, a digit's activations, a feature map (needs the lab extra)",
        _inspect_arguments,
        _inspect,
        description="Write three pictures of a trained network: its first layer's weights, every layer's "
        "activations for one test digit, and its penultimate layer's features for 2,000 test digits mapped to "
        "2-D by PCA and t-SNE (needs scikit-learn: pip install 'mnist-nn[lab]').",
    ),
    Command(
        "lr-find",
        "the learning-rate range test: sweep the lr over a few hundred steps, suggest one",
        _lr_find_arguments,
        _lr_find,
        description="Train the recipe's model for --steps steps on training data only, raising the learning rate "
        "exponentially from --start to --end, stop when the loss explodes, plot loss against learning rate and "
        "suggest a learning rate for `mnist-nn train --lr` (Smith 2015).",
    ),
    Command(
        "sweep",
        "search a recipe's fields with Optuna: many trials, bad ones pruned, the best kept as best.toml",
        _sweep_arguments,
        _sweep,
        description="Search the fields a space file names (ranges or choices) with Optuna's TPE sampler: each "
        "trial is a run directory under --out, reports its validation accuracy after every epoch and is pruned when "
        "it falls behind. At the end (and on Ctrl-C): a table of the trials, best.toml (train it with --recipe) and "
        "pictures. Workers on many machines share one study with --storage and --study (needs the sweep extra).",
    ),
)
HANDLERS = {command.name: command.run for command in COMMANDS}


def build_parser() -> Parser:
    parser = Parser(prog="mnist-nn", description="Train, evaluate and use handwritten-digit classifiers.")
    parser.add_argument("--version", action="version", version=f"mnist-nn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.description)
        if command.arguments is not None:
            command.arguments(sub)
    return parser


def _training_interruption(exc: BaseException) -> Interrupted | None:
    """The run's own Interrupted, also when a second Ctrl-C came while the stopping run unwound (its signal
    handlers already put back, so Python raised a plain KeyboardInterrupt over it): the state is saved
    either way, and the message that says how to resume is the one to print."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, Interrupted):
            return seen
        seen = seen.__context__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return HANDLERS[args.command](args)
    except UserError as exc:
        print(f"mnist-nn: error: {exc.render(FLAGS)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # Training's own interruption says where its state is and how to resume; exit 128 + the signal.
        stopped = _training_interruption(exc)
        print(f"mnist-nn: {stopped or 'interrupted'}", file=sys.stderr)
        return stopped.exit_code if stopped is not None else 130
    except BrokenPipeError:
        # The reader went away (`mnist-nn evaluate ... | head`): stop quietly, as command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
