"""
Pipelines for SpidR / DinoSR: per-frame features (`spidr-features`) and discrete units (`spidr-units`).

Released folders ship this file as remote code, so it imports only numpy, torch and transformers; torchcodec (with
FFmpeg) is imported when audio has to be decoded or resampled.

Long recordings are cut into overlapping chunks whose boundaries fall on frame boundaries (multiples of the model's
320-sample hop), so chunk frame `j` is exactly recording frame `start / 320 + j`. Each chunk keeps only its frames that
are at least `stride_length_s` away from its cut edges. The convolutions see the same samples as in a single pass;
self-attention does not (it spans the whole input), so chunked outputs match a single pass closely, not exactly.
Measured with randomly initialized SpidR base weights (whose attention spreads over the whole input) on 114 s of
speech, 20 s chunks and 2 s stride: per-frame relative L2 difference of the layer-6 layer results 4.1% (median) and
4.9% (max), 93% of the layer-6 units equal. Recordings up to `chunk_length_s` go through in one pass, unchanged.
"""

import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import transformers
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.base import ChunkPipeline

from .feature_extraction_spidr import (
    checked_float32_samples,
    checked_sampling_rate,
    is_real_number,
    tensor_to_numpy,
)

# SpidR was pretrained on crops of at most 20 s, so a 20 s chunk never shows the model a longer context than it learned
# on. Every kept frame has at least 2 s of context on both sides (the positional convolutions reach 0.9 s).
DEFAULT_CHUNK_LENGTH_S = 20.0
DEFAULT_STRIDE_LENGTH_S = 2.0


def _torchcodec() -> tuple[type, type]:
    """torchcodec's `AudioDecoder` and `AudioEncoder`, imported on first use."""
    try:
        from torchcodec.decoders import AudioDecoder
        from torchcodec.encoders import AudioEncoder
    except ImportError as error:  # inside `try` so that transformers does not require torchcodec to load this file
        raise ImportError(
            "Decoding or resampling audio needs torchcodec and FFmpeg: `pip install torchcodec` (matching your torch) "
            "and install FFmpeg, or pass 16 kHz audio as arrays."
        ) from error
    return AudioDecoder, AudioEncoder


def decode_file(path: str | os.PathLike, sampling_rate: int) -> np.ndarray:
    """Decode any file FFmpeg reads to mono float32 at `sampling_rate`, as `datasets.Audio` does (torchcodec)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No audio file at {path}.")
    audio_decoder, _ = _torchcodec()
    try:
        samples = audio_decoder(os.fspath(path), sample_rate=sampling_rate, num_channels=1).get_all_samples()
    except RuntimeError as error:  # FFmpeg could not open or decode it
        raise ValueError(f"Could not decode {path}: {error}") from error
    return samples.data[0].numpy()


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample mono audio with FFmpeg, the resampler that also decodes files, so arrays and files agree."""
    checked_float32_samples(np.asarray(audio), "The audio")  # FFmpeg would turn NaN into finite samples
    audio_decoder, audio_encoder = _torchcodec()
    peak = float(np.abs(audio).max())
    scale = peak if peak > 0 else 1.0
    # An in-memory FLAC keeps 24-bit samples (WAV would round to 16 bits) but clips outside [-1, 1]: encode at unit peak
    samples = torch.from_numpy(np.ascontiguousarray(audio / scale, dtype=np.float32))[None]
    encoded = audio_encoder(samples, sample_rate=orig_rate).to_tensor("flac")
    decoded = audio_decoder(encoded, sample_rate=target_rate).get_all_samples()
    return decoded.data[0].numpy() * np.float32(scale)


def _is_audio_decoder(inputs: Any) -> bool:
    """True for a torchcodec `AudioDecoder` (what `datasets` >= 4 gives), without importing torchcodec."""
    torchcodec = sys.modules.get("torchcodec")
    return torchcodec is not None and isinstance(inputs, torchcodec.decoders.AudioDecoder)


