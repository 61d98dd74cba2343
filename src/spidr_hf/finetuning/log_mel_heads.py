"""
The log-mel baseline of fine-tuning (SUPERB's FBANK upstream): the heads of `SpidrForCTC` and
`SpidrForSequenceClassification` over the 80 log-mel energies of each SpidR frame (`evaluation.features.log_mel`,
the evaluation's baseline) instead of a SpidR model's layers. `training/finetune.py` trains them with `upstream:
log_mel`, so that a fine-tuning's figure can be read against what the spectrum alone gives. They are baselines, not
models to publish: their output folder holds the head's weights and the processor, which the pipelines do not load.
"""

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput

from ..evaluation.features import NUM_MEL_BINS, log_mel_batch
from ..model.configuration_spidr import SpidrConfig
from ..model.modeling_spidr import classification_loss, ctc_loss, mean_over_frames


class LogMelHead(nn.Module):
    """What both heads share: the config (of the SpidR model they stand beside) and the log-mel frames."""

    def __init__(self, config: SpidrConfig):
        super().__init__()
        self.config = config

    def log_mel_frames(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(batch, samples)` audio to `(batch, frames, 80)` log-mel frames and their `(batch, frames)` valid mask."""
        if attention_mask is None:
            lengths = torch.full(input_values.shape[:1], input_values.shape[1], device=input_values.device)
        else:
            lengths = attention_mask.sum(-1)
        frames, frame_mask = log_mel_batch(input_values, lengths)
        return frames, None if attention_mask is None else frame_mask


class LogMelForCTC(LogMelHead):
    """A linear CTC head over log-mel frames, as `SpidrForCTC`'s over a SpidR layer (blank: `config.pad_token_id`)."""

    def __init__(self, config: SpidrConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(NUM_MEL_BINS, config.vocab_size)

    def forward(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> CausalLMOutput:
        """`(batch, samples)` audio (and `(batch, target_length)` labels padded with -100) to `(batch, frames,
        vocab_size)` logits and the CTC loss."""
        frames, frame_mask = self.log_mel_frames(input_values, attention_mask)
        logits = self.lm_head(self.dropout(frames))
        loss = None if labels is None else ctc_loss(logits, labels, frame_mask, self.config)
        return CausalLMOutput(loss=loss, logits=logits)


class LogMelForSequenceClassification(LogMelHead):
    """`SpidrForSequenceClassification`'s head over log-mel frames: a projection, mean pooling, a classifier."""

    def __init__(self, config: SpidrConfig):
        super().__init__(config)
        self.projector = nn.Linear(NUM_MEL_BINS, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)

    def forward(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> SequenceClassifierOutput:
        """`(batch, samples)` audio (and `(batch,)` class indices) to `(batch, num_labels)` logits and the loss."""
        frames, frame_mask = self.log_mel_frames(input_values, attention_mask)
        logits = self.classifier(mean_over_frames(self.projector(frames), frame_mask))
        loss = None if labels is None else classification_loss(logits, labels, self.config.num_labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
