"""
Spoken story cloze (sSC, tSC; Hassid et al. 2023): pairs of the same story with its true ending and with a false one;
a pair scores 1 when the LM gives the true one the higher score, 0.5 on a tie, 0 else; the accuracy is the mean over
pairs. Two published layouts are read:

- **a folder** as slamkit reads it (`slamkit.metric.modelling_metric.ModellingMetricDataset`): its `*.wav` files, or,
  when it has none, those of each of its subfolders, sorted by the integer before the first "_" of the name; files
  2i and 2i+1 of that order are pair i, the first the true ending (slamkit's `pos_file`, `neg_file`). slamkit's sort
  keeps files with the same number in the file system's listing order, which nothing fixes: such a folder is refused
  here, as is an odd number of files (the last would have no pair) or a name without the number. `spidr-hf
  slm-benchmark`'s sSC/ and tSC/ folders are written in this layout (`2i_true.wav`, `2i+1_false.wav`).
- **a `datasets` dataset** (a `save_to_disk` folder, a folder of data files, or a Hub id such as `speed/sStoryCloze`)
  with one audio column for the true ending and one for the false (`positive` and `negative` by default, as in the
  Hub's `speed/sStoryCloze` and `speed/tStoryCloze`): each row a pair, its two audios written once, 16 kHz mono
  16-bit wav, into a folder of the scoring's output (keyed on the dataset, split and columns), which reruns reuse.

Pairs whose audio is missing or cannot be decoded are left out and named, never dropped silently.
"""

import hashlib
import itertools
import json
import os
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.audio import first_line, name_some
from ..data.saved_datasets import is_saved_dataset, load_saved_dataset
from ..defaults import STORY_FALSE_COLUMN, STORY_TRUE_COLUMN
from ..errors import AudioError, SpidrError
from ..io.atomic_files import write_atomically
from ..model.configuration_spidr import SAMPLING_RATE

BENCHMARKS = ("ssc", "tsc")
TRUE_COLUMN, FALSE_COLUMN = STORY_TRUE_COLUMN, STORY_FALSE_COLUMN
FOLDER_SEPARATOR = "_"  # slamkit's `sep` for story cloze: the number before it orders the files


@dataclass(frozen=True)
class StoryPair:
    """The ids of the two audio files of one story: with its true ending and with its false one."""

    true: str
    false: str


@dataclass
class StoryClozeSet:
    """The pairs of a story-cloze set, the audio file of every id, and the pairs left out (id -> why)."""

    source: str
    pairs: list[StoryPair]
    files: dict[str, Path]
    left_out: dict[str, str] = field(default_factory=dict)


def pair_score(true: float, false: float) -> float:
    return 1.0 if true > false else 0.5 if true == false else 0.0


def story_cloze_scores(pairs: Sequence[StoryPair], scores: Mapping[str, float]) -> list[float]:
    """The score of every pair (1, 0.5 or 0) whose two files are scored (the others are left out)."""
    scored = [pair for pair in pairs if pair.true in scores and pair.false in scores]
    return [pair_score(scores[pair.true], scores[pair.false]) for pair in scored]


def story_cloze_accuracy(pairs: Sequence[StoryPair], scores: Mapping[str, float]) -> dict:
    """Accuracy in % over the pairs, and their number."""
    values = story_cloze_scores(pairs, scores)
    if not values:
        raise SpidrError("No story-cloze pair has both of its files scored")
    return {"all": 100 * float(np.mean(values)), "pairs": len(values)}


def load_story_cloze(
    source: str | os.PathLike,
    audio_cache: Path,
    *,
    true_column: str = TRUE_COLUMN,
    false_column: str = FALSE_COLUMN,
    split: str | None = None,
) -> StoryClozeSet:
    """
    The story-cloze set of `source`: a folder in slamkit's layout (wav files), else a `datasets` dataset (a local
    folder or a Hub id), whose audio is written under `audio_cache`.
    """
    path = Path(source)
    if path.is_dir() and wav_groups(path):
        return folder_story_cloze(path)
    columns = {"true_column": true_column, "false_column": false_column}
    return dataset_story_cloze(str(source), audio_cache, **columns, split=split)


def wav_groups(folder: Path) -> list[list[Path]]:
    """slamkit's groups of a folder: its own `*.wav` files, or else those of each subfolder (in name order)."""
    direct = sorted(folder.glob("*.wav"))
    if direct:
        return [direct]
    subfolders = sorted(child for child in folder.iterdir() if child.is_dir())
    return [files for files in (sorted(subfolder.glob("*.wav")) for subfolder in subfolders) if files]