def load_audio(inputs: Any, sampling_rate: int | None, target_rate: int) -> np.ndarray:
    """
    Mono float32 samples at `target_rate` from a file path, a torchcodec `AudioDecoder`, a `{"array" or "raw",
    "sampling_rate"}` dict, or a 1-d numpy array / torch tensor sampled at `sampling_rate`.
    """
    if isinstance(inputs, str | os.PathLike):
        return decode_file(inputs, target_rate)
    if _is_audio_decoder(inputs):
        samples = inputs.get_all_samples()
        audio, sampling_rate = samples.data.mean(0), samples.sample_rate  # downmix, as datasets does
    elif isinstance(inputs, dict):
        audio = inputs.get("array", inputs.get("raw"))
        sampling_rate = inputs.get("sampling_rate")
        if audio is None or sampling_rate is None:
            raise ValueError(
                "An audio dict needs an 'array' (or 'raw') entry and a 'sampling_rate' entry, got keys "
                f"{sorted(inputs)}."
            )
    elif isinstance(inputs, np.ndarray | torch.Tensor):
        audio = inputs
        if sampling_rate is None:
            raise ValueError(
                f"Pass the sampling rate of raw arrays, e.g. `pipe(audio, sampling_rate={target_rate})`; other rates "
                "are resampled."
            )
    else:
        raise ValueError(
            "Expected a file path, a numpy array or torch tensor, a {'array', 'sampling_rate'} dict or a torchcodec "
            f"AudioDecoder, got {type(inputs).__name__}."
        )
    if isinstance(audio, torch.Tensor):
        audio = tensor_to_numpy(audio)
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"Expected mono audio (a 1-d array), got shape {audio.shape}: downmix it first.")
    # Checked before resampling, which would hide NaN and fail on empty input with an obscure message
    audio = checked_float32_samples(audio, "The audio")
    sampling_rate = checked_sampling_rate(sampling_rate)
    return audio if sampling_rate == target_rate else resample(audio, sampling_rate, target_rate)


def run_starts(units: np.ndarray) -> np.ndarray:
    """Index of the first frame of every run of equal units: `units[run_starts(units)]` merges each run into one."""
    return np.flatnonzero(np.diff(units, prepend=-1))


def plan_chunks(
    num_samples: int, chunk_samples: int, stride_samples: int, hop: int, receptive_field: int
) -> list[tuple[int, int, int, int]]:
    """
    Cut `num_samples` into chunks: for each, its sample window `(start, end)` and the slice `(keep_from, keep_to)` of
    its own frames that goes into the output. The kept slices tile the recording's frames exactly once.
    """
    if chunk_samples % hop or stride_samples % hop or not hop <= stride_samples < chunk_samples / 2:
        raise ValueError(
            f"Chunks must be whole frames ({hop} samples) with a stride of at least one frame and less than half a "
            f"chunk, got chunk {chunk_samples} and stride {stride_samples} samples."
        )
    step = chunk_samples - 2 * stride_samples
    chunks = []
    start = 0
    while True:
        end = min(start + chunk_samples, num_samples)
        is_last = end == num_samples
        keep_from = 0 if start == 0 else stride_samples // hop
        # the next chunk takes over `stride` before this one's cut edge; the last chunk keeps all its frames
        keep_to = (end - start - receptive_field) // hop + 1 if is_last else (step + stride_samples) // hop
        chunks.append((start, end, keep_from, keep_to))
        if is_last:
            return chunks
        start += step


