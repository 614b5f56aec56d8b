"""Recipe files: a recipe saved as TOML, read back wherever a recipe name is taken.

A file names a base recipe and the fields it changes::

    base = "tutorial"
    lr = 0.002
    optimizer = "adamw"

``load_recipe_file`` reads one (each unknown key or bad value is a UserError naming the key),
``lookup_recipe`` takes a registered name or a path ending in ``.toml``, ``recipe_to_toml`` writes a
recipe as such a file (every field, each with its help as a comment), and ``run_recipe_toml`` turns a
run directory's ``config.json`` back into one. TOML is read by the standard library's ``tomllib``;
writing needs only flat keys of strings, numbers, booleans, lists and inline tables, written here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from mnist_nn.core.errors import UserError
from mnist_nn.training.recipes import RECIPES, Recipe, get_recipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 takes the backport (a dependency there)
    import tomli as tomllib

__all__ = [
    "is_recipe_file",
    "load_recipe_file",
    "lookup_recipe",
    "recipe_from_table",
    "recipe_to_toml",
    "run_recipe_toml",
    "show_recipe",
]

FIELD_TYPES = {f.name: str(f.type) for f in dataclasses.fields(Recipe)}
HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(Recipe)}
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def is_recipe_file(name: str | Path) -> bool:
    return str(name).endswith(".toml")


def lookup_recipe(name: str | Recipe) -> Recipe:
    """A Recipe from a registered name or a recipe file (a path ending in .toml)."""
    if isinstance(name, Recipe):
        return name
    return load_recipe_file(name) if is_recipe_file(name) else get_recipe(name)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The table of a TOML file; a missing, unreadable or malformed one is a one-line UserError naming ``what``."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{what} {path} is not valid TOML: {exc}") from None


def load_recipe_file(path: str | Path) -> Recipe:
    """The recipe a TOML file describes: its ``base`` recipe (default tutorial) with the file's fields."""
    path = Path(path)
    table = read_toml(path, "recipe file")
    return recipe_from_table(table, where=str(path), default_name=path.stem)


def recipe_from_table(table: dict[str, Any], *, where: str, default_name: str) -> Recipe:
    """``base`` with the table's fields: each checked for its name and type, then the recipe's own checks."""
    table = dict(table)
    base_name = table.pop("base", "tutorial")
    if not isinstance(base_name, str) or base_name not in RECIPES:
        raise UserError(f"{where}: base must name a recipe ({', '.join(RECIPES)}); got {base_name!r}")
    changes = {key: _checked_value(key, value, where) for key, value in table.items()}
    base = get_recipe(base_name)
    # The base as it runs on the file's dataset first, so that the file's fields win over its per-dataset overrides.
    base = base.for_dataset(changes.get("dataset", base.dataset))
    changes.setdefault("name", default_name)
    changes.setdefault("description", f"{base_name} with {', '.join(sorted(table)) or 'no changes'} ({where})")
    try:
        return base.replace(**changes)
    except UserError as exc:
        culprit = next((key for key in changes if _fails_alone(base, key, changes[key])), None)
        named = f"key {culprit!r}: " if culprit else ""
        raise UserError(f"{where}: {named}{exc.template}") from None


def _fails_alone(base: Recipe, key: str, value: Any) -> bool:
    try:
        base.replace(**{key: value})
    except UserError:
        return True
    return False


def _checked_value(key: str, value: Any, where: str) -> Any:
    """``value`` as the Recipe field ``key`` holds it (an int is a float where a float is wanted)."""
    kind = FIELD_TYPES.get(key)
    if kind is None:
        raise UserError(f"{where}: unknown key {key!r} (not a recipe field; see `mnist-nn recipes --show tutorial`)")
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
    }.get(kind, isinstance(value, dict))
    if not ok:
        wanted = {"str": "a string", "bool": "true or false", "int": "an integer", "float": "a number"}
        raise UserError(f"{where}: key {key!r} must be {wanted.get(kind, 'a table')}, got {value!r}")
    return float(value) if kind == "float" else value


# --------------------------------------------------------------------------- writing


def recipe_to_toml(recipe: Recipe, *, base: str | None = None, header: str = "") -> str:
    """The recipe as a file ``load_recipe_file`` reads back to the same recipe: every field, with its help."""
    base = base if base in RECIPES else "tutorial"
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    lines.append(f"base = {_toml_value(base)}")
    for name, value in recipe.to_dict().items():
        lines.append(f"# {HELP[name]}")
        lines.append(f"{_toml_key(name)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def run_recipe_toml(run_dir: str | Path) -> str:
    """A run directory's recipe (from its config.json) as a recipe file: train it again with ``--recipe``."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        fields = dict(config["recipe"])
    except FileNotFoundError:
        raise UserError(f"{run_dir} is not a run directory (it has no config.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{config_path} is not a run's config.json ({exc})") from None
    known = {key: value for key, value in fields.items() if key in FIELD_TYPES}
    base = fields.get("name") if fields.get("name") in RECIPES else "tutorial"
    recipe = recipe_from_table({"base": base, **known}, where=str(config_path), default_name=run_dir.name)
    return recipe_to_toml(recipe, base=base, header=f"the recipe of run {run_dir}")


def show_recipe(what: str) -> str:
    """``mnist-nn recipes --show``: a recipe name, a recipe file or a run directory, as a recipe file."""
    if Path(what).is_dir():
        return run_recipe_toml(what)
    recipe = lookup_recipe(what)
    return recipe_to_toml(recipe, base=recipe.name, header=f"recipe {recipe.name}: {recipe.description}")
