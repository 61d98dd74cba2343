"""PyTorch SpidR / DinoSR model (arXiv 2512.20308)."""

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput, TokenClassifierOutput, XVectorOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_spidr import REPRESENTATIONS, SpidrConfig

UNIT_KINDS = ("codebook", "kmeans")  # the discrete units `represent` gives: codebook-head argmax, nearest centroid
logger = logging.get_logger(__name__)
# The Auto class of each fine-tuning head: every saved folder maps them, so that any SpidR folder fine-tunes through
# remote code without spidr_hf (`AutoModelForCTC.from_pretrained(folder, trust_remote_code=True, vocab_size=...)`)
HEAD_AUTO_CLASSES = {
    "SpidrForCTC": "AutoModelForCTC",
    "SpidrForSequenceClassification": "AutoModelForAudioClassification",
    "SpidrForAudioFrameClassification": "AutoModelForAudioFrameClassification",
    "SpidrForXVector": "AutoModelForAudioXVector",
}
# The transformers pipeline of the heads that have one
HEAD_PIPELINE_TASKS = {
    "SpidrForCTC": "automatic-speech-recognition",
    "SpidrForSequenceClassification": "audio-classification",
}
NORM_EPS = 1e-5  # epsilon of the input standardization, the instance norms and the codebook initialisation
RESTART_SPLIT = 0.05  # distance of each half of a codeword split to restart an idle one, relative to its norm
SDPA_ATTENTIONS_WARNING = (
    "`output_attentions=True` needs eager attention: with {} attention the outputs have no attention weights. Load "
    "the model with `attn_implementation='eager'` (or call `model.set_attn_implementation('eager')`) for them."
)


class SpidrCodebookStatistics(NamedTuple):
    """
    What a batch contributes to a codebook update. Statistics of several batches (the micro-batches of an optimizer
    step, the processes of a run) add up: applying their sum once is the update of the batches taken together.
    """

    counts: torch.Tensor  # (num_codebooks, codebook_size): masked frames assigned to each codeword
    sums: torch.Tensor  # (num_codebooks, codebook_size, hidden_size): the sum of those frames

    def merge(self, other: "SpidrCodebookStatistics") -> "SpidrCodebookStatistics":
        """The statistics of both batches taken together."""
        return SpidrCodebookStatistics(self.counts + other.counts, self.sums + other.sums)


class SpidrCodebookHealth(NamedTuple):
    """Per-codebook figures of one codebook update, each of shape `(num_codebooks,)`."""

    target_perplexity: torch.Tensor  # exp(entropy) of the codeword frequencies of the update's frames
    assigned: torch.Tensor  # codewords that got at least one frame in the update
    never_assigned: torch.Tensor  # codewords that got none since the start or their last restart
    restarted: torch.Tensor  # codewords restarted by this update
    frames: torch.Tensor  # masked frames in the update (all processes)


@dataclass
class SpidrRepresentations:
    """
    What [`SpidrPreTrainedModel.represent`] returns: each item's valid frames (padding trimmed), in the model's dtype
    and on its device.

    features: layer -> one `(frames_i, hidden_size)` tensor per item (layer results, or hidden states).
    units: layer -> one `(frames_i,)` LongTensor per item.
    lengths: valid frames of each item.
    """

    features: dict[int, list[torch.Tensor]]
    units: dict[int, list[torch.LongTensor]]
    lengths: list[int]