class _SpidrChunkPipeline(ChunkPipeline):
    """Audio loading, whole-recording standardization and chunking shared by the SpidR pipelines."""

    _load_feature_extractor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_video_processor = False
    _load_processor = False

    def preprocess(
        self,
        inputs: Any,
        sampling_rate: int | None = None,
        chunk_length_s: float = DEFAULT_CHUNK_LENGTH_S,
        stride_length_s: float = DEFAULT_STRIDE_LENGTH_S,
    ) -> Iterator[dict[str, Any]]:
        rate = self.feature_extractor.sampling_rate
        audio = load_audio(inputs, sampling_rate, rate)
        config = self.model.config
        if audio.size < config.receptive_field:  # said here: the feature extractor sees one input at a time, as "0"
            raise ValueError(
                f"An input has {audio.size} samples at {rate} Hz, fewer than the model's receptive field of "
                f"{config.receptive_field} samples ({1000 * config.receptive_field / rate:.0f} ms)."
            )
        # Standardize the whole recording once: every chunk then sees the samples a single pass would see
        values = self.feature_extractor(audio, sampling_rate=rate, return_tensors="pt")["input_values"][0]
        hop = config.inputs_to_logits_ratio
        chunks = plan_chunks(
            len(values),
            round(chunk_length_s * rate / hop) * hop,
            round(stride_length_s * rate / hop) * hop,
            hop,
            config.receptive_field,
        )
        for index, (start, end, keep_from, keep_to) in enumerate(chunks):
            chunk = values[start:end].unsqueeze(0)
            yield {
                "input_values": chunk,
                "attention_mask": torch.ones_like(chunk, dtype=torch.long),
                "keep_from": keep_from,
                "keep_to": keep_to,
                "is_last": index == len(chunks) - 1,
            }

    def _model_inputs(self, model_inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {
            "input_values": model_inputs["input_values"].to(self.model.dtype),
            "attention_mask": model_inputs["attention_mask"],
        }

    @staticmethod
    def _stitch(chunk_outputs: list[dict[str, Any]], key: str) -> torch.Tensor:
        """
        Concatenate the kept frames of each chunk. `_forward` gives a list of per-item tensors; a batched pipeline
        hands each chunk on as one item with a leading dimension of 1: `[0]` is the chunk's frames either way.
        """
        return torch.cat([output[key][0][output["keep_from"] : output["keep_to"]] for output in chunk_outputs])

    def _chunk_output(self, model_inputs: dict[str, Any], key: str, values: list[torch.Tensor]) -> dict[str, Any]:
        return {
            key: values,
            "keep_from": model_inputs["keep_from"],
            "keep_to": model_inputs["keep_to"],
            "is_last": model_inputs["is_last"],
        }

    def _frame_seconds(self) -> float:
        return self.model.config.inputs_to_logits_ratio / self.feature_extractor.sampling_rate

    @staticmethod
    def _split_parameters(
        kwargs: dict[str, Any], forward_names: tuple[str, ...], postprocess_names: tuple[str, ...]
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Route the keyword arguments that were given to preprocess, forward and postprocess; reject the others."""
        preprocess_names = ("sampling_rate", "chunk_length_s", "stride_length_s")
        unknown = set(kwargs) - set(preprocess_names + forward_names + postprocess_names)
        if unknown:
            raise TypeError(f"Unexpected pipeline arguments: {sorted(unknown)}.")
        for name in ("chunk_length_s", "stride_length_s"):
            value = kwargs.get(name)
            if value is not None and not (is_real_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a positive number of seconds, got {value!r}.")
        layer = kwargs.get("layer")
        if layer is not None and not (isinstance(layer, int | np.integer) and not isinstance(layer, bool)):
            raise ValueError(f"`layer` must be an integer, got {layer!r}.")

        def given(names: tuple[str, ...]) -> dict[str, Any]:
            return {name: kwargs[name] for name in names if kwargs.get(name) is not None}

        return given(preprocess_names), given(forward_names), given(postprocess_names)


class SpidrFeaturesPipeline(_SpidrChunkPipeline):
    """
    Per-frame features of one layer, 50 frames per second (frame `j` centred at `(j + 0.5) * 0.02` s).

    Call arguments:
        sampling_rate (`int`): sampling rate of raw arrays (resampled to 16 kHz if different).
        layer (`int`, defaults to `config.default_feature_layer`, 6 for SpidR base): encoder layer, 1-based.
        representation (`str`, defaults to `"layer_results"`): `"layer_results"` (feed-forward output of the layer,
            the paper's features) or `"hidden_states"` (residual stream after the layer; layer 0 is the encoder input).
        chunk_length_s, stride_length_s (`float`, defaults to 20 and 2): chunking of long recordings.

    Returns `{"features": np.ndarray of shape (frames, hidden_size)}` (float32) per input.
    """

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        return self._split_parameters(kwargs, ("layer", "representation"), ())

    def _forward(
        self, model_inputs: dict[str, Any], layer: int | None = None, representation: str = "layer_results"
    ) -> dict[str, Any]:
        # A full SpidrForPreTraining passed by hand works too: `represent` runs its student network
        layer = self.model.config.default_feature_layer if layer is None else layer
        output = self.model.represent(**self._model_inputs(model_inputs), layers=[layer], representation=representation)
        return self._chunk_output(model_inputs, "features", output.features[layer])

    def postprocess(self, chunk_outputs: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        return {"features": self._stitch(chunk_outputs, "features").float().numpy()}


class SpidrUnitsPipeline(_SpidrChunkPipeline):
    """
    Discrete units: the argmax of the codebook head of one layer (the model must be a `SpidrForPreTraining`), or the
    nearest k-means centroid of the layer the model's centroids were fitted on (`spidr-hf kmeans`).

    Call arguments:
        sampling_rate (`int`): sampling rate of raw arrays (resampled to 16 kHz if different).
        units (`str`, defaults to `"codebook"`): `"codebook"` or `"kmeans"`.
        layer (`int`, defaults to `config.default_unit_layer`, 6 for SpidR base): encoder layer with a codebook head,
            1-based (k-means units: the centroids' layer).
        deduplicate (`bool`, defaults to `False`): merge runs of the same unit into one (as spoken LMs use them).
        return_timestamps (`bool`, defaults to `False`): also return each unit's start and end in seconds.
        chunk_length_s, stride_length_s (`float`, defaults to 20 and 2): chunking of long recordings.

    Returns `{"units": np.ndarray (int64)}` per input, plus `"timestamps"` of shape (units, 2) when asked for.
    """

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        return self._split_parameters(kwargs, ("layer", "units"), ("deduplicate", "return_timestamps"))

    def _forward(
        self, model_inputs: dict[str, Any], layer: int | None = None, units: str = "codebook"
    ) -> dict[str, Any]:
        unit_layers = None if layer is None else [layer]  # None: the default codebook layer, or the centroids' layer
        output = self.model.represent(**self._model_inputs(model_inputs), units=units, unit_layers=unit_layers)
        (values,) = output.units.values()
        return self._chunk_output(model_inputs, "units", values)

    def postprocess(
        self, chunk_outputs: list[dict[str, Any]], deduplicate: bool = False, return_timestamps: bool = False
    ) -> dict[str, np.ndarray]:
        units = self._stitch(chunk_outputs, "units").numpy()
        starts = np.arange(len(units))
        if deduplicate:
            starts = run_starts(units)
        result = {"units": units[starts]}
        if return_timestamps:
            ends = np.append(starts[1:], len(units))
            result["timestamps"] = np.stack([starts, ends], axis=1) * self._frame_seconds()
        return result


# task -> (pipeline class, name of the transformers Auto class that loads its model)
PIPELINE_TASKS: dict[str, tuple[type[ChunkPipeline], str]] = {
    "spidr-features": (SpidrFeaturesPipeline, "AutoModel"),
    "spidr-units": (SpidrUnitsPipeline, "AutoModelForPreTraining"),
}


def custom_pipelines(tasks: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """
    The `custom_pipelines` config entry that lets `pipeline(task, model=folder, trust_remote_code=True)` work, for
    `tasks` (default: all; a fine-tuned folder has no codebook heads, hence no units pipeline).
    """
    return {
        task: {"impl": f"{pipeline_class.__module__.split('.')[-1]}.{pipeline_class.__name__}", "pt": [auto_class]}
        for task, (pipeline_class, auto_class) in PIPELINE_TASKS.items()
        if tasks is None or task in tasks
    }


def register_pipelines() -> None:
    """Register the tasks with transformers, so that `pipeline("spidr-features", model=...)` finds them."""
    for task, (pipeline_class, auto_class) in PIPELINE_TASKS.items():
        PIPELINE_REGISTRY.register_pipeline(
            task, pipeline_class=pipeline_class, pt_model=getattr(transformers, auto_class), type="audio"
        )
