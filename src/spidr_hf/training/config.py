"""
The config of a training run (pretraining, fine-tuning, a unit LM): a YAML or JSON file (`extends:` another) with
`--key=value` overrides, read into the run's argument dataclasses with one-line errors for unknown keys and values of
the wrong type.
"""

import dataclasses
import difflib
import enum
import json
import types
import typing
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..errors import ConfigError


def parse_config(
    argv: list[str],
    classes: tuple[type, ...],
    usage: str = "CONFIG [--key=value ...]",
) -> tuple:
    """
    Read `CONFIG [--key=value ...]` into the argument dataclasses `classes`: dotted
    keys reach into `model_config`, values are read as JSON, or else as strings. A `ConfigError` with `usage` when the
    config file is not first.
    """
    if not argv or argv[0].startswith("-"):
        raise ConfigError(f"the config file comes first: {usage}")
    values = read_config_file(Path(argv[0]))
    for override in argv[1:]:
        key, separator, raw = override.removeprefix("--").partition("=")
        if not separator:
            raise ConfigError(f"Overrides take the form --key=value, got {override!r}.")
        target = values
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = _parse_override(raw)
    check_value_types(values, classes)
    parser = HfArgumentParser(classes)
    try:
        parsed = parser.parse_dict(values, allow_extra_keys=False)
    except ValueError as error:  # a value TrainingArguments or a dataclass refuses: the user's, in one line
        raise ConfigError(" ".join(str(error).split())) from error
    for arguments in parsed:
        if isinstance(arguments, TrainingArguments):
            check_training_arguments(arguments)
    return parsed


# TrainingArguments' counts that must be at least 1, which it does not check itself (a batch size of 0 fails in the
# DataLoader, with a traceback, once the data is read)
POSITIVE_TRAINING_ARGUMENTS = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
)


def check_training_arguments(training_args: TrainingArguments) -> None:
    for name in POSITIVE_TRAINING_ARGUMENTS:
        if getattr(training_args, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(training_args, name)}")
    # TrainingArguments reads any max_steps below 1 as "train num_train_epochs": -1 says so, 0 is a slip that would
    # train whole epochs
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        raise ConfigError(f"max_steps must be at least 1 (or -1: num_train_epochs), got {training_args.max_steps}")


def check_value_types(values: dict[str, Any], classes: tuple[type, ...], prefix: str = "") -> None:
    """
    One line for a value whose type its field does not take (`--max_steps=abc`): the dataclasses take any value and
    would fail later with a traceback, or train with it. Fields typed in ways this does not know are not checked.
    """
    annotations = {f.name: f.type for cls in classes for f in dataclasses.fields(cls)}
    for key, value in values.items():
        annotation = annotations.get(key)
        if annotation is not None and not isinstance(annotation, str) and not _fits(value, annotation):
            raise ValueError(f"{prefix}{key} must be {_describe(annotation)}, got {value!r}")


def _fits(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, argument) for argument in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, annotation) or value in {member.value for member in annotation}
    if origin in (list, tuple):
        return isinstance(value, list | tuple)
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: left to the field


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(argument) for argument in typing.get_args(annotation)))
    if origin is typing.Literal:
        return " or ".join(map(repr, typing.get_args(annotation)))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return f"one of {[member.value for member in annotation]}"
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if annotation in names:
        return names[annotation]
    if origin in (list, tuple):
        return "a list"
    return "a mapping" if annotation is dict or origin is dict else str(annotation)


def read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """
    A YAML or JSON config. `extends: OTHER` (a path relative to the file) starts from OTHER's values, which the file's
    own override (its `model_config` entries one by one), so that a recipe variant states only what it changes.
    """
    if not path.is_file():
        raise ConfigError(f"Config file {path} not found.")
    if path.resolve() in seen:
        raise ConfigError(f"Config file {path} extends itself (through {' -> '.join(map(str, seen))}).")
    try:
        values = (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text()) or {}
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)  # YAML's line and column, 0-based; JSON's are 1-based
        line, column = (
            (mark.line + 1, mark.column + 1) if mark else (getattr(error, "lineno", 0), getattr(error, "colno", 0))
        )
        at = f" at line {line}, column {column}" if line else ""
        reason = getattr(error, "problem", None) or getattr(error, "msg", None) or type(error).__name__
        raise ConfigError(f"Config file {path} cannot be parsed{at}: {reason}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of option names to values.")
    base = values.pop("extends", None)
    if base is None:
        return values
    merged = read_config_file(path.parent / base, (*seen, path.resolve()))
    model_config = {**merged.get("model_config", {}), **values.pop("model_config", {})}
    return {**merged, **values, **({"model_config": model_config} if model_config else {})}


def _parse_override(raw: str) -> Any:
    """JSON values (numbers, true/false, lists), anything else as a string: `--save_strategy=no` stays "no"."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return {"true": True, "false": False}.get(raw.lower(), raw)


def check_known_keys(keys: Iterable[str], known: Collection[str], what: str) -> None:
    """One line naming the first key of `keys` that is not in `known`, and the closest known one (a misspelt key would
    otherwise be stored and ignored)."""
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown {what} key {key!r}{hint}")