def folder_story_cloze(folder: Path) -> StoryClozeSet:
    """The pairs of a folder in slamkit's layout (see the module's docstring); one line for a folder it cannot pair."""
    groups = wav_groups(folder)
    if not groups:
        raise SpidrError(f"{folder} holds no .wav files, neither directly nor in subfolders (slamkit's layout)")
    pairs, files = [], {}
    for paths in groups:
        numbered = []
        for path in paths:
            prefix = path.name.split(FOLDER_SEPARATOR)[0]
            try:
                numbered.append((int(prefix), path))
            except ValueError:
                raise SpidrError(
                    f"{path} does not start with a number and '{FOLDER_SEPARATOR}': the files of a story-cloze folder "
                    "are ordered by that number (slamkit's layout: pair i is files 2i and 2i+1, the true one first)"
                ) from None
        numbered.sort(key=lambda item: item[0])
        for (number, first), (next_number, second) in itertools.pairwise(numbered):
            if number == next_number:
                raise SpidrError(
                    f"{first} and {second} both have the number {number}: their order, which decides which one is "
                    "the true ending, would be the file system's (slamkit's sort keeps it); number them apart"
                )
        if len(numbered) % 2:
            raise SpidrError(
                f"{len(numbered)} wav files in {paths[0].parent}: an odd number, so {numbered[-1][1]} has no pair "
                "(pair i is files 2i and 2i+1 in the order of their numbers)"
            )
        for index in range(0, len(numbered), 2):
            ids = [path.relative_to(folder).with_suffix("").as_posix() for _, path in numbered[index : index + 2]]
            files |= dict(zip(ids, (path for _, path in numbered[index : index + 2]), strict=True))
            pairs.append(StoryPair(*ids))
    return StoryClozeSet(str(folder), pairs, files)


def open_dataset(source: str, split: str | None):
    """A split of a `datasets` dataset: a `save_to_disk` folder, a folder of data files, or a Hub id."""
    import datasets

    if is_saved_dataset(source):
        loaded = load_saved_dataset(source)  # a damaged folder is its own one-line error
    else:
        try:
            loaded = datasets.load_dataset(source, split=split)
        except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
            raise SpidrError(
                f"{source} is neither a folder of story-cloze wav files nor a dataset `datasets` can load: "
                f"{first_line(error)}"
            ) from error
    if isinstance(loaded, datasets.DatasetDict):
        if split is None and len(loaded) == 1:
            split = next(iter(loaded))
        if split not in loaded:
            raise SpidrError(f"Choose the split of {source} to score (--split): it has {', '.join(loaded)}")
        loaded = loaded[split]
    return loaded


def dataset_story_cloze(
    source: str,
    audio_cache: Path,
    *,
    true_column: str = TRUE_COLUMN,
    false_column: str = FALSE_COLUMN,
    split: str | None = None,
) -> StoryClozeSet:
    """
    The pairs of a dataset with one audio column for the true ending and one for the false: row i is pair i, its
    audios written as `audio_cache/KEY/rowI-true.wav` and `-false.wav` (KEY: the dataset, split and columns), unless
    there already. A row whose audio is missing or cannot be decoded is left out, with why.
    """
    from datasets import Audio

    dataset = open_dataset(source, split)
    missing = [column for column in (true_column, false_column) if column not in dataset.column_names]
    if missing:
        raise SpidrError(
            f"{source} has no column {' nor '.join(repr(column) for column in missing)} (its columns: "
            f"{', '.join(dataset.column_names)}): name the true and false endings' audio columns with --true-column "
            "and --false-column"
        )
    where = str(Path(source).resolve()) if Path(source).exists() else source
    key = json.dumps([where, split, true_column, false_column])
    folder = audio_cache / hashlib.sha256(key.encode()).hexdigest()[:16]
    dataset = dataset.select_columns([true_column, false_column])
    for column in (true_column, false_column):
        dataset = dataset.cast_column(column, Audio(sampling_rate=SAMPLING_RATE, num_channels=1))
    pairs, files, left_out = [], {}, {}
    width = len(str(max(len(dataset) - 1, 0)))
    for index in range(len(dataset)):
        ids = {side: f"row{index:0{width}d}-{side}" for side in ("true", "false")}
        paths = {side: folder / f"{id}.wav" for side, id in ids.items()}
        if not all(path.is_file() for path in paths.values()):
            try:
                row = dataset[index]
                columns = {"true": true_column, "false": false_column}
                audios = {side: row_audio(row, column) for side, column in columns.items()}
            except (AudioError, RuntimeError, ValueError, OSError) as error:
                left_out[f"row {index}"] = first_line(error)
                continue
            folder.mkdir(parents=True, exist_ok=True)
            for side, audio in audios.items():
                write_atomically(paths[side], lambda partial, audio=audio: write_pcm_wav(partial, audio))
        files |= {ids[side]: paths[side] for side in ids}
        pairs.append(StoryPair(ids["true"], ids["false"]))
    if not pairs:
        why = name_some([f"{row} ({reason})" for row, reason in left_out.items()]) if left_out else "it has no rows"
        raise SpidrError(f"{source} has no story-cloze pair whose two audios can be read: {why}")
    return StoryClozeSet(source, pairs, files, left_out)


def row_audio(row: Mapping, column: str) -> np.ndarray:
    """16 kHz mono samples of a row's audio column; a missing one is an AudioError."""
    from ..model.pipeline_spidr import load_audio

    if row[column] is None:
        raise AudioError(f"no audio in {column!r}")
    return load_audio(row[column], None, SAMPLING_RATE)


def write_pcm_wav(path: Path, audio: np.ndarray) -> None:
    """16 kHz mono 16-bit PCM (what every decoder here reads, FFmpeg or not); samples clipped to [-1, 1)."""
    pcm = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 2**15), -(2**15), 2**15 - 1).astype("<i2")
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLING_RATE)
        writer.writeframes(pcm.tobytes())
