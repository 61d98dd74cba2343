"""Evaluation inputs: batches of utterances, and the log-mel baseline features."""

import functools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

from ..data.aligned_speech import Utterance
from ..model.configuration_spidr import SAMPLING_RATE
from ..model.representations import Representations
from .items import HOP_SAMPLES, WINDOW_SAMPLES

NUM_MEL_BINS = 80


def batches(utterances: Sequence[Utterance], batch_size: int) -> Iterator[list[int]]:
    """Indices of utterances of similar lengths together (less padding), longest first."""
    order = sorted(range(len(utterances)), key=lambda index: -len(utterances[index].audio))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def log_mel(audio: np.ndarray) -> torch.Tensor:
    """
    `(frames, 80)` log-mel energies on SpidR's frames (25 ms Hann window, 20 ms hop, no padding), each mel bin
    standardized over the utterance so that angular distances compare spectral shapes.
    """
    waveform = torch.from_numpy(audio).float()[None]
    frames, _ = log_mel_batch(waveform, torch.tensor([len(audio)]))
    return frames[0]


def log_mel_batch(waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    `(batch, samples)` zero-padded waveforms of `(batch,)` lengths in samples to `(batch, frames, 80)` log-mel
    energies as `log_mel` gives each one alone (zero on the frames past an utterance's end), and the `(batch,
    frames)` mask of the valid frames.
    """
    filters = torch.from_numpy(_mel_filters()).to(waveforms.device, torch.float32)
    spectrum = torch.stft(
        waveforms.float(),
        n_fft=WINDOW_SAMPLES,
        hop_length=HOP_SAMPLES,
        window=torch.hann_window(WINDOW_SAMPLES, device=waveforms.device),
        center=False,
        return_complex=True,
    )
    energies = (spectrum.abs().square().transpose(1, 2) @ filters).clamp_min(1e-10).log()
    num_frames = ((lengths.to(energies.device) - WINDOW_SAMPLES) // HOP_SAMPLES + 1).clamp(min=0)
    valid = (torch.arange(energies.shape[1], device=energies.device) < num_frames[:, None]).unsqueeze(-1)
    count = valid.sum(1, keepdim=True).clamp(min=1)
    mean = (energies * valid).sum(1, keepdim=True) / count
    std = (((energies - mean) * valid).square().sum(1, keepdim=True) / count).sqrt()
    return ((energies - mean) / (std + 1e-5)) * valid, valid.squeeze(-1)


@functools.cache  # the same filters for every utterance and batch (the log-mel heads call it at each step)
def _mel_filters() -> np.ndarray:
    return mel_filter_bank(
        num_frequency_bins=WINDOW_SAMPLES // 2 + 1,
        num_mel_filters=NUM_MEL_BINS,
        min_frequency=20.0,
        max_frequency=SAMPLING_RATE / 2,
        sampling_rate=SAMPLING_RATE,
        norm="slaney",
        mel_scale="slaney",
    )


class LogMelRepresentations:
    """The log-mel baseline, under layer None."""

    layers = (None,)
    codebook_layers = ()

    def __call__(self, audios: Sequence[np.ndarray], with_units: bool = True) -> Representations:
        return Representations({None: [log_mel(audio) for audio in audios]}, {})
