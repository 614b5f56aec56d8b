"""The search space file of ``mnist-nn sweep``: one TOML table per recipe field.

::

    [lr]                      # a range: low, high, optionally log = true or step = S
    low = 1e-4
    high = 1e-1
    log = true
    [optimizer]               # choices
    choices = ["sgd", "adam", "adamw", "rmsprop"]
    [momentum]                # conditional: only drawn where the earlier fields have these values
    choices = [0.0, 0.9]
    when = { optimizer = "sgd" }

Every mistake (a key that is not a recipe field, an empty range, a value of the wrong type or one the
recipe refuses) is a UserError naming the key, raised by ``load_space`` before any trial. ``suggest``
draws one trial's values with Optuna's define-by-run calls, in the file's order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_nn.core.errors import UserError
from mnist_nn.training.recipe_files import FIELD_TYPES, read_toml
from mnist_nn.training.recipes import Recipe

if TYPE_CHECKING:
    import optuna

# Fields that identify a recipe or hold tables: not searched.
NOT_SEARCHED = ("name", "description", "model_kwargs", "dataset_overrides")
TABLE_KEYS = ("low", "high", "log", "step", "choices", "when")


@dataclass(frozen=True)
class Dimension:
    """One searched field: a range (``low``..``high``) or ``choices``, drawn only ``when`` earlier values match."""

    name: str
    kind: str  # "float", "int" or "choices"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # A choice may set several fields at once (``{ label = "momentum", optimizer = "sgd", nesterov = false }``):
    # Optuna sees its label, the recipe its fields.
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fields(self, value: Any) -> dict[str, Any]:
        """The recipe fields a drawn value sets."""
        return dict(self.settings[value]) if value in self.settings else {self.name: value}

    def applies(self, drawn: dict[str, Any]) -> bool:
        return all(name in drawn and drawn[name] in values for name, values in self.when.items())

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "choices":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.kind == "choices":
            text = "{" + ", ".join(str(c) for c in self.choices) + "}"
        else:
            text = (
                f"{self.low:g}..{self.high:g}"
                + (" (log)" if self.log else "")
                + (f" step {self.step:g}" if self.step else "")
            )
        if self.when:
            text += " when " + ", ".join(f"{k} in {list(v)}" for k, v in self.when.items())
        return f"{self.name} {text}"


def load_space(path: str | Path, base: Recipe) -> list[Dimension]:
    """The dimensions of a space file, each checked against ``base`` (every value must make a valid recipe)."""
    path = Path(path)
    table = read_toml(path, "search space file")
    if not table:
        raise UserError(f"search space file {path} names no field to search")
    dimensions: list[Dimension] = []
    for name, spec in table.items():
        dimensions.append(_dimension(name, spec, base, dimensions, f"{path}: [{name}]"))
    return dimensions


def _dimension(name: str, spec: Any, base: Recipe, earlier: list[Dimension], where: str) -> Dimension:
    kind = FIELD_TYPES.get(name)
    if kind is None or name in NOT_SEARCHED:
        raise UserError(f"{where}: {name!r} is not a recipe field that can be searched (see `mnist-nn recipes --show`)")
    if not isinstance(spec, dict):
        raise UserError(f"{where}: must be a table with low and high, or choices; got {spec!r}")
    unknown = sorted(set(spec) - set(TABLE_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(TABLE_KEYS)})")
    when = _when(spec.get("when", {}), earlier, where)
    if "choices" in spec:
        if {"low", "high", "log", "step"} & set(spec):
            raise UserError(f"{where}: give choices, or low and high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: choices must be a non-empty list, got {choices!r}")
        labels, settings = [], {}
        for value in choices:
            if isinstance(value, dict):
                label, fields = _setting(value, base, where)
                settings[label] = fields
                value = label
            else:
                _check_value(base, name, kind, value, where)
            if value in labels:
                raise UserError(f"{where}: the choice {value!r} is given twice")
            labels.append(value)
        return Dimension(name, "choices", choices=tuple(labels), when=when, settings=settings)
    return _range(name, kind, spec, base, when, where)


def _range(name: str, kind: str, spec: dict[str, Any], base: Recipe, when: dict, where: str) -> Dimension:
    if kind not in ("int", "float"):
        raise UserError(f"{where}: {name} is not a number; give its choices instead of a range")
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{where}: a range needs low and high (or give choices)")
    low = _bound(spec, "low", kind, where)
    high = _bound(spec, "high", kind, where)
    step = _bound(spec, "step", kind, where) if "step" in spec else None
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {log!r}")
    if low > high:
        raise UserError(f"{where}: empty range: low {low} > high {high}")
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0, got {low}")
    if step is not None and (step <= 0 or log):
        raise UserError(f"{where}: step must be positive and cannot go with log, got {step}")
    for value in (low, high):
        _check_value(base, name, kind, value, where)
    return Dimension(name, kind, low=low, high=high, log=log, step=step, when=when)


def _bound(spec: dict[str, Any], key: str, kind: str, where: str) -> float:
    """A range's low, high or step: a finite number (an integer for an integer field)."""
    value = spec[key]
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (kind == "int" and not isinstance(value, int)):
        raise UserError(f"{where}: {key} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    return value


def _setting(table: dict[str, Any], base: Recipe, where: str) -> tuple[str, dict[str, Any]]:
    """A choice that sets several fields: its label (given, or its fields written out) and its fields, each checked."""
    fields = {key: value for key, value in table.items() if key != "label"}
    if not fields:
        raise UserError(f"{where}: a choice table must set at least one recipe field")
    for key, value in fields.items():
        kind = FIELD_TYPES.get(key)
        if kind is None or key in NOT_SEARCHED:
            raise UserError(f"{where}: {key!r} is not a recipe field that can be searched")
        _check_value(base, key, kind, value, where)
    label = table.get("label", ", ".join(f"{key}={value}" for key, value in fields.items()))
    if not isinstance(label, str) or not label:
        raise UserError(f"{where}: a choice's label must be a non-empty string, got {label!r}")
    return label, fields


def _check_value(base: Recipe, name: str, kind: str, value: Any, where: str) -> None:
    wanted = {"str": str, "bool": bool, "int": int, "float": (int, float)}[kind]
    if not isinstance(value, wanted) or (kind != "bool" and isinstance(value, bool)):
        raise UserError(f"{where}: {value!r} is not a valid {name} (a {kind} is wanted)")
    try:
        base.replace(**{name: float(value) if kind == "float" else value})
    except UserError as exc:
        raise UserError(f"{where}: {exc.template}") from None


def _when(when: Any, earlier: list[Dimension], where: str) -> dict[str, tuple[Any, ...]]:
    if not isinstance(when, dict):
        raise UserError(f"{where}: when must be a table of earlier fields and their values, got {when!r}")
    known = {dimension.name for dimension in earlier}
    result = {}
    for name, values in when.items():
        if name not in known:
            raise UserError(f"{where}: when names {name!r}, which is not searched above it in the file")
        result[name] = tuple(values) if isinstance(values, list) else (values,)
    return result


def suggest(trial: optuna.Trial, dimensions: list[Dimension]) -> dict[str, Any]:
    """One trial's values (as Optuna records them): each dimension drawn in order, a conditional one only where
    its condition holds."""
    drawn: dict[str, Any] = {}
    for dimension in dimensions:
        if dimension.applies(drawn):
            drawn[dimension.name] = dimension.suggest(trial)
    return drawn


def recipe_values(params: dict[str, Any], dimensions: list[Dimension]) -> dict[str, Any]:
    """The recipe fields a trial's values set (a choice of several fields expanded)."""
    by_name = {dimension.name: dimension for dimension in dimensions}
    values: dict[str, Any] = {}
    for name, value in params.items():
        values.update(by_name[name].fields(value) if name in by_name else {name: value})
    return values


def grid(dimensions: list[Dimension], where: str) -> dict[str, list[Any]]:
    """The search space for Optuna's GridSampler: every dimension must be choices, none conditional."""
    for dimension in dimensions:
        if dimension.kind != "choices" or dimension.when:
            raise UserError(f"{where}: a grid needs choices for every field and no when; [{dimension.name}] is not so")
    return {dimension.name: list(dimension.choices) for dimension in dimensions}
