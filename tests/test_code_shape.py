"""The shape of the code, checked: rooms that import only downwards, short functions a reader can take in at once."""

from __future__ import annotations

import ast
import inspect
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "mnist_nn"
MAX_FUNCTION_LINES = 60


def test_no_function_in_the_package_is_longer_than_60_lines():
    too_long = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(SOURCE)}:{node.lineno} {node.name} ({length} lines)")
    assert not too_long, too_long


def _squeezes_values(node: ast.AST) -> bool:
    """``a, b, c = 1, 2, 3``: three or more names given values from a tuple written out on one line.

    Unpacking what a call returns (``start, stop = context.slice_of(n)``) and two-value pairs such as a swap
    are fine; three or more unrelated values on one line hide each one from a reader.
    """
    return (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Tuple)
        and isinstance(node.value, ast.Tuple)
        and len(node.targets[0].elts) >= 3
    )


def test_one_value_per_assignment():
    squeezed = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if _squeezes_values(node):
                squeezed.append(f"{path.relative_to(SOURCE)}:{node.lineno}")
    assert not squeezed, squeezed


REPO = SOURCE.parents[1]
# The READMEs, and the site's pages that name code (docs/concepts.md took the READMEs' concepts section).
DOCS = (
    "README.md",
    "README_Chinese.md",
    "docs/ARCHITECTURE.md",
    "docs/ARCHITECTURE.zh.md",
    "docs/concepts.md",
    "docs/concepts.zh.md",
)
# `src/mnist_nn/training/trainer.py:Trainer.train_step`: a file and a function, class or method in it.
REFERENCE = re.compile(r"`(src/mnist_nn/[\w/]+\.py):([\w.]+)`")


def _qualified_names(path: Path) -> set[str]:
    names: set[str] = set()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(prefix + child.name)
                if isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text()), "")
    return names


def test_every_function_the_docs_name_exists():
    found, missing = 0, []
    for doc in DOCS:
        for path, name in REFERENCE.findall((REPO / doc).read_text()):
            found += 1
            if not (REPO / path).is_file() or name not in _qualified_names(REPO / path):
                missing.append(f"{doc}: {path}:{name}")
    assert found >= 30 and not missing, missing


def test_the_rooms_keep_their_layers_and_have_no_import_cycle():
    """import-linter's contracts in pyproject.toml: the layers, serve apart from watch, testing outside the
    runtime, no cycle (lazy and TYPE_CHECKING imports count: grimp reads every import statement)."""
    script = Path(sys.executable).parent / "lint-imports"
    command = [str(script)] if script.exists() else [shutil.which("lint-imports") or "lint-imports"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "4 kept, 0 broken" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]


def test_the_package_root_holds_only_the_public_api_and_the_command():
    modules = sorted(path.stem for path in SOURCE.glob("*.py"))
    assert modules == ["__init__", "__main__", "api", "cli"]
    rooms = sorted(path.name for path in SOURCE.iterdir() if (path / "__init__.py").is_file())
    assert rooms == ["apps", "core", "data", "inference", "lab", "models", "testing", "training"]


LOOP_PAGE = REPO / "docs" / "training-loop.md"


@pytest.mark.parametrize(
    "qualified", ["Trainer.train_one_epoch", "Trainer.train_step", "TrainStep.__call__", "choose_step"]
)
def test_the_loop_page_quotes_the_loop_as_it_is(qualified):
    from mnist_nn.training import step, trainer

    owner, _, name = qualified.rpartition(".")
    module = trainer if owner == "Trainer" else step
    target = getattr(getattr(module, owner), name) if owner else getattr(module, name)
    source = textwrap.dedent(inspect.getsource(target)).strip()
    assert source in LOOP_PAGE.read_text(), f"docs/training-loop.md no longer quotes {qualified} as it is"
