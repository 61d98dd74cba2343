"""SpidR / DinoSR model configuration."""

import functools
import math
import operator

from transformers import PreTrainedConfig

SAMPLING_RATE = 16_000  # Hz: the audio every SpidR and DinoSR model takes (the feature extractor checks it)
OBJECTIVES = ("spidr", "dinosr")
FEAT_EXTRACT_NORMS = ("layer", "group")
# The paper's best layer of SpidR base (12 layers): its features and codebook units score best on ABX and PNMI. Models
# of other depths get it clamped to what they have (`SpidrConfig.default_feature_layer`, `default_unit_layer`)
PAPER_BEST_LAYER = 6
PAPER_NUM_CODEBOOKS = 8  # SpidR base's codebooks; shallower models get one per layer at most
REPRESENTATIONS = ("layer_results", "hidden_states")  # the per-layer outputs: feed-forward results, residual stream
CTC_LOSS_REDUCTIONS = ("mean", "sum")


class SpidrConfig(PreTrainedConfig):
    r"""
    Configuration of a [`SpidrModel`] / [`SpidrForPreTraining`]. The defaults are SpidR base (arXiv 2512.20308);
    [`SpidrConfig.dinosr_base`] gives DinoSR base.

    Architecture:
        conv_dim, conv_kernel, conv_stride (`tuple[int, ...]`): channels, kernel sizes and strides of the convolutional
            feature encoder. The defaults give 20 ms frames (stride 320) and a 400-sample receptive field.
        conv_bias (`bool`, defaults to `False`): whether the feature-encoder convolutions have a bias.
        feat_extract_norm (`str`, defaults to `"layer"`): `"layer"` puts a LayerNorm over channels after every
            convolution; `"group"` puts a GroupNorm (one group per channel) after the first convolution only.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size (`int`): Transformer encoder sizes.
        num_conv_pos_embeddings (`int`, defaults to 95): total kernel size of the convolutional positional embedding;
            it is split over `conv_pos_depth` convolutions of kernel
            `max(3, num_conv_pos_embeddings // conv_pos_depth)`.
        num_conv_pos_embedding_groups (`int`, defaults to 16): groups of the positional convolutions.
        conv_pos_depth (`int`, defaults to 5): number of positional convolutions.
        do_stable_layer_norm (`bool`, defaults to `False`): pre-LN encoder layers (LayerNorm before attention and
            feed-forward, one LayerNorm after the stack) instead of the default post-LN layers.
        qkv_bias (`bool`, defaults to `False`): bias of the fused query/key/value projection.
        hidden_dropout, attention_dropout, activation_dropout, feat_proj_dropout (`float`): dropout after attention and
            feed-forward blocks and at the encoder input; on attention weights; inside the feed-forward block; on the
            projected features fed to the student (pretraining only, the teacher always sees clean features).
        layerdrop (`float`): probability of skipping an encoder layer in training. A skipped layer leaves the
            residual stream unchanged but its feed-forward output ("layer result") is still computed and used.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm.

    Pretraining:
        objective (`str`, defaults to `"spidr"`): `"spidr"` (head k reads the layer result of student layer
            `num_hidden_layers - num_codebooks + 1 + k`) or `"dinosr"` (every head reads the final student output).
        num_codebooks (`int`, *optional*): number of codebooks, one per teacher layer among the last ones; by
            default the paper's 8, or `num_hidden_layers` for a shallower model (resolved here, so that the saved
            config holds the number).
        codebook_size (`int`, defaults to 256): codewords per codebook.
        codebook_decay (`float`, defaults to 0.9): EMA decay of the codebooks (1.0 freezes them).
        codebook_restart_after (`int`, defaults to 0): a small-batch remedy, off in the paper (0). A codeword that no
            masked frame is assigned to in this many consecutive codebook updates is restarted: the most used codeword
            of its codebook is split in two, each half 5 % of its norm away from it towards or away from the mean of
            its latest frames, sharing its count, so that the codebook keeps all its codewords in use. With the
            paper's ~10^5 masked frames per update few codewords ever go unused; with a few hundred or thousand, many
            die at the first updates and never come back. It can be combined with k-means initialised codebooks
            (`codebook_init_batches` in `SpidrTrainingArguments`).
        ema_start_decay (`float`, defaults to 0.999): teacher EMA decay at step 0.
        ema_timescale (`float`, defaults to 20000): SpidR schedule
            `1 - (1 - ema_start_decay) * exp(-step / ema_timescale)`.
        ema_threshold (`float`, defaults to 1e-7): SpidR freezes the teacher once `1 - decay <= ema_threshold`.
        ema_final_decay (`float`, defaults to 0.9999), ema_final_step (`int`, defaults to 30000): DinoSR schedule,
            linear from `ema_start_decay` to `ema_final_decay` over `ema_final_step` steps.
        freeze_step (`int`, defaults to 200000): from this step the feature encoder and projection are frozen, and
            the DinoSR teacher stops moving.
        mask_time_prob (`float`, defaults to 0.8), mask_time_length (`int`, defaults to 10),
        mask_time_min_masks (`int`, defaults to 2): span masking; an utterance of T frames gets
            `max(mask_time_min_masks, int(mask_time_prob * T / mask_time_length + U[0, 1)))` spans.

    k-means units (HuBERT-style, fitted after pretraining with `spidr-hf kmeans`; none by default):
        kmeans_layer (`int`, *optional*): the encoder layer (1-based) whose layer results the centroids quantize.
        kmeans_num_clusters (`int`, defaults to 0): number of centroids, stored with the weights.
        kmeans_centroids_sha256 (`str`, *optional*): SHA-256 of the stored centroids (float32 bytes), set with them:
            loading checks that the weights hold these centroids, so that a folder whose weights and config were left
            out of step (an interrupted `spidr-hf kmeans`) is an error, not other units.

    Fine-tuning heads ([`SpidrForCTC`], [`SpidrForSequenceClassification`], [`SpidrForAudioFrameClassification`],
    [`SpidrForXVector`]; wav2vec2's names and meanings; `num_labels` / `id2label` as in every transformers config):
        vocab_size (`int`, *optional*): CTC output tokens, the tokenizer's vocabulary (required by [`SpidrForCTC`]).
        pad_token_id (`int`, *optional*): the tokenizer's pad token, the CTC blank (required by [`SpidrForCTC`]).
        final_dropout (`float`, defaults to 0.1): dropout before the CTC head.
        ctc_loss_reduction (`str`, defaults to `"mean"`): `"mean"` (each utterance's loss over its target length,
            averaged over the batch) or `"sum"`.
        ctc_zero_infinity (`bool`, defaults to `False`): zero the infinite losses of inputs shorter than their
            targets, and their gradients.
        use_weighted_layer_sum (`bool`, defaults to `False`): feed the heads a learned softmax-weighted sum of the
            encoder's layers (SUPERB's protocol) instead of the last hidden state.
        weighted_layer_representation (`str`, defaults to `"hidden_states"`): which layers the sum weighs:
            `"hidden_states"` (the encoder input and each layer's residual stream, wav2vec2's) or `"layer_results"`
            (each layer's feed-forward output, SpidR's features).
        classifier_proj_size (`int`, defaults to 256): projection before the mean pooling of sequence classification.
        tdnn_dim, tdnn_kernel, tdnn_dilation (`tuple[int]`, default (512, 512, 512, 512, 1500), (5, 3, 3, 1, 1),
            (1, 2, 3, 1, 1)): the x-vector TDNN layers. xvector_output_dim (`int`, defaults to 512): embedding size.
    """

    model_type = "spidr"

    conv_dim: list[int] | tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: list[int] | tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: list[int] | tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "layer"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_conv_pos_embeddings: int = 95
    num_conv_pos_embedding_groups: int = 16
    conv_pos_depth: int = 5
    do_stable_layer_norm: bool = False
    qkv_bias: bool = False
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    feat_proj_dropout: float = 0.0
    layerdrop: float = 0.0
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    objective: str = "spidr"
    num_codebooks: int | None = None
    codebook_size: int = 256
    codebook_decay: float = 0.9
    codebook_restart_after: int = 0
    ema_start_decay: float = 0.999
    ema_timescale: float = 20_000.0
    ema_threshold: float = 1e-7
    ema_final_decay: float = 0.9999
    ema_final_step: int = 30_000
    freeze_step: int = 200_000
    mask_time_prob: float = 0.8
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    kmeans_layer: int | None = None
    kmeans_num_clusters: int = 0
    kmeans_centroids_sha256: str | None = None

    vocab_size: int | None = None
    pad_token_id: int | None = None
    final_dropout: float = 0.1
    ctc_loss_reduction: str = "mean"
    ctc_zero_infinity: bool = False
    use_weighted_layer_sum: bool = False
    weighted_layer_representation: str = "hidden_states"
    classifier_proj_size: int = 256
    tdnn_dim: list[int] | tuple[int, ...] = (512, 512, 512, 512, 1500)
    tdnn_kernel: list[int] | tuple[int, ...] = (5, 3, 3, 1, 1)
    tdnn_dilation: list[int] | tuple[int, ...] = (1, 2, 3, 1, 1)
    xvector_output_dim: int = 512

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.num_codebooks is None:  # derived from the depth, so that a config of any one keyword is valid
            self.num_codebooks = min(PAPER_NUM_CODEBOOKS, self.num_hidden_layers)
        self.conv_dim, self.conv_kernel, self.conv_stride = (
            tuple(self.conv_dim),
            tuple(self.conv_kernel),
            tuple(self.conv_stride),
        )
        self.tdnn_dim, self.tdnn_kernel, self.tdnn_dilation = (
            tuple(self.tdnn_dim),
            tuple(self.tdnn_kernel),
            tuple(self.tdnn_dilation),
        )
        self.check_values()

    @classmethod
    def dinosr_base(cls, **kwargs) -> "SpidrConfig":
        """DinoSR base: the SpidR architecture with LayerDrop 0.05, heads on the last layer and a linear EMA ramp."""
        return cls(**{"objective": "dinosr", "layerdrop": 0.05, **kwargs})

    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Samples per output frame (320 = 20 ms at 16 kHz by default)."""
        return functools.reduce(operator.mul, self.conv_stride, 1)

    @property
    def frame_rate(self) -> float:
        """Output frames per second (50 by default: one frame every 20 ms)."""
        return SAMPLING_RATE / self.inputs_to_logits_ratio

    @property
    def receptive_field(self) -> int:
        """Number of input samples that the first output frame sees; shorter inputs give no frame."""
        field = 1
        for kernel, stride in zip(reversed(self.conv_kernel), reversed(self.conv_stride), strict=True):
            field = (field - 1) * stride + kernel
        return field

    @property
    def pos_conv_kernel_size(self) -> int:
        """Kernel size of each positional convolution."""
        return max(3, self.num_conv_pos_embeddings // self.conv_pos_depth)

    @property
    def codebook_layers(self) -> tuple[int, ...]:
        """1-based indices of the encoder layers that have a codebook and a prediction head."""
        return tuple(range(self.num_hidden_layers - self.num_codebooks + 1, self.num_hidden_layers + 1))

    @property
    def default_feature_layer(self) -> int:
        """The layer whose features the pipelines, `extract` and the model card use by default: the paper's best
        (6), or the last layer of a shallower model."""
        return min(PAPER_BEST_LAYER, self.num_hidden_layers)

    @property
    def default_unit_layer(self) -> int:
        """The codebook layer whose units are used by default: the paper's best (6), or the nearest layer with a
        codebook head."""
        first, last = self.codebook_layers[0], self.codebook_layers[-1]
        return min(max(PAPER_BEST_LAYER, first), last)

    def check_layer(self, layer: int, representation: str = "layer_results", units: str | None = None) -> int:
        """
        `layer` if this model gives `representation` (0 is the encoder input of `"hidden_states"`) and `units`
        (`"codebook"`: a layer with a codebook head; `"kmeans"`: the stored centroids' layer) there, else a ValueError:
        the one check and message of every command and of `represent`, on the config, before any weights load.
        """
        first = 0 if representation == "hidden_states" else 1
        if isinstance(layer, bool) or not isinstance(layer, int) or not first <= layer <= self.num_hidden_layers:
            raise ValueError(
                f"Layer {layer} is not a layer of this model: it has layers {first} to {self.num_hidden_layers}"
                + (" (0: the encoder input)" if first == 0 else "")
            )
        if units == "codebook" and layer not in self.codebook_layers:
            raise ValueError(f"Layer {layer} has no codebook head; layers with one: {list(self.codebook_layers)}")
        if units == "kmeans" and self.kmeans_layer is None:
            raise ValueError("This model has no k-means centroids: fit them with `spidr-hf kmeans`")
        if units == "kmeans" and layer != self.kmeans_layer:
            raise ValueError(f"The k-means centroids of this model are of layer {self.kmeans_layer}, not {layer}")
        return layer

    def check_values(self) -> None:
        """Raise a `ValueError` naming the first invalid hyper-parameter."""
        if self.objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.feat_extract_norm not in FEAT_EXTRACT_NORMS:
            raise ValueError(
                f"`feat_extract_norm` must be one of {FEAT_EXTRACT_NORMS}, got {self.feat_extract_norm!r}."
            )
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) > 0:
            raise ValueError(
                "`conv_dim`, `conv_kernel` and `conv_stride` must be non-empty and of equal length, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)} and {len(self.conv_stride)}."
            )
        positive = {
            "conv_dim": min(self.conv_dim),
            "conv_kernel": min(self.conv_kernel),
            "conv_stride": min(self.conv_stride),
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "num_conv_pos_embeddings": self.num_conv_pos_embeddings,
            "num_conv_pos_embedding_groups": self.num_conv_pos_embedding_groups,
            "conv_pos_depth": self.conv_pos_depth,
            "num_codebooks": self.num_codebooks,
            "codebook_size": self.codebook_size,
            "layer_norm_eps": self.layer_norm_eps,
            "ema_timescale": self.ema_timescale,
            "ema_final_step": self.ema_final_step,
            "mask_time_length": self.mask_time_length,
            "initializer_range": self.initializer_range,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"`{name}` must be positive, got {value}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_conv_pos_embedding_groups` "
                f"({self.num_conv_pos_embedding_groups})."
            )
        if self.num_codebooks > self.num_hidden_layers:
            raise ValueError(
                f"`num_codebooks` ({self.num_codebooks}) cannot exceed `num_hidden_layers` ({self.num_hidden_layers})."
            )
        probabilities = {
            "hidden_dropout": self.hidden_dropout,
            "attention_dropout": self.attention_dropout,
            "activation_dropout": self.activation_dropout,
            "feat_proj_dropout": self.feat_proj_dropout,
            "layerdrop": self.layerdrop,
            "mask_time_prob": self.mask_time_prob,
            "codebook_decay": self.codebook_decay,
            "ema_start_decay": self.ema_start_decay,
            "ema_final_decay": self.ema_final_decay,
            "ema_threshold": self.ema_threshold,
        }
        for name, value in probabilities.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"`{name}` must be in [0, 1], got {value}.")
        for name in ("freeze_step", "mask_time_min_masks"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be non-negative, got {getattr(self, name)}.")
        if (self.kmeans_layer is None) != (self.kmeans_num_clusters == 0):
            raise ValueError(
                "`kmeans_layer` and `kmeans_num_clusters` go together (k-means units), got "
                f"{self.kmeans_layer} and {self.kmeans_num_clusters}."
            )
        if self.kmeans_layer is not None:
            if isinstance(self.kmeans_layer, bool) or not 1 <= self.kmeans_layer <= self.num_hidden_layers:
                raise ValueError(f"`kmeans_layer` must be in [1, {self.num_hidden_layers}], got {self.kmeans_layer}.")
            if isinstance(self.kmeans_num_clusters, bool) or not self.kmeans_num_clusters >= 2:
                raise ValueError(f"`kmeans_num_clusters` must be at least 2, got {self.kmeans_num_clusters}.")
        restart = self.codebook_restart_after
        if isinstance(restart, bool) or not isinstance(restart, int) or restart < 0:
            raise ValueError(f"`codebook_restart_after` must be a non-negative integer (0: never), got {restart!r}.")
        self._check_head_values()

    def _check_head_values(self) -> None:
        if self.ctc_loss_reduction not in CTC_LOSS_REDUCTIONS:
            raise ValueError(
                f"`ctc_loss_reduction` must be one of {CTC_LOSS_REDUCTIONS}, got {self.ctc_loss_reduction!r}."
            )
        if self.weighted_layer_representation not in REPRESENTATIONS:
            raise ValueError(
                f"`weighted_layer_representation` must be one of {REPRESENTATIONS}, got "
                f"{self.weighted_layer_representation!r}."
            )
        if not (math.isfinite(self.final_dropout) and 0.0 <= self.final_dropout <= 1.0):
            raise ValueError(f"`final_dropout` must be in [0, 1], got {self.final_dropout}.")
        if self.vocab_size is not None and not self.vocab_size >= 2:
            raise ValueError(f"`vocab_size` must be at least 2 (a blank and a token), got {self.vocab_size}.")
        vocabulary = self.vocab_size
        if self.pad_token_id is not None and vocabulary is not None and not 0 <= self.pad_token_id < vocabulary:
            raise ValueError(f"`pad_token_id` must be in [0, {self.vocab_size}), got {self.pad_token_id}.")
        if not len(self.tdnn_dim) == len(self.tdnn_kernel) == len(self.tdnn_dilation) > 0:
            raise ValueError(
                "`tdnn_dim`, `tdnn_kernel` and `tdnn_dilation` must be non-empty and of equal length, got "
                f"{len(self.tdnn_dim)}, {len(self.tdnn_kernel)} and {len(self.tdnn_dilation)}."
            )
        sizes = {
            "classifier_proj_size": self.classifier_proj_size,
            "xvector_output_dim": self.xvector_output_dim,
            "tdnn_dim": min(self.tdnn_dim),
            "tdnn_kernel": min(self.tdnn_kernel),
            "tdnn_dilation": min(self.tdnn_dilation),
        }
        for name, value in sizes.items():
            if not value > 0:
                raise ValueError(f"`{name}` must be positive, got {value}.")


__all__ = ["PAPER_BEST_LAYER", "SpidrConfig"]
