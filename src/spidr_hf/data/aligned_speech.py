"""
Phone-aligned utterances: a split of a corpus saved with `DatasetDict.save_to_disk` (the built-in one of `spidr-hf
corpus`, or any with its columns), decoded to 16 kHz mono, with its phone alignments checked; random audio of a split.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import SpidrError
from ..model.configuration_spidr import SAMPLING_RATE
from ..model.pipeline_spidr import load_audio
from .audio import AudioCollection, draw_audio
from .saved_datasets import load_saved_dataset

REQUIRED_COLUMNS = ("audio", "id", "speaker", "phones")
_PHONE_KEYS = {"phone", "start", "end"}
# Alignment times may exceed the audio by rounding only
_ALIGNMENT_TOLERANCE = 0.01


@dataclass
class Utterance:
    id: str
    speaker: str
    audio: np.ndarray  # 16 kHz mono float32
    phones: list[dict] | None  # {"phone", "start", "end"} in seconds; None for a set evaluated without alignments


def open_corpus_split(dataset_dir: str | os.PathLike, split: str, columns: Sequence[str] = REQUIRED_COLUMNS):
    """
    A split of a corpus saved with `save_to_disk` (`spidr-hf corpus`), with `columns` only (checked; the evaluation's
    by default), its audio decoding to 16 kHz mono lazily: nothing is decoded before a row's samples are asked for.
    """
    from datasets import Audio, DatasetDict

    path = Path(dataset_dir)
    if not path.is_dir():
        raise SpidrError(
            f"dataset {path} not found: {path} is not a dataset saved with DatasetDict.save_to_disk (build one with "
            f"`spidr-hf corpus {path}`)"
        )
    if not (path / "dataset_dict.json").is_file():
        raise SpidrError(f"{path} is not a dataset saved with DatasetDict.save_to_disk (see `spidr-hf corpus`)")
    corpus = load_saved_dataset(path)
    if not isinstance(corpus, DatasetDict) or split not in corpus:
        raise SpidrError(f"dataset {path} has no {split!r} split (it has {', '.join(corpus)})")
    dataset = corpus[split]
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise SpidrError(f"The {split} split of {path} lacks the column(s) {', '.join(missing)}")
    if len(dataset) == 0:
        raise SpidrError(f"The {split} split of {path} is empty")
    dataset = dataset.select_columns(list(columns))
    return dataset.cast_column("audio", Audio(sampling_rate=SAMPLING_RATE, num_channels=1))


def load_split(
    dataset_dir: str | os.PathLike, split: str, max_utterances: int | None = None, seed: int = 0
) -> list[Utterance]:
    """Decode and check a split (all of it, or a seeded random subset of `max_utterances`), in dataset order."""
    dataset = open_corpus_split(dataset_dir, split)
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
    collection = split_audio(dataset_dir, split)
    return draw_audio(collection.count, collection.load, max_seconds, seed)


def split_audio(dataset_dir: str | os.PathLike, split: str) -> AudioCollection:
    """The utterances of a split, decoded one at a time (and their alignments checked) as they are loaded."""
    dataset = open_corpus_split(dataset_dir, split)
    return AudioCollection(
        len(dataset), lambda index: _utterance(dataset[index]).audio, lambda index: f"utterance {dataset[index]['id']}"
    )


def _utterance(row: dict) -> Utterance:
    phones = row["phones"]
    if not isinstance(phones, list) or not all(isinstance(p, dict) and p.keys() >= _PHONE_KEYS for p in phones):
        raise ValueError(f"Utterance {row['id']}: phones must be a list of {{'phone', 'start', 'end'}} records")
    try:
        audio = load_audio(row["audio"], None, SAMPLING_RATE)
    except ValueError as error:  # samples that are not finite, among others: the utterance named
        raise ValueError(f"Utterance {row['id']}: {error}") from error
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
