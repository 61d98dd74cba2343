"""Evaluation inputs: aligned utterances from a corpus, and the log-mel baseline features."""

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers.audio_utils import mel_filter_bank

from ..audio import draw_audio
from ..configuration_spidr import SAMPLING_RATE
from ..pipeline_spidr import load_audio
from ..representations import Representations
from .items import HOP_SAMPLES, WINDOW_SAMPLES

REQUIRED_COLUMNS = ("audio", "id", "speaker", "phones")
_PHONE_KEYS = {"phone", "start", "end"}
# Alignment times may exceed the audio by rounding only
_ALIGNMENT_TOLERANCE = 0.01
NUM_MEL_BINS = 80


@dataclass
class Utterance:
    id: str
    speaker: str
    audio: np.ndarray  # 16 kHz mono float32
    phones: list[dict] | None  # {"phone", "start", "end"} in seconds; None for a set evaluated without alignments


def _open_split(dataset_dir: str | os.PathLike, split: str):
    """A split of a corpus saved with `save_to_disk`, checked for the needed columns, decoding to 16 kHz mono."""
    from datasets import Audio, DatasetDict, load_from_disk

    path = Path(dataset_dir)
    if not (path / "dataset_dict.json").is_file():
        raise ValueError(f"{path} is not a dataset saved with DatasetDict.save_to_disk (see `spidr-hf corpus`)")
    corpus = load_from_disk(str(path))
    if not isinstance(corpus, DatasetDict) or split not in corpus:
        raise ValueError(f"{path} has no {split!r} split")
    dataset = corpus[split]
    missing = [column for column in REQUIRED_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(f"The {split} split of {path} lacks the column(s) {', '.join(missing)}")
    if len(dataset) == 0:
        raise ValueError(f"The {split} split of {path} is empty")
    dataset = dataset.select_columns(list(REQUIRED_COLUMNS))
    return dataset.cast_column("audio", Audio(sampling_rate=SAMPLING_RATE, num_channels=1))


def load_split(
    dataset_dir: str | os.PathLike, split: str, max_utterances: int | None = None, seed: int = 0
) -> list[Utterance]:
    """Decode and check a split (all of it, or a seeded random subset of `max_utterances`), in dataset order."""
    dataset = _open_split(dataset_dir, split)
    if max_utterances is not None and max_utterances < len(dataset):
        chosen = np.random.default_rng(seed).choice(len(dataset), max_utterances, replace=False)
        dataset = dataset.select(sorted(chosen.tolist()))
    utterances = [_utterance(row) for row in tqdm(dataset, desc=f"Loading {split}")]
    ids = [utterance.id for utterance in utterances]
    if len(set(ids)) != len(ids):
        raise ValueError(f"The {split} split of {dataset_dir} has duplicate ids")
    return utterances


def load_random_audio(dataset_dir: str | os.PathLike, split: str, max_seconds: float, seed: int) -> list[np.ndarray]:
    """Audio of randomly drawn utterances of a split, until they add up to `max_seconds` (or the split ends)."""
    dataset = _open_split(dataset_dir, split)
    return draw_audio(len(dataset), lambda index: _utterance(dataset[index]).audio, max_seconds, seed)


def _utterance(row: dict) -> Utterance:
    phones = row["phones"]
    if not isinstance(phones, list) or not all(isinstance(p, dict) and p.keys() >= _PHONE_KEYS for p in phones):
        raise ValueError(f"Utterance {row['id']}: phones must be a list of {{'phone', 'start', 'end'}} records")
    audio = load_audio(row["audio"], None, SAMPLING_RATE)
    utterance = Utterance(str(row["id"]), str(row["speaker"]), audio, phones)
    check_alignment(utterance)
    return utterance


def check_alignment(utterance: Utterance) -> None:
    """Phones must be in order, non-empty, and end within the audio."""
    phones = utterance.phones
    if not phones:
        raise ValueError(f"Utterance {utterance.id} has no phones")
    previous_end = 0.0
    for phone in phones:
        if not phone["start"] < phone["end"] or phone["start"] < previous_end - 1e-6:
            raise ValueError(
                f"Utterance {utterance.id}: phone {phone['phone']} [{phone['start']}, {phone['end']}] is out of order"
            )
        previous_end = phone["end"]
    duration = len(utterance.audio) / SAMPLING_RATE
    if previous_end > duration + _ALIGNMENT_TOLERANCE:
        raise ValueError(
            f"Utterance {utterance.id}: the alignment ends at {previous_end:.3f} s, after the audio ({duration:.3f} s)"
        )


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
    filters = torch.from_numpy(_mel_filters()).float()
    spectrum = torch.stft(
        torch.from_numpy(audio).float(),
        n_fft=WINDOW_SAMPLES,
        hop_length=HOP_SAMPLES,
        window=torch.hann_window(WINDOW_SAMPLES),
        center=False,
        return_complex=True,
    )
    energies = (spectrum.abs().square().T @ filters).clamp_min(1e-10).log()
    return (energies - energies.mean(0)) / (energies.std(0, unbiased=False) + 1e-5)


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
