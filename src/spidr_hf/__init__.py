"""SpidR and DinoSR as Hugging Face Transformers models.

Importing this package registers the model with the Auto classes (`AutoConfig`, `AutoModel`,
`AutoModelForPreTraining`, `AutoFeatureExtractor`, and the heads' `AutoModelForCTC`, `AutoModelForAudioClassification`,
`AutoModelForAudioFrameClassification`, `AutoModelForAudioXVector`) and marks the classes for remote code, so that
`save_pretrained` writes an `auto_map` and the code files that `trust_remote_code=True` loads. It also registers the
`spidr-features` and `spidr-units` pipeline tasks.
"""

import transformers
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForPreTraining

from .model.configuration_spidr import SpidrConfig
from .model.feature_extraction_spidr import SpidrFeatureExtractor
from .model.modeling_spidr import (
    HEAD_AUTO_CLASSES,
    HEAD_CLASSES,
    SpidrForAudioFrameClassification,
    SpidrForCTC,
    SpidrForPreTraining,
    SpidrForSequenceClassification,
    SpidrForXVector,
    SpidrModel,
    SpidrPreTrainedModel,
    compute_span_mask,
)
from .model.pipeline_spidr import SpidrFeaturesPipeline, SpidrUnitsPipeline, register_pipelines

AutoConfig.register(SpidrConfig.model_type, SpidrConfig, exist_ok=True)
AutoModel.register(SpidrConfig, SpidrModel, exist_ok=True)
AutoModelForPreTraining.register(SpidrConfig, SpidrForPreTraining, exist_ok=True)
AutoFeatureExtractor.register(SpidrConfig, SpidrFeatureExtractor, exist_ok=True)
for _head_name, _auto_name in HEAD_AUTO_CLASSES.items():
    getattr(transformers, _auto_name).register(SpidrConfig, HEAD_CLASSES[_head_name], exist_ok=True)
    HEAD_CLASSES[_head_name].register_for_auto_class(_auto_name)

SpidrConfig.register_for_auto_class()
SpidrModel.register_for_auto_class("AutoModel")
SpidrForPreTraining.register_for_auto_class("AutoModelForPreTraining")
SpidrFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
register_pipelines()

__version__ = "0.1.0"
__all__ = [
    "SpidrConfig",
    "SpidrFeatureExtractor",
    "SpidrFeaturesPipeline",
    "SpidrForAudioFrameClassification",
    "SpidrForCTC",
    "SpidrForPreTraining",
    "SpidrForSequenceClassification",
    "SpidrForXVector",
    "SpidrModel",
    "SpidrPreTrainedModel",
    "SpidrUnitsPipeline",
    "compute_span_mask",
]
