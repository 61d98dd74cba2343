"""
The one writer of a Hub-ready model folder, whatever made the model (pretraining, fine-tuning, `convert`, `kmeans`,
`push`): the weights and config, the processor (feature extractor, and a fine-tuned CTC model's tokenizer), the
remote-code files (the model's, and the custom pipelines') and the config's `custom_pipelines` entry, so that
`AutoModel*.from_pretrained(folder, trust_remote_code=True)` and `pipeline(task, model=folder, trust_remote_code=True)`
work without spidr_hf. A pretrained folder supports the `spidr-features` and `spidr-units` pipelines; a fine-tuned one
`spidr-features` (its student's) and the transformers pipeline of its head.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers.dynamic_module_utils import custom_object_save

from ..model.modeling_spidr import SpidrHeadModel, SpidrPreTrainedModel
from ..model.pipeline_spidr import SpidrFeaturesPipeline, custom_pipelines


def supported_pipelines(model: SpidrPreTrainedModel) -> list[str] | None:
    """The custom pipelines a folder of `model` supports (None: all of them)."""
    return ["spidr-features"] if isinstance(model, SpidrHeadModel) else None


@contextmanager
def hub_ready(model: SpidrPreTrainedModel, folder: str | os.PathLike) -> Iterator[None]:
    """
    Around the writing of `model`'s weights, config and processor into `folder` (by `save_hub_ready`, or by a
    Trainer's own saving of checkpoints and final model): the config names the pipelines the folder supports, and the
    remote-code files are added once the block is done.
    """
    model.config.custom_pipelines = custom_pipelines(supported_pipelines(model))
    yield
    custom_object_save(SpidrFeaturesPipeline, folder)  # copies pipeline_spidr.py (and the model files it imports)


def save_hub_ready(model: SpidrPreTrainedModel, folder: str | os.PathLike, *processors: Any) -> None:
    """Write `model` into `folder` Hub-ready, with `processors` (objects with `save_pretrained`: the feature extractor,
    a tokenizer; None ones are skipped)."""
    with hub_ready(model, folder):
        model.save_pretrained(folder)
        for processor in processors:
            if processor is not None:
                processor.save_pretrained(folder)
