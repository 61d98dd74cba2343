"""Feature extractor for SpidR: checks 16 kHz mono audio, standardizes each utterance, pads into a batch."""

import numpy as np
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.utils import PaddingStrategy, TensorType, logging

from .configuration_spidr import SAMPLING_RATE, SpidrConfig

logger = logging.get_logger(__name__)

STANDARDIZATION_EPS = 1e-5  # (x - mean) / sqrt(var + eps), as the model was trained
DEFAULT_MIN_SAMPLES = SpidrConfig().receptive_field  # shorter inputs give no frame with the default feature encoder
FLOAT32_MAX = float(np.finfo(np.float32).max)


def is_real_number(value: object) -> bool:
    """A real number, Python's or numpy's, but not a bool (which Python counts as an int)."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def checked_sampling_rate(sampling_rate: object) -> int:
    """`sampling_rate` as an int, refusing what is not a whole number of Hz (a string, a bool, 16000.5)."""
    is_whole = (
        is_real_number(sampling_rate)
        and np.isfinite(sampling_rate)
        and sampling_rate == int(sampling_rate)
        and sampling_rate > 0
    )
    if not is_whole:
        raise ValueError(
            f"`sampling_rate` must be a positive integer number of Hz, got {sampling_rate!r} "
            f"({type(sampling_rate).__name__})."
        )
    return int(sampling_rate)


def tensor_to_numpy(tensor):
    """A torch tensor as a numpy array of its own dtype (complex and float64 stay so, for the checks), without torch."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy()  # numpy has no bfloat16


def checked_float32_samples(array: np.ndarray, name: str) -> np.ndarray:
    """
    `array` as float32 samples, refusing what the cast would silently change or what gives no valid features:
    non-numeric or complex values, no samples, NaN or infinite samples, values beyond float32's range.
    """
    if np.iscomplexobj(array):
        raise ValueError(f"{name} is complex (dtype {array.dtype}): pass real audio samples, e.g. `np.real(audio)`.")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} is not numeric (dtype {array.dtype}).")
    if array.size == 0:
        raise ValueError(f"{name} is empty.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite samples.")
    peak = float(np.abs(array).max())
    if peak > FLOAT32_MAX:
        raise ValueError(
            f"{name} has samples up to {peak:.3g}, beyond the float32 range ({FLOAT32_MAX:.3g}) the model computes "
            "in: scale it down (audio samples are usually in [-1, 1])."
        )
    return array.astype(np.float32)


class SpidrFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns raw 16 kHz mono speech into SpidR inputs: each utterance is standardized over its own samples
    (`(x - mean) / sqrt(var + 1e-5)`, biased variance), then the batch is right-padded with zeros and an
    `attention_mask` is returned (by default) so that padded batches give the same outputs as single utterances.

    Args:
        sampling_rate (`int`, defaults to 16000): the only accepted sampling rate; resample before calling.
        padding_value (`float`, defaults to 0.0): value of the padded samples.
        return_attention_mask (`bool`, defaults to `True`): return the sample-level attention mask.
        do_normalize (`bool`, defaults to `True`): standardize each utterance (SpidR needs it).
        min_samples (`int`, defaults to 400): shortest accepted input, the model's receptive field (25 ms).
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = SAMPLING_RATE,
        padding_value: float = 0.0,
        return_attention_mask: bool = True,
        do_normalize: bool = True,
        min_samples: int = DEFAULT_MIN_SAMPLES,
        **kwargs,
    ):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.return_attention_mask = return_attention_mask
        self.do_normalize = do_normalize
        self.min_samples = min_samples

    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        padding: bool | str | PaddingStrategy = "longest",
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | TensorType | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Featurize one utterance (1-d array or list of floats) or a batch (list of 1-d arrays, or a 2-d array with one
        utterance per row). Arrays may be numpy arrays or torch tensors.
        """
        if sampling_rate is not None:
            sampling_rate = checked_sampling_rate(sampling_rate)
        self._check_sampling_rate(sampling_rate)
        utterances = [self._check_utterance(x, i) for i, x in enumerate(self._as_utterances(raw_speech))]
        padded = self.pad(
            BatchFeature({"input_values": utterances}),
            padding=padding,
            max_length=max_length,
            truncation=truncation,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=True,
        )
        input_values = [np.asarray(x, dtype=np.float32) for x in padded["input_values"]]
        attention_mask = [np.asarray(m, dtype=np.int32) for m in padded["attention_mask"]]
        if self.do_normalize:
            input_values = [
                self._standardize(x, int(m.sum())) for x, m in zip(input_values, attention_mask, strict=True)
            ]
        features = {"input_values": input_values}
        if return_attention_mask if return_attention_mask is not None else self.return_attention_mask:
            features["attention_mask"] = attention_mask
        return BatchFeature(features, tensor_type=return_tensors)

    def _check_sampling_rate(self, sampling_rate: int | None) -> None:
        if sampling_rate is None:
            logger.warning_once(
                f"Pass `sampling_rate={self.sampling_rate}` to {type(self).__name__} so that audio at another rate is "
                "caught instead of silently giving wrong features."
            )
        elif sampling_rate != self.sampling_rate:
            raise ValueError(
                f"SpidR expects {self.sampling_rate} Hz audio, got {sampling_rate} Hz. Resample first, e.g. with "
                f"`dataset.cast_column('audio', Audio(sampling_rate={self.sampling_rate}))` in datasets."
            )

    @staticmethod
    def _as_utterances(raw_speech) -> list:
        """Split the input into a list of utterances, keeping each one's original shape for the checks."""
        if hasattr(raw_speech, "detach"):  # torch tensor, without importing torch here
            raw_speech = tensor_to_numpy(raw_speech)
        if isinstance(raw_speech, np.ndarray):
            if raw_speech.ndim > 2:
                raise ValueError(
                    f"Expected a 1-d utterance or a 2-d (batch, samples) array, got shape {raw_speech.shape}. "
                    "Multi-channel audio must be downmixed to mono first."
                )
            return [raw_speech] if raw_speech.ndim == 1 else list(raw_speech)
        if isinstance(raw_speech, list | tuple):
            if len(raw_speech) == 0:
                raise ValueError("Got an empty list: nothing to featurize.")
            if np.isscalar(raw_speech[0]):
                return [raw_speech]
            return list(raw_speech)
        raise ValueError(f"Expected audio as a numpy array, a torch tensor or a list, got {type(raw_speech).__name__}.")

    def _check_utterance(self, utterance, index: int) -> np.ndarray:
        if hasattr(utterance, "detach"):
            utterance = tensor_to_numpy(utterance)
        array = np.asarray(utterance)
        if array.ndim != 1:
            raise ValueError(
                f"Utterance {index} has shape {array.shape}: SpidR takes mono audio, one 1-d array per utterance. "
                "Downmix multi-channel audio first (e.g. `audio.mean(axis=0)` for a (channels, samples) array)."
            )
        samples = checked_float32_samples(array, f"Utterance {index}")
        if samples.size < self.min_samples:
            raise ValueError(
                f"Utterance {index} has {samples.size} samples, fewer than the model's receptive field of "
                f"{self.min_samples} samples ({1000 * self.min_samples / self.sampling_rate:.0f} ms). If this is a "
                "(samples, channels) array, downmix it to mono first."
            )
        return samples

    def _standardize(self, values: np.ndarray, length: int) -> np.ndarray:
        """Standardize the first `length` samples (float64 statistics) and set the padding to `padding_value`."""
        valid = values[:length].astype(np.float64)
        standardized = np.full_like(values, self.padding_value)
        standardized[:length] = (valid - valid.mean()) / np.sqrt(valid.var() + STANDARDIZATION_EPS)
        return standardized


__all__ = ["SpidrFeatureExtractor"]