@dataclass
class SpidrModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, frames, hidden_size)`):
        Residual stream after the last encoder layer (after the final LayerNorm for pre-LN models).
    extract_features (`torch.FloatTensor` of shape `(batch_size, frames, conv_dim[-1])`):
        Output of the convolutional feature encoder.
    hidden_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states`):
        Entry 0 is the encoder input after the positional convolution and input norm, entry `i` the output of layer
        `i`. With a layer-index form of `output_hidden_states`, unselected entries are `None`.
    layer_results (`tuple(torch.FloatTensor)`, returned with `output_layer_results=True`):
        One tensor per layer (entry `i - 1` for layer `i`): the feed-forward output before the residual sum. These
        are SpidR's representations; the layer-6 result (`layer_results[5]`) is the recommended feature.
    attentions (`tuple(torch.FloatTensor)`, returned with `output_attentions=True`):
        Attention weights of each layer, with eager attention; other implementations compute none (an empty tuple and
        a warning, as in transformers' models).
    """

    last_hidden_state: torch.FloatTensor | None = None
    extract_features: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor | None, ...] | None = None
    layer_results: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SpidrForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`):
        Mean over masked frames of the cross-entropy between the heads' predictions and the teacher's codebook
        assignments, averaged over codebooks.
    target_perplexity (`torch.FloatTensor` of shape `()`):
        Mean over codebooks of `2 ** H(mean one-hot target)` over the masked frames.
    prediction_perplexity (`torch.FloatTensor` of shape `()`):
        Mean over codebooks of `2 ** H(mean predicted distribution)` over the masked frames.
    mask_time_indices (`torch.BoolTensor` of shape `(batch_size, frames)`):
        The masked frames the loss was computed on; None when none were (evaluation without masks: the loss is then
        over every valid frame).
    codebook_statistics (`SpidrCodebookStatistics`, returned in training mode with `defer_codebook_update=True`):
        This batch's contribution to the codebook update, to be summed with the other micro-batches' and applied once
        with `model.codebooks.apply_statistics`.
    logits (`tuple(torch.FloatTensor)` of shape `(batch_size, frames, codebook_size)`):
        The codebook heads' logits, entry `k` for encoder layer `config.codebook_layers[k]` (only the heads of the
        layers that ran when `num_layers` stops the encoder early). The argmax is the discrete unit.
    hidden_states, layer_results, attentions:
        The student's outputs, as in [`SpidrModelOutput`], when asked for.
    """

    loss: torch.FloatTensor | None = None
    target_perplexity: torch.FloatTensor | None = None
    prediction_perplexity: torch.FloatTensor | None = None
    mask_time_indices: torch.BoolTensor | None = None
    codebook_statistics: SpidrCodebookStatistics | None = None
    logits: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor | None, ...] | None = None
    layer_results: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def normalize_over_time(hidden_states: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """Standardize each channel of `(batch, time, channels)` over its utterance's valid frames (biased variance)."""
    if frame_mask is None:
        return F.instance_norm(hidden_states.transpose(1, 2), eps=NORM_EPS).transpose(1, 2)
    weights = frame_mask.unsqueeze(-1).to(hidden_states.dtype)
    count = weights.sum(1, keepdim=True).clamp(min=1)
    mean = (hidden_states * weights).sum(1, keepdim=True) / count
    var = ((hidden_states - mean).square() * weights).sum(1, keepdim=True) / count
    return (hidden_states - mean) * torch.rsqrt(var + NORM_EPS)


def conv_output_lengths(
    input_lengths: torch.Tensor | int, kernels: Sequence[int], strides: Sequence[int]
) -> torch.Tensor | int:
    """
    Frames produced by a stack of unpadded 1-d convolutions, floor((L - k) / s) + 1 per layer, never negative; a
    tensor of lengths or a Python int (which keeps torch.compile's graph free of tensor-to-int breaks).
    """
    for kernel, stride in zip(kernels, strides, strict=True):
        input_lengths = (input_lengths - kernel) // stride + 1  # floor division, for tensors as for ints
    return input_lengths.clamp(min=0) if isinstance(input_lengths, torch.Tensor) else max(input_lengths, 0)


def compute_span_mask(
    lengths: Sequence[int],
    max_frames: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int,
    generator: torch.Generator | None = None,
) -> torch.BoolTensor:
    """
    Draw SpidR's time masks for utterances of `lengths` valid frames, padded to `max_frames`.

    Each utterance of T frames gets `max(min_masks, int(mask_prob * T / mask_length + U[0, 1)))` spans of
    `mask_length` frames starting at distinct positions in `[0, T - mask_length)`; spans may overlap and are clipped
    to T. Every row is then cut down to a random subset of the smallest masked count in the batch, so all rows have
    the same number of masked frames. The random draws come in the same order as in the reference implementation,
    so a seeded generator gives the reference's masks.
    """
    # The reference draws one batch-level rounding number first and never uses it when lengths are known; drawing it
    # too keeps seeded masks identical to the reference's.
    torch.rand(1, generator=generator)
    positions_per_row = []
    for length in lengths:
        # float32 rounding, as in the reference
        num_spans = max(min_masks, int(mask_prob * length / mask_length + torch.rand(1, generator=generator)))
        start_range = length - mask_length
        if start_range <= num_spans:  # short utterance: widen the range so that enough distinct starts exist
            start_range = num_spans + 1
        starts = torch.randperm(start_range, generator=generator)[:num_spans]
        positions = (starts.unsqueeze(1) + torch.arange(mask_length)).flatten()
        positions_per_row.append(torch.unique(positions[positions < length]))
    num_masked = min((len(p) for p in positions_per_row), default=0)
    mask = torch.zeros(len(positions_per_row), max_frames, dtype=torch.bool)
    for row, positions in enumerate(positions_per_row):
        if len(positions) > num_masked:
            positions = positions[torch.randperm(len(positions), generator=generator)[:num_masked]]
        mask[row, positions] = True
    return mask


def channels_last_conv1d(hidden_states: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """
    Apply `conv` to `(batch, frames, channels)` inputs, giving `(batch, frames, channels)`.

    The convolution runs as a 2-d one on a channels-last view of height 1, whose output is channels-last too. In this
    layout the LayerNorms over channels that follow read and write contiguous memory, where Conv1d's
    `(batch, channels, frames)` layout needs a transposed copy before and after each of them (a fifth of the feature
    encoder's time on CPU, and it makes the GELUs slower). torch.compile traces it without shape guards beyond the
    convolution's own, unlike convolutions written as matrix products on strided views.
    """
    output = F.conv2d(
        hidden_states.unsqueeze(1).permute(0, 3, 1, 2),
        conv.weight.unsqueeze(2),
        conv.bias,
        stride=(1, conv.stride[0]),
        padding=(0, conv.padding[0]),
        groups=conv.groups,
    )
    return output.permute(0, 2, 3, 1).squeeze(1)


class SpidrConvLayer(GradientCheckpointingLayer):
    """
    Convolution, optional norm (LayerNorm over channels, or GroupNorm with one group per channel), GELU, on
    `(batch, frames, channels)` (see `channels_last_conv1d`).
    """

    def __init__(self, config: SpidrConfig, layer_id: int):
        super().__init__()
        in_dim = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_dim = config.conv_dim[layer_id]
        # Conv1d holds the weights (shapes, init, checkpoints); `channels_last_conv1d` runs them
        self.conv = nn.Conv1d(
            in_dim, out_dim, config.conv_kernel[layer_id], config.conv_stride[layer_id], bias=config.conv_bias
        )
        self.norm_type = config.feat_extract_norm if config.feat_extract_norm == "layer" or layer_id == 0 else None
        self.layer_norm: nn.Module | None = None
        if self.norm_type == "layer":
            self.layer_norm = nn.LayerNorm(out_dim, eps=NORM_EPS)
        elif self.norm_type == "group":
            self.layer_norm = nn.GroupNorm(out_dim, out_dim, eps=NORM_EPS, affine=True)

    def forward(self, hidden_states: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = channels_last_conv1d(hidden_states, self.conv)
        if self.norm_type == "layer":
            hidden_states = self.layer_norm(hidden_states)
        elif self.norm_type == "group":
            hidden_states = self._group_norm(hidden_states, lengths)
        if torch.is_grad_enabled() and hidden_states.requires_grad:
            return F.gelu(hidden_states)
        # Without autograd, in place: the first layers' outputs are larger than malloc's mmap threshold, so a new
        # output means fresh pages from the OS, which costs several times the GELU itself
        return torch.ops.aten.gelu_(hidden_states)

    def _group_norm(self, hidden_states: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """GroupNorm over the valid positions only, so that padding does not change an utterance's output."""
        valid = None
        if lengths is not None:
            valid = torch.arange(hidden_states.shape[1], device=hidden_states.device) < lengths.unsqueeze(1)
        return normalize_over_time(hidden_states, valid) * self.layer_norm.weight + self.layer_norm.bias


class SpidrFeatureEncoder(nn.Module):
    """Convolutional feature encoder: raw 16 kHz samples to 50 Hz frames."""

    def __init__(self, config: SpidrConfig):
        super().__init__()
        self.config = config
        self.conv_layers = nn.ModuleList(SpidrConvLayer(config, i) for i in range(config.num_feat_extract_layers))

    def forward(self, input_values: torch.Tensor, sample_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`(batch, samples)` to `(batch, frames, channels)`."""
        hidden_states = input_values.unsqueeze(-1)
        if self._needs_input_grad(hidden_states):
            # Reentrant checkpointing gives a layer's parameters gradients only when its input requires grad, which
            # raw audio does not (wav2vec2 does the same). A detached copy leaves the caller's tensor as it is
            hidden_states = hidden_states.detach().requires_grad_()
        lengths = sample_lengths
        for layer, kernel, stride in zip(
            self.conv_layers, self.config.conv_kernel, self.config.conv_stride, strict=True
        ):
            if lengths is not None:
                lengths = conv_output_lengths(lengths, (kernel,), (stride,))
            hidden_states = layer(hidden_states, lengths if layer.norm_type == "group" else None)
        return hidden_states

    def _needs_input_grad(self, hidden_states: torch.Tensor) -> bool:
        """Whether checkpointed layers are trained on an input without grad. Only then: elsewhere a grad for the
        audio would cost the first convolution's input gradient for nothing."""
        return (
            self.training
            and torch.is_grad_enabled()
            and not hidden_states.requires_grad
            and any(layer.gradient_checkpointing for layer in self.conv_layers)
            and any(p.requires_grad for p in self.parameters())
        )


class SpidrFeatureProjection(nn.Module):
    def __init__(self, config: SpidrConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(hidden_states))


class SpidrPositionalConvLayer(nn.Module):
    def __init__(self, config: SpidrConfig):
        super().__init__()
        kernel = config.pos_conv_kernel_size
        self.conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            kernel_size=kernel,
            padding=kernel // 2,
            groups=config.num_conv_pos_embedding_groups,
        )
        self.trim = 1 if kernel % 2 == 0 else 0  # an even kernel with padding k // 2 gives one frame too many
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, frames, channels)` in and out."""
        hidden_states = channels_last_conv1d(hidden_states, self.conv)
        if self.trim:
            hidden_states = hidden_states[:, : -self.trim]
        return F.gelu(self.layer_norm(hidden_states))


class SpidrPositionalConvEmbedding(nn.Module):
    """Grouped convolutions whose output is added to the encoder input; padded frames are zeroed before each one."""

    def __init__(self, config: SpidrConfig):
        super().__init__()
        self.layers = nn.ModuleList(SpidrPositionalConvLayer(config) for _ in range(config.conv_pos_depth))

    def forward(self, hidden_states: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = None if frame_mask is None else frame_mask.unsqueeze(-1).to(hidden_states.dtype)
        for layer in self.layers:
            if keep is not None:
                hidden_states = hidden_states * keep
            hidden_states = layer(hidden_states)
        if keep is not None:
            hidden_states = hidden_states * keep
        return hidden_states


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class SpidrAttention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection."""

    def __init__(self, config: SpidrConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_causal = False
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, frames, hidden = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, frames, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.out_proj(attn_output.reshape(batch, frames, hidden)), attn_weights


class SpidrFeedForward(nn.Module):
    def __init__(self, config: SpidrConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output_dense(self.intermediate_dropout(F.gelu(self.intermediate_dense(hidden_states))))


class SpidrEncoderLayer(GradientCheckpointingLayer):
    """Post-LN layer. Returns the new residual stream and the layer result (feed-forward output)."""

    def __init__(self, config: SpidrConfig):
        super().__init__()
        self.attention = SpidrAttention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = SpidrFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        skip: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden_states
        attn_output, _ = self.attention(hidden_states, attention_mask, **kwargs)
        hidden_states = self.layer_norm(residual + self.dropout(attn_output))
        layer_result = self.feed_forward(hidden_states)
        hidden_states = self.final_layer_norm(hidden_states + self.dropout(layer_result))
        if skip is not None:  # LayerDrop: the residual stream passes unchanged, the layer result is still used
            hidden_states = torch.where(skip, residual, hidden_states)
        return hidden_states, layer_result


class SpidrEncoderLayerStableLayerNorm(SpidrEncoderLayer):
    """Pre-LN layer (`do_stable_layer_norm=True`)."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        skip: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden_states
        attn_output, _ = self.attention(self.layer_norm(hidden_states), attention_mask, **kwargs)
        hidden_states = residual + self.dropout(attn_output)
        layer_result = self.feed_forward(self.final_layer_norm(hidden_states))
        hidden_states = hidden_states + self.dropout(layer_result)
        if skip is not None:
            hidden_states = torch.where(skip, residual, hidden_states)
        return hidden_states, layer_result


class SpidrEncoderOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (batch, frames, hidden)
    layer_results: tuple[torch.Tensor, ...] | None  # one (batch, frames, hidden) per layer that ran, when asked for


class SpidrEncoder(nn.Module):
    """Positional convolution, input norm and the layer stack. The student and the teacher are two of these."""

    def __init__(self, config: SpidrConfig):
        super().__init__()
        self.config = config
        self.pos_conv_embed = SpidrPositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        layer_class = SpidrEncoderLayerStableLayerNorm if config.do_stable_layer_norm else SpidrEncoderLayer
        self.layers = nn.ModuleList(layer_class(config) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        hidden_states: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        num_layers: int | None = None,
        output_layer_results: bool = False,
        **kwargs,
    ) -> SpidrEncoderOutput:
        """
        `(batch, frames, hidden)` features and the `(batch, frames)` valid-frame mask (None without padding) to the
        residual stream and, with `output_layer_results`, each layer's result. Runs the first `num_layers` layers (all
        by default); the final LayerNorm of pre-LN models is applied only when all layers run.
        """
        num_layers = len(self.layers) if num_layers is None else num_layers
        hidden_states = hidden_states + self.pos_conv_embed(hidden_states, frame_mask)
        if not self.config.do_stable_layer_norm:
            hidden_states = self.layer_norm(hidden_states)
        hidden_states = self.dropout(hidden_states)
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=frame_mask
        )
        skips = None
        if self.training and self.config.layerdrop > 0:
            skips = torch.rand(len(self.layers), device=hidden_states.device) <= self.config.layerdrop
        layer_results = []
        for index, layer in enumerate(self.layers[:num_layers]):
            skip = None if skips is None else skips[index]
            hidden_states, layer_result = layer(hidden_states, attention_mask, skip, **kwargs)
            if output_layer_results:
                layer_results.append(layer_result)
        if self.config.do_stable_layer_norm and num_layers == len(self.layers):
            hidden_states = self.layer_norm(hidden_states)
        return SpidrEncoderOutput(hidden_states, tuple(layer_results) if output_layer_results else None)


class SpidrPreTrainedModel(PreTrainedModel):
    config: SpidrConfig
    config_class = SpidrConfig
    base_model_prefix = "spidr"
    main_input_name = "input_values"
    input_modalities = "audio"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # Only the attention implementations the tests run are declared; flash-attn needs a CUDA GPU and its package
    _supports_flash_attn = False
    _supports_flex_attn = True
    _no_split_modules = ["SpidrEncoderLayer", "SpidrEncoderLayerStableLayerNorm"]
    # The modules kept in fp32 whatever dtype the model is loaded in are named by each class, for the modules it has
    # (`SpidrForPreTraining`: teacher, codebooks, heads; `SpidrModel`: its k-means centroids, when it has some; a model
    # holding a `SpidrModel` adds those of it). Each also creates them in fp32, so that `_from_config(config,
    # dtype=...)` and `from_pretrained(..., dtype=...)` agree.
    _keep_in_fp32_modules_strict = []
    # SpidrEncoderLayer matches the pre-LN subclass too. Layer results are returned by the encoder itself rather than
    # recorded: the teacher, a bare encoder, needs them as well.
    _can_record_outputs = {
        "hidden_states": OutputRecorder(SpidrEncoderLayer, index=0),
        "attentions": OutputRecorder(SpidrAttention, index=1),
    }

    def _initialize_weights(self, module: nn.Module, is_custom_code: bool = False) -> None:
        # Transformers skips parameter-less modules of custom code, such as SpidrAttention and SpidrFeedForward, in
        # case their init ignores the "already loaded" flags. `_init_weights` below uses only flag-aware init functions
        # (transformers.initialization, and torch.nn.init under transformers' guard via reset_parameters).
        super()._initialize_weights(module, is_custom_code=False)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The paper's init: N(0, 0.02) encoder Linears, Xavier attention, Kaiming feature-encoder convolutions."""
        std = self.config.initializer_range
        if isinstance(module, SpidrAttention):
            init.xavier_uniform_(module.qkv_proj.weight, gain=1 / math.sqrt(2))
            if module.qkv_proj.bias is not None:
                init.zeros_(module.qkv_proj.bias)
            init.xavier_uniform_(module.out_proj.weight)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, SpidrFeedForward):
            for linear in (module.intermediate_dense, module.output_dense):
                init.normal_(linear.weight, mean=0.0, std=std)
                init.zeros_(linear.bias)
        elif isinstance(module, SpidrConvLayer):
            module.conv.reset_parameters()
            init.kaiming_normal_(module.conv.weight)
        elif isinstance(module, nn.LayerNorm | nn.GroupNorm):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
        elif isinstance(module, SpidrPositionalConvLayer | SpidrFeatureProjection):
            # PyTorch's default init, as in the paper
            for child in module.children():
                if isinstance(child, nn.Conv1d | nn.Linear):
                    child.reset_parameters()
        elif isinstance(module, SpidrKMeans):
            # Centroids come only from the weights (`spidr-hf kmeans`): not loaded, they stay NaN and say so when used
            init.constant_(module.centroids, float("nan"))
        elif isinstance(module, SpidrCodebooks):
            init.copy_(module.codebook, module.initial_codebook())
            init.ones_(module.counts)
            init.zeros_(module.idle_updates)
            init.zeros_(module.ever_assigned)
        elif isinstance(module, SpidrHeadModel):
            # wav2vec2's head init: N(0, initializer_range) linear maps, zero biases, equal layer weights
            for name, child in module.named_children():
                for part in child.modules() if name != "spidr" else ():
                    if isinstance(part, nn.Linear | SpidrTDNNLayer):
                        linear = part.kernel if isinstance(part, SpidrTDNNLayer) else part
                        init.normal_(linear.weight, mean=0.0, std=std)
                        init.zeros_(linear.bias)
                    elif isinstance(part, SpidrAMSoftmaxLoss):
                        init.normal_(part.weight)
            if getattr(module, "layer_weights", None) is not None:
                init.constant_(module.layer_weights, 1.0 / module.layer_weights.numel())
        elif isinstance(module, SpidrForPreTraining):
            for head in module.heads:
                head.reset_parameters()
            init.uniform_(module.mask_embedding, 0.0, 1.0)
            # The teacher starts with the student's positional convolution (its other weights are drawn anew)
            for teacher_param, student_param in zip(
                module.teacher.pos_conv_embed.parameters(),
                module.spidr.encoder.pos_conv_embed.parameters(),
                strict=True,
            ):
                init.copy_(teacher_param, student_param)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        kmeans = (loaded[0] if isinstance(loaded, tuple) else loaded).base_model.kmeans
        if kmeans is not None:  # at load, in float32 (the centroids stay so whatever the dtype)
            kmeans.check_matches_config()
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        kmeans = self.base_model.kmeans
        if kmeans is not None and torch.isfinite(kmeans.centroids).all():
            # Of the centroids saved now (cast or edited since they were set, too): the config describes its weights
            self.config.kmeans_centroids_sha256 = kmeans.expected_sha256 = centroids_sha256(kmeans.centroids)
        if self._auto_class is not None:
            # Whichever class is saved, let both AutoModel and AutoModelForPreTraining load the folder as remote code
            module = __name__.split(".")[-1]
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": f"{module}.SpidrModel",
                "AutoModelForPreTraining": f"{module}.SpidrForPreTraining",
                **{auto: f"{module}.{head}" for head, auto in HEAD_AUTO_CLASSES.items()},
            }
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def represent(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        layers: Sequence[int] = (),
        representation: str = "layer_results",
        units: str | None = None,
        unit_layers: Sequence[int] | None = None,
    ) -> SpidrRepresentations:
        """
        Features of `layers` and/or discrete units of `unit_layers` from one forward pass that stops after the last
        layer needed, trimmed to each item's valid frames: the call behind the pipelines, `spidr-hf extract`,
        `spidr-hf evaluate`, `spidr-hf kmeans`, `get_units` and `get_kmeans_units`.

        Args:
            input_values (`torch.FloatTensor` of shape `(batch_size, samples)`), attention_mask (*optional*): as
                for `forward`.
            layers: 1-based layers to return features of (0 too for `"hidden_states"`: the encoder input).
            representation: `"layer_results"` (each layer's feed-forward output, the paper's features) or
                `"hidden_states"` (the residual stream after the layer).
            units: `"codebook"` (argmax of the layer's codebook head; needs the model with its heads,
                [`SpidrForPreTraining`]), `"kmeans"` (nearest of the centroids stored by `spidr-hf kmeans`) or None.
            unit_layers: layers to return units of; by default `config.default_unit_layer` for codebook units and
                the centroids' layer for k-means units.
        """
        padded, lengths = self._padded_representations(
            input_values, attention_mask, layers, representation, units, unit_layers
        )
        features, unit_values = (
            {layer: [values[item, :length] for item, length in enumerate(lengths)] for layer, values in kind.items()}
            for kind in padded
        )
        return SpidrRepresentations(features, unit_values, lengths)

    def _padded_representations(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None,
        layers: Sequence[int],
        representation: str,
        units: str | None,
        unit_layers: Sequence[int] | None,
    ) -> tuple[tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]], list[int]]:
        """`represent`'s features `(batch, frames, hidden)` and units `(batch, frames)` by layer, padded, and the
        valid frames of each item."""
        config = self.config
        if representation not in REPRESENTATIONS:
            raise ValueError(f"`representation` must be one of {REPRESENTATIONS}, got {representation!r}.")
        first = 1 if representation == "layer_results" else 0
        for layer in layers:
            config.check_layer(layer, representation)
        unit_layers = self._check_unit_layers(units, unit_layers)
        codebook = units == "codebook"
        # One place for which layers run: the last one asked for (at least one, also for the encoder input), or all
        # of them for DinoSR codebook units, whose heads read the final output
        num_layers = None if codebook and config.objective == "dinosr" else max([*layers, *unit_layers, 1])
        student = self.base_model
        output = student(
            input_values,
            attention_mask,
            num_layers=num_layers,
            output_layer_results=representation == "layer_results" or units is not None,
            output_hidden_states=representation == "hidden_states" and len(layers) > 0,
            output_attentions=False,
            return_dict=True,  # whatever `config.return_dict` says: the outputs are read by name below
        )
        source = output.layer_results if representation == "layer_results" else output.hidden_states
        features = {layer: source[layer - first] for layer in layers}
        if codebook:
            unit_values = {layer: self._head_logits(output, layer).argmax(-1) for layer in unit_layers}
        else:
            unit_values = {layer: student.kmeans(output.layer_results[layer - 1]) for layer in unit_layers}
        num_frames = output.last_hidden_state.shape[1]
        if attention_mask is None:
            lengths = [num_frames] * input_values.shape[0]
        else:
            lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1)).tolist()
        return (features, unit_values), lengths

    def _check_unit_layers(self, units: str | None, unit_layers: Sequence[int] | None) -> list[int]:
        """The layers to give `units` of (none without units); a layer without such units is an error."""
        config = self.config
        if units is None:
            return []
        if units == "codebook":
            if not hasattr(self, "heads"):
                raise ValueError(
                    f"Codebook units need the model with its codebook heads (AutoModelForPreTraining), got "
                    f"{type(self).__name__}."
                )
            unit_layers = [config.default_unit_layer] if unit_layers is None else list(unit_layers)
            return [config.check_layer(layer, units=units) for layer in unit_layers]
        if units == "kmeans":
            if self.base_model.kmeans is None:
                raise ValueError("This model has no k-means centroids: fit them with `spidr-hf kmeans`.")
            unit_layers = [config.kmeans_layer] if unit_layers is None else list(unit_layers)
            return [config.check_layer(layer, units=units) for layer in unit_layers]
        raise ValueError(f"`units` must be one of {UNIT_KINDS} (or None), got {units!r}.")

    def _get_feat_extract_output_lengths(self, input_lengths: torch.Tensor | int) -> torch.Tensor:
        """Number of frames for inputs of `input_lengths` samples."""
        return conv_output_lengths(torch.as_tensor(input_lengths), self.config.conv_kernel, self.config.conv_stride)

    def _num_frames(self, num_samples: int) -> int:
        """Number of frames for `num_samples` samples, as a Python int (no tensor: torch.compile keeps one graph)."""
        return conv_output_lengths(num_samples, self.config.conv_kernel, self.config.conv_stride)

    def _fill_padding(self, units: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.LongTensor:
        """Units `(batch, frames)` with -1 on the frames of right padding."""
        frame_mask = self._get_feature_vector_attention_mask(units.shape[1], attention_mask)
        return units if frame_mask is None else units.masked_fill(~frame_mask, -1)

    def _get_feature_vector_attention_mask(
        self, num_frames: int, attention_mask: torch.Tensor | None
    ) -> torch.BoolTensor | None:
        """The `(batch, num_frames)` valid-frame mask for a sample-level `attention_mask` (None: all frames valid)."""
        if attention_mask is None:
            return None
        frame_lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1))
        return torch.arange(num_frames, device=attention_mask.device) < frame_lengths[:, None]

    def _check_inputs(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if input_values.dim() != 2:
            raise ValueError(
                f"`input_values` must have shape (batch, samples), got {tuple(input_values.shape)}. Use the "
                "feature extractor to turn mono 16 kHz audio into model inputs."
            )
        if not input_values.is_floating_point():
            raise ValueError(f"`input_values` must be a floating-point tensor, got {input_values.dtype}.")
        if input_values.shape[1] < self.config.receptive_field:
            raise ValueError(
                f"`input_values` has {input_values.shape[1]} samples, fewer than the model's receptive field of "
                f"{self.config.receptive_field} samples ({self.config.receptive_field / 16:.0f} ms at 16 kHz)."
            )
        if attention_mask is not None and attention_mask.shape != input_values.shape:
            raise ValueError(
                f"`attention_mask` must have the shape of `input_values` {tuple(input_values.shape)}, "
                f"got {tuple(attention_mask.shape)}."
            )


class SpidrModel(SpidrPreTrainedModel):
    """The SpidR student network: feature encoder, projection and Transformer encoder (what `AutoModel` loads)."""

    # What a pretraining folder (teacher, codebook heads, codebooks, mask embedding) or a fine-tuned one (the heads of
    # SpidrHeadModel) holds beside the student
    _keys_to_ignore_on_load_unexpected = [
        r"teacher\.",
        r"heads\.",
        r"codebooks\.",
        r"mask_embedding",
        r"^(lm_head|projector|classifier|tdnn|embedding|objective)\.",
        r"^layer_weights$",
        # Centroids that the config does not name: a `spidr-hf kmeans` cut before it wrote the config. The model is
        # then as it was before (the config describes it)
        r"kmeans\.centroids",
    ]

    def __init__(self, config: SpidrConfig):
        super().__init__(config)
        config.check_values()
        self.feature_extractor = SpidrFeatureEncoder(config)
        self.feature_projection = SpidrFeatureProjection(config)
        self.encoder = SpidrEncoder(config)
        self.kmeans = SpidrKMeans(config) if config.kmeans_layer is not None else None
        # Units are the nearest centroid: bf16 features are upcast to the fp32 centroids
        self._keep_in_fp32_modules_strict = ["kmeans"] if self.kmeans is not None else []
        self.post_init()

    def set_kmeans_centroids(self, layer: int, centroids: torch.Tensor) -> None:
        """Store k-means `centroids` `(num_clusters, hidden_size)` of the layer results of encoder `layer` (1-based)."""
        if centroids.shape[1] != self.config.hidden_size:
            raise ValueError(f"Centroids must have {self.config.hidden_size} dimensions, got {centroids.shape[1]}.")
        self.config.kmeans_layer, self.config.kmeans_num_clusters = layer, centroids.shape[0]
        self.config.kmeans_centroids_sha256 = centroids_sha256(centroids)
        self.config.check_values()
        self.kmeans = SpidrKMeans(self.config).to(centroids.device)
        self.kmeans.centroids.copy_(centroids)
        self._keep_in_fp32_modules_strict.add("kmeans")

    @torch.no_grad()
    def get_kmeans_units(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.LongTensor:
        """
        k-means units `(batch, frames)`: the nearest centroid of each frame's layer result at `config.kmeans_layer`
        (the encoder stops there). Padded frames are -1.
        """
        (_, units), _ = self._padded_representations(input_values, attention_mask, (), "layer_results", "kmeans", None)
        return self._fill_padding(units[self.config.kmeans_layer], attention_mask)

    def freeze_feature_encoder(self) -> None:
        """Stop gradients to the convolutional feature encoder and the feature projection."""
        self.feature_extractor.requires_grad_(False)
        self.feature_projection.requires_grad_(False)

    def embed(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Return the feature-encoder output, the projected features and the valid-frame mask (None without padding)."""
        self._check_inputs(input_values, attention_mask)
        sample_lengths = None if attention_mask is None else attention_mask.sum(-1)
        # Audio comes in fp32; a model loaded in half precision takes it in its own dtype
        input_values = input_values.to(self.feature_extractor.conv_layers[0].conv.weight.dtype)
        extract_features = self.feature_extractor(input_values, sample_lengths)
        frame_mask = self._get_feature_vector_attention_mask(extract_features.shape[1], attention_mask)
        return extract_features, self.feature_projection(extract_features), frame_mask

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        mask_embedding: torch.Tensor | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        output_layer_results: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        num_layers: int | None = None,
        **kwargs,
    ) -> SpidrModelOutput:
        r"""
        input_values (`torch.FloatTensor` of shape `(batch_size, samples)`):
            16 kHz mono audio, standardized per utterance by [`SpidrFeatureExtractor`].
        attention_mask (`torch.LongTensor` of shape `(batch_size, samples)`, *optional*):
            1 for real samples, 0 for right padding. Valid frames of a padded batch equal those of the unpadded items.
        mask_time_indices (`torch.BoolTensor` of shape `(batch_size, frames)`, *optional*):
            Frames whose projected features are replaced by `mask_embedding` before the Transformer encoder, as in
            pretraining ([`SpidrForPreTraining`] passes its masks and learned embedding).
        mask_embedding (`torch.FloatTensor` of shape `(hidden_size,)`, *optional*):
            What masked frames become; required with `mask_time_indices`.
        output_layer_results (`bool`, *optional*):
            Return every layer's feed-forward output (the paper's features; layer 6 recommended).
        num_layers (`int`, *optional*):
            Run only the first `num_layers` encoder layers: enough for the features of an early layer at a fraction
            of the cost (layer 6 of 12 halves the encoder's work). The outputs then stop at that layer, and
            `last_hidden_state` is its output (without the final LayerNorm of pre-LN models).
        """
        if (output_attentions or self.config.output_attentions) and self.config._attn_implementation != "eager":
            # As transformers' models do: the outputs come, without the weights that only eager attention computes
            logger.warning_once(SDPA_ATTENTIONS_WARNING.format(self.config._attn_implementation))
        if num_layers is not None and not 1 <= num_layers <= self.config.num_hidden_layers:
            raise ValueError(f"`num_layers` must be in [1, {self.config.num_hidden_layers}], got {num_layers}.")
        extract_features, hidden_states, frame_mask = self.embed(input_values, attention_mask)
        hidden_states = F.dropout(hidden_states, p=self.config.feat_proj_dropout, training=self.training)
        if mask_time_indices is not None:
            if mask_embedding is None:
                raise ValueError("`mask_time_indices` needs the `mask_embedding` that masked frames become.")
            if mask_time_indices.shape != hidden_states.shape[:2]:
                raise ValueError(
                    f"`mask_time_indices` must have shape (batch, frames) = {tuple(hidden_states.shape[:2])}, "
                    f"got {tuple(mask_time_indices.shape)}."
                )
            hidden_states = torch.where(
                mask_time_indices.bool().unsqueeze(-1), mask_embedding.to(hidden_states.dtype), hidden_states
            )
        encoder_output = self.encoder(
            hidden_states, frame_mask, num_layers=num_layers, output_layer_results=bool(output_layer_results), **kwargs
        )
        return SpidrModelOutput(
            last_hidden_state=encoder_output.last_hidden_state,
            extract_features=extract_features,
            layer_results=encoder_output.layer_results,
        )


def centroids_sha256(centroids: torch.Tensor) -> str:
    """SHA-256 of k-means centroids as float32 bytes: what the config records of the centroids stored with it."""
    return hashlib.sha256(centroids.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


class SpidrKMeans(nn.Module):
    """Centroids of one layer's results (`config.kmeans_layer`): nearest-centroid (L2) units, in fp32."""

    def __init__(self, config: SpidrConfig):
        super().__init__()
        # NaN until set or loaded (`check_fitted`), as `_init_weights` leaves them; fp32 whatever the default dtype
        self.register_buffer(
            "centroids", torch.full((config.kmeans_num_clusters, config.hidden_size), math.nan, dtype=torch.float32)
        )
        self.expected_sha256 = config.kmeans_centroids_sha256

    def check_matches_config(self) -> None:
        """One line, instead of other units, when the weights' centroids are not those the config was written with."""
        if torch.isfinite(self.centroids).all() and self.expected_sha256 not in (
            None,
            centroids_sha256(self.centroids),
        ):
            raise ValueError(
                "The k-means centroids of the weights are not those config.json names (kmeans_centroids_sha256): the "
                "folder's weights and config are out of step, e.g. after an interrupted `spidr-hf kmeans`; run the "
                "same command again."
            )

    def check_fitted(self) -> None:
        """One line, instead of units from uninitialised centroids, when the weights held no centroids."""
        if not torch.isfinite(self.centroids).all():
            raise ValueError(
                "The config names k-means centroids (kmeans_layer, kmeans_num_clusters) but the weights hold none "
                "(spidr.kmeans.centroids): fit them with `spidr-hf kmeans`, or remove those two config fields."
            )

    def forward(self, layer_results: torch.Tensor) -> torch.LongTensor:
        """`(batch, frames, hidden)` layer results to `(batch, frames)` centroid indices."""
        self.check_fitted()
        features = layer_results.float()
        centroids = self.centroids.float()
        # |x - c|^2 without the |x|^2 term, which is the same for every centroid of a frame
        distances = centroids.square().sum(-1) - 2 * features @ centroids.T
        return distances.argmin(-1)


def initial_codebook(num_codebooks: int, codebook_size: int, hidden_size: int) -> torch.Tensor:
    """
    The codebooks a new model starts with, `(num_codebooks, codebook_size, hidden_size)` in fp32 on the CPU: Gaussian
    codewords, each dimension standardized over the codewords (the paper's init). They are drawn from a generator seeded
    with the process's seed (`torch.initial_seed()`, which `torch.manual_seed` and `transformers.set_seed` set) rather
    than from the global random stream: a buffer must be the same whether `__init__` sets it or `init_weights` does
    after a meta-device build, whatever was drawn in between; runs seeded differently still start from different
    codebooks. (k-means initialised codebooks, `codebook_init_batches`, replace them from the data.)
    """
    generator = torch.Generator().manual_seed(torch.initial_seed())
    # On the CPU whatever the default device, where the generator is
    draws = torch.randn(
        num_codebooks, hidden_size, codebook_size, generator=generator, dtype=torch.float32, device="cpu"
    )
    return F.instance_norm(draws, eps=NORM_EPS).transpose(1, 2).contiguous()


class SpidrCodebooks(nn.Module):
    """
    One codebook of `codebook_size` codewords per target layer, kept as EMA sums: codeword v of codebook k is
    `codebook[k, v] / counts[k, v]`. Assignment and updates always run in fp32.

    Each codeword's usage is tracked too (`idle_updates`: updates since it last got a frame, `ever_assigned`: 1.0
    once it got one since the start or its last restart), for the health logs and for
    `config.codebook_restart_after`, which restarts codewords idle for that many updates by splitting the most used
    codewords of their codebook in two (see `_restart`).
    """

    def __init__(self, config: SpidrConfig):
        super().__init__()
        self.decay = config.codebook_decay
        self.restart_after = config.codebook_restart_after
        shape = (config.num_codebooks, config.codebook_size)
        # Every buffer starts as `_init_weights` sets it, so that both ways of building a model (`__init__`, and
        # `init_weights` after a meta-device build) agree; all fp32 whatever the default dtype
        codebook = initial_codebook(*shape, config.hidden_size)
        self.register_buffer("codebook", codebook.to(torch.get_default_device()))
        self.register_buffer("counts", torch.ones(shape, dtype=torch.float32))
        # Floats rather than integers or booleans: the module is kept in fp32 whatever dtype a model is loaded in
        self.register_buffer("idle_updates", torch.zeros(shape, dtype=torch.float32))
        self.register_buffer("ever_assigned", torch.zeros(shape, dtype=torch.float32))

    def initial_codebook(self) -> torch.Tensor:
        """The codebooks a new model starts with (see `initial_codebook`), on this module's device."""
        return initial_codebook(*self.codebook.shape).to(self.codebook.device)

    def codewords(self) -> torch.Tensor:
        """The codewords, `(num_codebooks, codebook_size, hidden)`, in fp32."""
        # `.float()` is a no-op on the fp32 buffers kept by `from_pretrained(dtype=...)`; after a plain
        # `model.to(torch.bfloat16)` it keeps the assignment in fp32, as the fp32 targets need
        return self.codebook.float() / self.counts.float().unsqueeze(-1)

    def assign(self, targets: torch.Tensor) -> torch.Tensor:
        """Index of the nearest (L2) codeword for targets of shape `(num_codebooks, n, hidden)`."""
        codewords = self.codewords()
        distances = torch.baddbmm(codewords.square().sum(-1).unsqueeze(1), targets, codewords.transpose(1, 2), alpha=-2)
        return distances.argmin(-1)

    @staticmethod
    def statistics(targets: torch.Tensor, onehot: torch.Tensor) -> SpidrCodebookStatistics:
        """Statistics of targets `(num_codebooks, n, hidden)` with weighted one-hot codes `(num_codebooks, n, V)`."""
        return SpidrCodebookStatistics(onehot.sum(1), torch.bmm(onehot.transpose(1, 2), targets))

    def zero_statistics(self) -> SpidrCodebookStatistics:
        """Statistics of no frame, to add batches' statistics to."""
        return SpidrCodebookStatistics(torch.zeros_like(self.counts), torch.zeros_like(self.codebook))

    @torch.no_grad()
    def update(self, targets: torch.Tensor, onehot: torch.Tensor) -> SpidrCodebookHealth:
        """EMA step with the weighted one-hot assignments `(num_codebooks, n, codebook_size)`, summed over processes."""
        return self.apply_statistics(self.statistics(targets, onehot))

    @torch.no_grad()
    def apply_statistics(self, statistics: SpidrCodebookStatistics) -> SpidrCodebookHealth:
        """
        One codebook update with `statistics` summed over all processes (every process must call it): the EMA step
        (codewords without frames stay as they are), usage tracking and, if enabled, restarts. Returns its health.
        """
        counts, sums = statistics
        if dist.is_available() and dist.is_initialized():
            # One collective for both statistics
            packed = torch.cat([sums.flatten(), counts.flatten()])
            dist.all_reduce(packed)
            sums, counts = packed[: sums.numel()].view_as(sums), packed[sums.numel() :].view_as(counts)
        # A no-op on the fp32 buffers (kept so by `from_pretrained(dtype=...)`); bf16 after a plain `.to(bfloat16)`
        counts, sums = counts.to(self.counts.dtype), sums.to(self.codebook.dtype)
        used = counts > 0
        if self.decay < 1.0:
            weight = torch.where(used, 1.0 - self.decay, 0.0).to(counts.dtype)  # unused codewords stay as they are
            self.counts.lerp_(counts, weight)
            self.codebook.lerp_(sums, weight.unsqueeze(-1))
        self.idle_updates.add_(1.0).masked_fill_(used, 0.0)
        self.ever_assigned.masked_fill_(used, 1.0)
        restarted = torch.zeros_like(used)
        if self.restart_after > 0 and self.decay < 1.0:
            restarted = self._restart(self.idle_updates >= self.restart_after, SpidrCodebookStatistics(counts, sums))
        frames = counts.sum(-1)
        probabilities = counts / frames.clamp(min=1).unsqueeze(-1)
        entropy = -(probabilities * torch.log(probabilities.clamp(min=1e-12))).sum(-1)
        return SpidrCodebookHealth(
            target_perplexity=entropy.exp(),
            assigned=used.sum(-1),
            never_assigned=(self.ever_assigned == 0).sum(-1),
            restarted=restarted.sum(-1),
            frames=frames,
        )

    def _restart(self, idle: torch.Tensor, statistics: SpidrCodebookStatistics) -> torch.Tensor:
        """
        Split the most used codewords of each codebook into its `idle` ones `(num_codebooks, V)`. A split codeword c,
        whose frames of this update (`statistics`, all processes) have the mean m, becomes `c + delta` and the idle one
        `c - delta`, each with half its count, where `delta` points from c to m with length `eps |c|`: a direction
        within its cluster, so that the next updates share its frames between the two halves. (LBG's `c (1 +- eps)`
        would move one half towards the data mean, where it draws frames from every cluster around.) Only codewords
        that got frames in this update are split, each at most once per update, most used (EMA count) first; idle
        codewords left over wait for the next update. Returns the restarted mask.
        """
        restarted = torch.zeros_like(idle)
        frame_counts, frame_sums = statistics
        for index, (idle_row, counts) in enumerate(zip(idle, self.counts, strict=True)):
            splittable = (frame_counts[index] > 0) & ~idle_row
            number = min(int(idle_row.sum()), int(splittable.sum()))
            if number == 0:
                continue
            idle_indices = idle_row.nonzero().squeeze(1)[:number]
            split = torch.where(splittable, counts, -1.0).topk(number).indices
            codewords = self.codebook[index, split] / counts[split].unsqueeze(-1)
            direction = frame_sums[index, split] / frame_counts[index, split].unsqueeze(-1) - codewords
            delta = F.normalize(direction, dim=-1) * codewords.norm(dim=-1, keepdim=True) * RESTART_SPLIT
            halves = counts[split] / 2
            self.counts[index, split] = halves
            self.counts[index, idle_indices] = halves
            self.codebook[index, split] = (codewords + delta) * halves.unsqueeze(-1)
            self.codebook[index, idle_indices] = (codewords - delta) * halves.unsqueeze(-1)
            self.idle_updates[index, idle_indices] = 0.0
            self.ever_assigned[index, idle_indices] = 0.0
            restarted[index, idle_indices] = True
        return restarted


class SpidrForPreTraining(SpidrPreTrainedModel):
    """
    SpidR / DinoSR self-distillation: the student (`self.spidr`), an EMA teacher encoder, one prediction head and one
    codebook per target layer, and the learned mask embedding.
    """

    # The Trainer passes `num_items_in_batch` (masked frames of the global batch) to `forward`
    accepts_loss_kwargs = True
    # EMA and codebook statistics need fp32. Units are an argmax: bf16 logits tie on about 1 % of a trained model's
    # frames (8-bit mantissa), so the heads keep fp32 and read bf16 features upcast. Each is created in fp32 below
    _keep_in_fp32_modules_strict = ["teacher", "codebooks", "heads"]
    # Codebook usage tracking came after the first releases; folders without it start from no usage
    _keys_to_ignore_on_load_missing = [r"codebooks\.idle_updates", r"codebooks\.ever_assigned"]
    # See SpidrModel's: centroids the config does not name
    _keys_to_ignore_on_load_unexpected = [r"kmeans\.centroids"]

    def __init__(self, config: SpidrConfig):
        super().__init__(config)
        config.check_values()
        self.spidr = SpidrModel(config)
        # In fp32 whatever the default dtype (`_keep_in_fp32_modules_strict`); `_init_weights` draws its weights
        self.teacher = SpidrEncoder(config).to(torch.float32)
        self.teacher.requires_grad_(False)
        self.heads = nn.ModuleList(
            nn.Linear(config.hidden_size, config.codebook_size, dtype=torch.float32) for _ in config.codebook_layers
        )
        self.codebooks = SpidrCodebooks(config)
        self.mask_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.freeze_untrained_parameters()
        self.post_init()
        self.teacher.eval()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        # Loading re-creates every parameter with requires_grad=True
        (loaded[0] if isinstance(loaded, tuple) else loaded).freeze_untrained_parameters()
        return loaded

    def freeze_untrained_parameters(self) -> None:
        """Set requires_grad=False on the teacher and, for SpidR, on the student's last norm."""
        self.teacher.requires_grad_(False)
        if self.config.objective == "spidr":
            # SpidR's heads read layer results, so the student's last norm never reaches the loss
            last_norm = (
                self.spidr.encoder.layer_norm
                if self.config.do_stable_layer_norm
                else self.spidr.encoder.layers[-1].final_layer_norm
            )
            last_norm.requires_grad_(False)

    def freeze_feature_encoder(self) -> None:
        """
        Stop gradients to the student's feature encoder and feature projection. The teacher has neither (it reads
        the student's projected features) and is never trained by gradients, only moved by `update_teacher`.
        """
        self.spidr.freeze_feature_encoder()

    def train(self, mode: bool = True) -> "SpidrForPreTraining":
        super().train(mode)
        self.teacher.eval()  # no dropout nor LayerDrop in the teacher, ever
        return self

    def teacher_decay(self, step: int) -> float:
        """EMA decay of the teacher at `step`; 1.0 means the teacher is frozen."""
        config = self.config
        if config.objective == "spidr":
            decay = 1 - (1 - config.ema_start_decay) * math.exp(-step / config.ema_timescale)
            return decay if 1 - decay > config.ema_threshold else 1.0
        if step < config.ema_final_step:
            return config.ema_final_decay - (config.ema_final_decay - config.ema_start_decay) * (
                1 - step / config.ema_final_step
            )
        return config.ema_final_decay if step < config.freeze_step else 1.0

    @torch.no_grad()
    def update_teacher(self, step: int) -> float:
        """
        Move the teacher towards the student after optimizer step `step` and return the decay used. The positional
        convolution is copied rather than averaged. From `config.freeze_step` the feature encoder and projection are
        frozen (`requires_grad=False`).
        """
        if step >= self.config.freeze_step:
            self.freeze_feature_encoder()
        decay = self.teacher_decay(step)
        if not 0.0 < decay < 1.0:
            return decay
        lerp_teacher, lerp_student, copy_teacher, copy_student = [], [], [], []
        student_params = dict(self.spidr.encoder.named_parameters())
        for name, teacher_param in self.teacher.named_parameters():
            student_param = student_params[name].detach().to(teacher_param.dtype)
            if name.startswith("pos_conv_embed."):
                copy_teacher.append(teacher_param)
                copy_student.append(student_param)
            else:
                lerp_teacher.append(teacher_param)
                lerp_student.append(student_param)
        torch._foreach_lerp_(lerp_teacher, lerp_student, 1.0 - decay)
        torch._foreach_copy_(copy_teacher, copy_student)
        return decay

    @torch.no_grad()
    def get_teacher_targets(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.BoolTensor | None]:
        """
        The teacher's targets `(num_codebooks, batch, frames, hidden)` (see `_teacher_targets`) and the valid-frame mask
        `(batch, frames)` (None without padding): what the codebooks are fitted to.
        """
        _, features, frame_mask = self.spidr.embed(input_values, attention_mask)
        return self._teacher_targets(features, frame_mask), frame_mask

    def _teacher_targets(self, features: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """Teacher layer results of the codebook layers, in fp32, normalized over each utterance's valid frames."""
        teacher_dtype = self.teacher.layer_norm.weight.dtype  # fp32 even when the student was loaded in half precision
        output = self.teacher(features.to(teacher_dtype), frame_mask, output_layer_results=True)
        first = self.config.codebook_layers[0]
        with torch.autocast(features.device.type, enabled=False):
            return torch.stack([normalize_over_time(r.float(), frame_mask) for r in output.layer_results[first - 1 :]])

    def _draw_masks(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.BoolTensor:
        """SpidR's time masks `(batch, frames)` for a batch, drawn with the config's masking parameters."""
        frames = self._num_frames(input_values.shape[1])
        if attention_mask is None:
            lengths = [frames] * input_values.shape[0]
        else:
            lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1)).tolist()
        config = self.config
        masks = compute_span_mask(
            lengths, frames, config.mask_time_prob, config.mask_time_length, config.mask_time_min_masks
        )
        return masks.to(input_values.device)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        defer_codebook_update: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
        return_loss: bool = True,
        num_layers: int | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        output_layer_results: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> SpidrForPreTrainingOutput | tuple:
        r"""
        mask_time_indices (`torch.BoolTensor` of shape `(batch_size, frames)`, *optional*):
            True for the frames replaced by the mask embedding and predicted. In training mode, drawn with the
            config's masking parameters when not given, and the codebooks are updated with the masked targets. In
            evaluation mode nothing is masked unless given (the outputs are deterministic), and the loss is then over
            every valid frame.
        defer_codebook_update (`bool`, *optional*, defaults to `False`):
            In training mode, leave the codebooks as they are and return this batch's `codebook_statistics`
            instead. A loop with gradient accumulation sums them over the micro-batches of an optimizer step and
            applies them once (`model.codebooks.apply_statistics`), so that every micro-batch is assigned against the
            same codebooks and the update sees all their frames, as with more processes. `SpidrTrainer` does this.
        num_items_in_batch (`torch.Tensor` or `int`, *optional*):
            Masked frames of the whole global batch (every micro-batch of the optimizer step, every process). The loss
            is then this batch's sum of masked-frame losses divided by it, so that the gradients summed over
            micro-batches (and averaged over processes, times their number) are those of the global mean. Without it
            the loss is this batch's own mean.
        return_loss (`bool`, *optional*, defaults to `True`):
            False runs the student and its heads only (no masks unless given, no teacher, no codebook update): the
            inference call that returns features (`output_layer_results`, `output_hidden_states`) and units (the
            argmax of `logits`) together.
        num_layers (`int`, *optional*):
            Without the loss, stop the student after this many layers (see [`SpidrModel`]); only the heads of the
            layers that ran are applied. DinoSR heads read the final output, so they need every layer.
        """
        self._check_inputs(input_values, attention_mask)
        config = self.config
        if return_loss and num_layers is not None:
            raise ValueError("The loss needs every layer: `num_layers` goes with `return_loss=False`.")
        if config.objective == "dinosr" and num_layers not in (None, config.num_hidden_layers):
            raise ValueError("DinoSR heads read the final output: `num_layers` must be left out.")
        # Random masks in training only: in evaluation the same input gives the same output, as in HuBERT
        if return_loss and mask_time_indices is None and self.training:
            mask_time_indices = self._draw_masks(input_values, attention_mask)
        frames = self._num_frames(input_values.shape[1])
        if mask_time_indices is not None and mask_time_indices.shape != (input_values.shape[0], frames):
            raise ValueError(
                f"`mask_time_indices` must have shape (batch, frames) = {(input_values.shape[0], frames)}, "
                f"got {tuple(mask_time_indices.shape)}."
            )
        mask = frame_mask = None
        if return_loss or mask_time_indices is not None:
            frame_mask = self._get_feature_vector_attention_mask(frames, attention_mask)
        if mask_time_indices is not None:
            mask = mask_time_indices.bool() if frame_mask is None else mask_time_indices.bool() & frame_mask
        # None means the config's value, as in transformers models (the student would read None as "no")
        if output_hidden_states is None:
            output_hidden_states = config.output_hidden_states
        if output_attentions is None:
            output_attentions = config.output_attentions
        return_dict = config.return_dict if return_dict is None else return_dict

        student = self.spidr(
            input_values,
            attention_mask,
            mask_time_indices=mask,
            mask_embedding=self.mask_embedding,
            num_layers=num_layers,
            output_hidden_states=output_hidden_states,
            output_layer_results=output_layer_results or config.objective == "spidr",
            output_attentions=output_attentions,
            return_dict=True,  # read by name below, whatever `config.return_dict` says
        )
        # The heads of the layers that ran (all of them for DinoSR, whose heads read the final output)
        ran = len(student.layer_results) if config.objective == "spidr" else config.num_hidden_layers
        logits = tuple(self._head_logits(student, layer) for layer in config.codebook_layers if layer <= ran)
        loss = {}
        if return_loss:
            # Without masks (evaluation) the loss is over every valid frame
            loss_frames = mask
            if loss_frames is None:
                all_frames = torch.ones(input_values.shape[0], frames, dtype=torch.bool, device=input_values.device)
                loss_frames = all_frames if frame_mask is None else frame_mask
            loss = self._loss(logits, loss_frames, student.extract_features, frame_mask, num_items_in_batch)
            if self.training and not defer_codebook_update:
                self.codebooks.apply_statistics(loss.pop("codebook_statistics"))
        output = SpidrForPreTrainingOutput(
            **loss,
            mask_time_indices=mask,
            logits=logits,
            hidden_states=student.hidden_states,
            layer_results=student.layer_results if output_layer_results else None,
            attentions=student.attentions,
        )
        return output if return_dict is not False else output.to_tuple()

    def _loss(
        self,
        logits: tuple[torch.Tensor, ...],
        mask: torch.Tensor,
        extract_features: torch.Tensor,
        frame_mask: torch.Tensor | None,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> dict[str, torch.Tensor | SpidrCodebookStatistics | None]:
        """
        The loss of the heads' `logits` on the masked frames against the teacher's codebook assignments, both
        perplexities and, in training mode, the batch's codebook statistics.
        """
        with torch.no_grad():
            # The teacher reads the student's projected features, unmasked and without dropout
            targets = self._teacher_targets(self.spidr.feature_projection(extract_features), frame_mask)
        with torch.autocast(extract_features.device.type, enabled=False):
            log_probs = F.log_softmax(torch.stack(logits).float(), dim=-1)
            flat_targets = targets.flatten(1, 2)
            labels = self.codebooks.assign(flat_targets).view(targets.shape[:3])
            weights = mask.to(log_probs.dtype)
            num_masked = weights.sum()
            frame_losses = -log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).mean(0)
            divisor = num_masked if num_items_in_batch is None else num_items_in_batch
            loss = (frame_losses * weights).sum() / divisor
            with torch.no_grad():
                onehot = F.one_hot(labels, self.config.codebook_size).to(log_probs.dtype) * weights.unsqueeze(-1)
                predicted = (log_probs.exp() * weights.unsqueeze(-1)).sum((1, 2)) / num_masked
                statistics = None
                if self.training:
                    statistics = self.codebooks.statistics(flat_targets, onehot.flatten(1, 2))
        return {
            "loss": loss,
            "target_perplexity": _perplexity(onehot.sum((1, 2)) / num_masked),
            "prediction_perplexity": _perplexity(predicted),
            "codebook_statistics": statistics,
        }

    @torch.no_grad()
    def get_codebook_probs(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, ...]:
        """
        Codebook-head probabilities `(batch, frames, codebook_size)` for every encoder layer, None for layers without
        a head. Padded frames are all-zero rows.
        """
        logits = self(input_values, attention_mask, return_loss=False, return_dict=True).logits
        frame_mask = self._get_feature_vector_attention_mask(logits[0].shape[1], attention_mask)
        first = self.config.codebook_layers[0]
        probabilities = [None] * (first - 1) + [F.softmax(x.float(), dim=-1) for x in logits]
        if frame_mask is not None:
            probabilities = [None if p is None else p * frame_mask.unsqueeze(-1) for p in probabilities]
        return tuple(probabilities)

    @torch.no_grad()
    def get_units(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, layer: int | None = None
    ) -> torch.LongTensor:
        """
        Discrete units `(batch, frames)`: argmax of the codebook head of encoder `layer` (1-based; by default
        `config.default_unit_layer`, the paper's best, 6). Padded frames are -1. SpidR stops the encoder after `layer`.
        """
        layer = self.config.default_unit_layer if layer is None else layer
        (_, units), _ = self._padded_representations(
            input_values, attention_mask, (), "layer_results", "codebook", [layer]
        )
        return self._fill_padding(units[layer], attention_mask)

    def _head_logits(self, student_output: SpidrModelOutput, layer: int) -> torch.Tensor:
        """
        The logits `(batch, frames, codebook_size)` of the codebook head of `layer`: SpidR heads read their layer's
        result, DinoSR heads the final output. Under autocast the heads run in bf16; in a model loaded in bf16 they
        read the features in fp32 (the heads are kept in fp32).
        """
        head = self.heads[self.config.codebook_layers.index(layer)]
        if self.config.objective == "spidr":
            features = student_output.layer_results[layer - 1]
        else:
            features = student_output.last_hidden_state
        return head(features.to(head.weight.dtype))


def _perplexity(probs: torch.Tensor) -> torch.Tensor:
    """Mean over codebooks of 2 ** entropy (bits) of the distributions `(num_codebooks, codebook_size)`."""
    return torch.exp2(-(probs * torch.log2(probs + 1e-8)).sum(-1)).mean()


class SpidrHeadModel(SpidrPreTrainedModel):
    """
    What every fine-tuning head shares: the student (`self.spidr`) and the one forward that turns its outputs into
    the head's input, the last hidden state or, with `config.use_weighted_layer_sum`, a learned softmax-weighted sum
    of `config.weighted_layer_representation` (SUPERB's frozen-upstream protocol), with the valid-frame mask.
    """

    # A pretraining folder also holds the teacher, the codebooks, the codebook heads and the mask embedding: a head
    # model takes the student only (one note at load, `from_pretrained`, instead of a warning per tensor)
    _keys_to_ignore_on_load_unexpected = [
        r"^teacher\.",
        r"^heads\.",
        r"^codebooks\.",
        r"^mask_embedding$",
        r"kmeans\.centroids",
    ]

    def __init__(self, config: SpidrConfig):
        super().__init__(config)
        config.check_values()
        self.spidr = SpidrModel(config)
        if config.use_weighted_layer_sum:
            self.layer_weights = nn.Parameter(torch.ones(self._num_weighted_layers()) / self._num_weighted_layers())

    def _num_weighted_layers(self) -> int:
        hidden_states = self.config.weighted_layer_representation == "hidden_states"
        return self.config.num_hidden_layers + int(hidden_states)  # hidden states: the encoder input too

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if "SpidrForPreTraining" in (model.config.architectures or []):
            logger.warning(
                f"{cls.__name__} takes the student of this SpidrForPreTraining folder; its teacher, codebooks, "
                "codebook heads and mask embedding are left out."
            )
        return loaded

    def freeze_feature_encoder(self) -> None:
        """Stop gradients to the convolutional feature encoder and the feature projection (wav2vec2's fine-tuning)."""
        self.spidr.freeze_feature_encoder()

    def freeze_base_model(self) -> None:
        """Train the head only (and the layer weights): SUPERB's frozen upstream."""
        self.spidr.requires_grad_(False)

    def _head_input(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, SpidrModelOutput]:
        """`(batch, frames, hidden_size)` head input, the `(batch, frames)` valid-frame mask (None: all valid)."""
        config = self.config
        weighted = config.use_weighted_layer_sum
        # None means the config's value, as in transformers models (the student would read None as "no")
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        outputs = self.spidr(
            input_values,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states
            or (weighted and config.weighted_layer_representation == "hidden_states"),
            output_layer_results=weighted and config.weighted_layer_representation == "layer_results",
            return_dict=True,  # read by name below, whatever `config.return_dict` says
            **kwargs,
        )
        if weighted:
            layers = torch.stack(getattr(outputs, config.weighted_layer_representation), dim=0)
            weights = F.softmax(self.layer_weights, dim=-1).to(layers.dtype)
            head_input = (layers * weights.view(-1, 1, 1, 1)).sum(dim=0)
        else:
            head_input = outputs.last_hidden_state
        frame_mask = self._get_feature_vector_attention_mask(head_input.shape[1], attention_mask)
        return head_input, frame_mask, outputs

    def _tuple_or(self, output: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple:
        """The output as asked: `return_dict`, or the config's `return_dict` when None (a tuple when False)."""
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()


def ctc_loss(
    logits: torch.Tensor, labels: torch.Tensor, frame_mask: torch.Tensor | None, config: SpidrConfig
) -> torch.Tensor:
    """
    The CTC loss of `(batch, frames, vocab_size)` logits over their valid frames (`(batch, frames)` mask, None: all)
    against `(batch, target_length)` token ids padded with -100; the blank is `config.pad_token_id`.
    """
    all_frames = torch.full(logits.shape[:1], logits.shape[1], device=logits.device)
    input_lengths = all_frames if frame_mask is None else frame_mask.sum(-1)
    label_mask = labels >= 0
    # The loss in fp32 whatever the model's dtype: CTC's forward-backward sums underflow in half precision
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN's CTC needs targets on the CPU and int32
        return F.ctc_loss(
            log_probs,
            labels.masked_select(label_mask),
            input_lengths,
            label_mask.sum(-1),
            blank=config.pad_token_id,
            reduction=config.ctc_loss_reduction,
            zero_infinity=config.ctc_zero_infinity,
        )


def mean_over_frames(values: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """`(batch, frames, dim)` to `(batch, dim)`: the mean over each item's valid frames (mask None: all)."""
    if frame_mask is None:
        return values.mean(dim=1)
    weights = frame_mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(dim=1) / weights.sum(dim=1)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Cross-entropy of `(batch, num_labels)` logits, or the mean squared error when `num_labels == 1`."""
    if num_labels == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels.view(-1))


class SpidrForCTC(SpidrHeadModel):
    """SpidR with a linear CTC head over characters or phones (`AutoModelForCTC`, the ASR pipeline)."""

    def __init__(self, config: SpidrConfig):
        super().__init__(config)
        if config.vocab_size is None:
            raise ValueError(
                "SpidrForCTC needs `vocab_size` in the config: the size of the tokenizer's vocabulary, e.g. "
                "`SpidrForCTC.from_pretrained(folder, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)`."
            )
        if config.pad_token_id is None:
            raise ValueError(
                "SpidrForCTC needs `pad_token_id` in the config: the tokenizer's pad token, the CTC blank, e.g. "
                "`pad_token_id=tokenizer.pad_token_id`."
            )
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutput | tuple:
        r"""
        input_values (`torch.FloatTensor` of shape `(batch_size, samples)`): 16 kHz audio (see [`SpidrModel`]).
        labels (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*):
            Token ids of the transcripts, padded with -100. Returns the CTC loss (blank: `config.pad_token_id`).
        Returns logits of shape `(batch_size, frames, vocab_size)`.
        """
        if labels is not None and labels.max() >= self.config.vocab_size:
            raise ValueError(f"Label values must be < vocab_size ({self.config.vocab_size}), got {labels.max()}.")
        head_input, frame_mask, outputs = self._head_input(
            input_values, attention_mask, output_attentions, output_hidden_states, **kwargs
        )
        logits = self.lm_head(self.dropout(head_input))
        loss = None if labels is None else ctc_loss(logits, labels, frame_mask, self.config)
        output = CausalLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return self._tuple_or(output, return_dict)


class SpidrForSequenceClassification(SpidrHeadModel):
    """
    SpidR with utterance classification (`AutoModelForAudioClassification`, the audio-classification pipeline):
    a projection, mean pooling over the valid frames, a linear classifier (as wav2vec2's).
    """

    def __init__(self, config: SpidrConfig):
        super().__init__(config)
        self.projector = nn.Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class indices; returns the cross-entropy
        loss (mean squared error when `config.num_labels == 1`). Returns logits of shape `(batch_size, num_labels)`.
        """
        head_input, frame_mask, outputs = self._head_input(
            input_values, attention_mask, output_attentions, output_hidden_states, **kwargs
        )
        logits = self.classifier(mean_over_frames(self.projector(head_input), frame_mask))
        loss = None if labels is None else classification_loss(logits, labels, self.config.num_labels)
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return self._tuple_or(output, return_dict)


class SpidrForAudioFrameClassification(SpidrHeadModel):
    """SpidR with a linear classifier of each frame (`AutoModelForAudioFrameClassification`: diarization, phones)."""

    def __init__(self, config: SpidrConfig):
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TokenClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, frames)`, *optional*): a class per frame, -100 where none
        (padding included); returns the mean cross-entropy over the labelled frames. Returns logits of shape
        `(batch_size, frames, num_labels)`.
        """
        head_input, frame_mask, outputs = self._head_input(
            input_values, attention_mask, output_attentions, output_hidden_states, **kwargs
        )
        logits = self.classifier(head_input)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(
                    f"`labels` must have shape (batch, frames) = {tuple(logits.shape[:2])}, got {tuple(labels.shape)}."
                )
            if frame_mask is not None:
                labels = labels.masked_fill(~frame_mask, -100)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return self._tuple_or(output, return_dict)


class SpidrTDNNLayer(nn.Module):
    """One time-delay layer of the x-vector network: a dilated convolution over frames, then ReLU."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, dilation: int):
        super().__init__()
        self.kernel_size, self.dilation = kernel_size, dilation
        self.kernel = nn.Linear(in_dim * kernel_size, out_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, frames, in_dim)` -> `(batch, frames - dilation * (kernel_size - 1), out_dim)`."""
        weight = self.kernel.weight.view(self.kernel.out_features, self.kernel_size, -1).transpose(1, 2)
        output = F.conv1d(hidden_states.transpose(1, 2), weight, self.kernel.bias, dilation=self.dilation)
        return F.relu(output.transpose(1, 2))


class SpidrAMSoftmaxLoss(nn.Module):
    """Additive-margin softmax (CosFace) over speakers, the x-vector training loss."""

    def __init__(self, input_dim: int, num_labels: int, scale: float = 30.0, margin: float = 0.4):
        super().__init__()
        self.scale, self.margin, self.num_labels = scale, margin, num_labels
        self.weight = nn.Parameter(torch.randn(input_dim, num_labels))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosines = F.normalize(embeddings, dim=1) @ F.normalize(self.weight, dim=0)
        margins = F.one_hot(labels.flatten(), self.num_labels).to(cosines.dtype) * self.margin
        return F.cross_entropy(self.scale * (cosines - margins), labels.flatten())


class SpidrForXVector(SpidrHeadModel):
    """
    SpidR with an x-vector speaker-embedding network (`AutoModelForAudioXVector`): TDNN layers, mean and standard
    deviation pooling over the valid frames, embeddings trained with an additive-margin softmax over speakers.
    """

    def __init__(self, config: SpidrConfig):
        super().__init__(config)
        self.projector = nn.Linear(config.hidden_size, config.tdnn_dim[0])
        dims = [config.tdnn_dim[0], *config.tdnn_dim]
        self.tdnn = nn.ModuleList(
            SpidrTDNNLayer(dims[i], dims[i + 1], config.tdnn_kernel[i], config.tdnn_dilation[i])
            for i in range(len(config.tdnn_dim))
        )
        # wav2vec2 calls it `feature_extractor`, the name of the student's convolutional encoder here
        self.embedding = nn.Linear(config.tdnn_dim[-1] * 2, config.xvector_output_dim)
        self.classifier = nn.Linear(config.xvector_output_dim, config.xvector_output_dim)
        self.objective = SpidrAMSoftmaxLoss(config.xvector_output_dim, config.num_labels)
        self.post_init()

    def _tdnn_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for layer in self.tdnn:
            lengths = lengths - layer.dilation * (layer.kernel_size - 1)
        return lengths

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> XVectorOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): speaker indices; returns the AM-softmax
        loss. Returns `embeddings` `(batch_size, xvector_output_dim)` (compare them by cosine similarity) and the
        classifier's `logits`.
        """
        head_input, frame_mask, outputs = self._head_input(
            input_values, attention_mask, output_attentions, output_hidden_states, **kwargs
        )
        lengths = self._tdnn_lengths(
            torch.full(head_input.shape[:1], head_input.shape[1], device=head_input.device)
            if frame_mask is None
            else frame_mask.sum(-1)
        )
        if (lengths < 1).any():
            needed = 1 + sum(layer.dilation * (layer.kernel_size - 1) for layer in self.tdnn)
            raise ValueError(
                f"An utterance is too short for the x-vector TDNN layers: they need {needed} frames, the shortest "
                f"has {int(lengths.min()) + needed - 1}."
            )
        hidden_states = self.projector(head_input)
        for layer in self.tdnn:
            hidden_states = layer(hidden_states)
        frames = hidden_states.shape[1]
        valid = (torch.arange(frames, device=lengths.device)[None] < lengths[:, None]).to(hidden_states.dtype)
        counts = valid.sum(1, keepdim=True)
        mean = (hidden_states * valid.unsqueeze(-1)).sum(1) / counts
        variance = (((hidden_states - mean.unsqueeze(1)) ** 2) * valid.unsqueeze(-1)).sum(1) / counts
        # The floor keeps the gradient of the deviation finite where a ReLU unit is off on every frame
        deviation = variance.clamp_min(torch.finfo(variance.dtype).tiny).sqrt()
        embeddings = self.embedding(torch.cat([mean, deviation], dim=-1))
        logits = self.classifier(embeddings)
        loss = None if labels is None else self.objective(logits.float(), labels)
        output = XVectorOutput(
            loss=loss,
            logits=logits,
            embeddings=embeddings,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return self._tuple_or(output, return_dict)


# The fine-tuning heads by name: what HEAD_AUTO_CLASSES and HEAD_PIPELINE_TASKS (above, for save_pretrained) name
HEAD_CLASSES: dict[str, type[SpidrHeadModel]] = {
    head.__name__: head
    for head in (SpidrForCTC, SpidrForSequenceClassification, SpidrForAudioFrameClassification, SpidrForXVector)
}


__all__ = [
    "HEAD_AUTO_CLASSES",
    "HEAD_CLASSES",
    "HEAD_PIPELINE_TASKS",
    "REPRESENTATIONS",
    "UNIT_KINDS",
    "SpidrCodebookHealth",
    "SpidrCodebookStatistics",
    "SpidrForAudioFrameClassification",
    "SpidrForCTC",
    "SpidrForPreTraining",
    "SpidrForSequenceClassification",
    "SpidrForXVector",
    "SpidrHeadModel",
    "SpidrModel",
    "SpidrPreTrainedModel",
    "SpidrRepresentations",
    "centroids_sha256",
    "compute_span_mask",
]
