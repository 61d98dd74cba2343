"""
Setting up a pretraining run from its config file: the arguments (`extends:` and `--key=value` overrides), the model,
the training arguments the run implies, the output folder check and the checkpoint to resume.
"""

import dataclasses
import difflib
import enum
import json
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, Trainer, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import TrainOutput, get_last_checkpoint

from ..errors import ConfigError
from ..model.configuration_spidr import SpidrConfig
from ..model.loading import load
from ..model.modeling_spidr import SpidrForPreTraining
from .data import DataArguments
from .trainer import SpidrTrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    objective: str = field(default="spidr", metadata={"help": "spidr or dinosr: the preset the config starts from."})
    model_config: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "SpidrConfig fields overriding the preset, e.g. {hidden_size: 256}."}
    )
    init_from: str | None = field(
        default=None, metadata={"help": "Start from this SpidrForPreTraining folder or Hub repo instead of scratch."}
    )


def parse_config(
    argv: list[str],
    usage: str = "CONFIG [--key=value ...]",
    classes: tuple[type, ...] = (ModelArguments, DataArguments, SpidrTrainingArguments),
) -> tuple:
    """
    Read `CONFIG [--key=value ...]` into the argument dataclasses `classes` (pretraining's three by default): dotted
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
        return parser.parse_dict(values, allow_extra_keys=False)
    except ValueError as error:  # a value TrainingArguments or a dataclass refuses: the user's, in one line
        raise ConfigError(" ".join(str(error).split())) from error


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
    values = (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text()) or {}
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


def build_model(model_args: ModelArguments) -> SpidrForPreTraining:
    """The model to pretrain: the objective's preset with `model_config` over it, or the `init_from` model."""
    known = set(SpidrConfig().to_dict())
    for key in model_args.model_config:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (see SpidrConfig)"
            raise ValueError(f"Unknown model_config key {key!r}{hint}")
    check_value_types(model_args.model_config, (SpidrConfig,), prefix="model_config.")
    if model_args.init_from:
        # Weights the folder lacks (the heads of a student-only folder) start at their initialisation
        return load(model_args.init_from, "full").model
    if model_args.objective == "dinosr":
        config = SpidrConfig.dinosr_base(**model_args.model_config)
    else:
        config = SpidrConfig(**{"objective": model_args.objective, **model_args.model_config})
    return SpidrForPreTraining(config)


def complete_training_arguments(
    training_args: SpidrTrainingArguments, data_args: DataArguments, config: SpidrConfig
) -> None:
    """Set the training arguments that follow from the data and the model, unless the config set them."""
    if data_args.pad:
        training_args.include_num_input_tokens_seen = "non_padding"  # audio hours without the padding
    if training_args.max_steps > config.freeze_step and training_args.ddp_find_unused_parameters is None:
        # The feature encoder stops receiving gradients at the freeze step, after DDP was set up
        training_args.ddp_find_unused_parameters = True


def check_output_dir(output_dir: Path, resume_from_checkpoint: str | None) -> None:
    """A run writes into a new folder or resumes one; a saved model with no checkpoint to resume is left alone."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} is a file")
    saved_model = (output_dir / "config.json").is_file()
    if resume_from_checkpoint is None and saved_model and not get_last_checkpoint(output_dir):
        raise ValueError(
            f"output_dir {output_dir} already holds a saved model (config.json) and no checkpoint to resume from; "
            "nothing was changed: choose another output_dir"
        )


def train_or_resume(trainer: Trainer) -> TrainOutput | None:
    """
    `trainer.train`, resumed from `checkpoint_to_resume`, and its `TrainOutput`; None when that checkpoint is at the
    run's last step already (a run killed after its last checkpoint, or run again when finished): its weights are
    loaded and nothing is trained, where the Trainer would take one step past `max_steps` (transformers 5.25 resumes
    at the next batch of the epoch before it checks the step count), so that a rerun would change a finished model.
    """
    checkpoint = checkpoint_to_resume(trainer.args)
    if checkpoint is not None:
        state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
        last_step = trainer.args.max_steps if trainer.args.max_steps > 0 else state.max_steps
        if state.global_step >= last_step:
            logger.info("%s is at the last step (%d): nothing left to train", checkpoint, state.global_step)
            trainer._load_from_checkpoint(checkpoint)  # the Trainer's own loading, as train() does it
            trainer.state = state
            return None
    return trainer.train(resume_from_checkpoint=checkpoint)


def checkpoint_to_resume(training_args) -> str | None:
    """`resume_from_checkpoint` if set, else the last checkpoint in `output_dir`: a stopped run goes on by itself."""
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None and Path(training_args.output_dir).is_dir():
        checkpoint = get_last_checkpoint(training_args.output_dir)
        if checkpoint:
            logger.info("Resuming from %s", checkpoint)
    return checkpoint
