"""Setting up a pretraining run: its model arguments, the model, and the training arguments the run implies."""

import logging
from dataclasses import dataclass, field
from typing import Any

from ..model.configuration_spidr import SpidrConfig
from ..model.loading import load
from ..model.modeling_spidr import SpidrForPreTraining
from ..training.config import check_known_keys, check_value_types, parse_config
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


def parse_pretraining_config(argv: list[str]) -> tuple[ModelArguments, DataArguments, SpidrTrainingArguments]:
    """`CONFIG [--key=value ...]` of a pretraining run (training/train.py) into its three argument dataclasses."""
    return parse_config(argv, (ModelArguments, DataArguments, SpidrTrainingArguments))


def build_model(model_args: ModelArguments) -> SpidrForPreTraining:
    """The model to pretrain: the objective's preset with `model_config` over it, or the `init_from` model."""
    check_known_keys(model_args.model_config, SpidrConfig().to_dict(), "model_config")
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
