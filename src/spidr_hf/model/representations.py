"""
Features and units of a model for lists of decoded audio, in padded batches (through `SpidrPreTrainedModel.represent`),
as `spidr-hf evaluate` and `spidr-hf kmeans` consume them: per-utterance float32 tensors on the CPU.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .configuration_spidr import SAMPLING_RATE


@dataclass
class Representations:
    """Per-utterance frame features `(frames, dim)` by layer, and codebook units `(frames,)` by layer."""

    features: dict[int | None, list[torch.Tensor]]
    units: dict[int, list[torch.Tensor]]


class ModelRepresentations:
    """Layer results (and codebook-head units) of a SpidR model, computed in padded batches."""

    def __init__(self, model, feature_extractor, layers: Sequence[int], codebook_layers: Sequence[int], device):
        """`model` is a SpidrModel, or a SpidrForPreTraining when `codebook_layers` is not empty."""
        self.model = model.to(device).eval()
        self.feature_extractor = feature_extractor
        self.layers = list(layers)
        self.codebook_layers = list(codebook_layers)
        self.device = device

    @torch.no_grad()
    def __call__(self, audios: Sequence[np.ndarray], with_units: bool = True) -> Representations:
        inputs = self.feature_extractor(list(audios), sampling_rate=SAMPLING_RATE, return_tensors="pt").to(self.device)
        units = "codebook" if with_units and self.codebook_layers else None
        output = self.model.represent(**inputs, layers=self.layers, units=units, unit_layers=self.codebook_layers)
        features = {layer: [item.float().cpu() for item in items] for layer, items in output.features.items()}
        return Representations(
            features, {layer: [item.cpu() for item in items] for layer, items in output.units.items()}
        )
