"""
Audio files for the commands: which files of a folder are audio, their durations from the headers, decoding to 16 kHz
mono with a one-line error, and naming the first few bad files. (Released folders decode with the pipeline's own
minimal decoder, `pipeline_spidr.load_audio`, which this module uses too.)
"""

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import AudioError
from ..model.configuration_spidr import SAMPLING_RATE
from ..model.pipeline_spidr import load_audio

# What counts as an audio file of a folder (extract, ZeroSpeech-layout sets, k-means audio): the common formats FFmpeg
# decodes. A list rather than "anything but known non-audio", so that notes, alignments and caches kept beside the
# audio are never taken for it
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".wma", ".webm", ".sph")
MAX_NAMED = 5  # files (or ids) named in an error about several


def name_some(names: Sequence[object], limit: int = MAX_NAMED, total: int | None = None) -> str:
    """The first `limit` of `names`, and how many more of the `total` (all of `names` by default): "a, b and 4 more"."""
    total = len(names) if total is None else total
    more = f" and {total - limit} more" if total > limit else ""
    return ", ".join(str(name) for name in names[:limit]) + more


def audio_files(folder: str | os.PathLike) -> list[Path]:
    """
    The audio files under `folder` (suffix in `AUDIO_SUFFIXES`, any case; recursively, sorted), but hidden files and
    files in hidden folders (.git, .Trash, ...).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioError(f"Audio folder {folder} not found")
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in AUDIO_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def audio_duration(source: str | bytes) -> float:
    """Seconds of audio in a file (its path or bytes): from the header, decoded when the header does not say."""
    from torchcodec.decoders import AudioDecoder

    decoder = AudioDecoder(source)
    duration = decoder.metadata.duration_seconds_from_header
    if duration is None:  # some containers have no duration in their header: decode to know
        duration = decoder.get_all_samples().duration_seconds
    return duration


def file_seconds(path: Path) -> float:
    """`audio_duration` of a file, where an unreadable file is a one-line error naming it."""
    try:
        return audio_duration(os.fspath(path))
    except (RuntimeError, ValueError) as error:
        raise AudioError(f"Could not decode {path}: {first_line(error)}") from error


def decode(path: str | os.PathLike) -> np.ndarray:
    """16 kHz mono float32 samples of a file FFmpeg reads; a missing or unreadable file is a one-line error."""
    try:
        return load_audio(path, None, SAMPLING_RATE)
    except (RuntimeError, ValueError, OSError) as error:
        prefix, message = f"Could not decode {path}: ", first_line(error)
        # The pipeline's decoder already says so for files FFmpeg cannot open: not twice
        raise AudioError(message if message.startswith(prefix) else prefix + message) from error


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class AudioCollection(NamedTuple):
    """`count` audio items, decoded one at a time as `load(index)` and named (for messages) as `name(index)`."""

    count: int
    load: Callable[[int], np.ndarray]
    name: Callable[[int], str]


def draw_audio(count: int, load: Callable[[int], np.ndarray], max_seconds: float, seed: int) -> list[np.ndarray]:
    """Audio of randomly drawn items among `count` (`load(index)`), until they add up to `max_seconds` (or all are)."""
    audios, seconds = [], 0.0
    for index in np.random.default_rng(seed).permutation(count).tolist():
        audios.append(load(index))
        seconds += len(audios[-1]) / SAMPLING_RATE
        if seconds >= max_seconds:
            break
    return audios


def folder_audio(folder: str | os.PathLike, name: str = "") -> AudioCollection:
    """The audio files under `folder` (listed, not decoded); `name` says what the folder is for."""
    paths = audio_files(folder)
    if not paths:
        raise AudioError(f"No audio files ({' '.join(AUDIO_SUFFIXES)}) in {name + ' ' if name else ''}{folder}")
    return AudioCollection(len(paths), lambda index: decode(paths[index]), lambda index: str(paths[index]))


def draw_folder_audio(folder: str | os.PathLike, max_seconds: float, seed: int, name: str = "") -> list[np.ndarray]:
    """Randomly drawn audio files under `folder`, decoded, up to `max_seconds`; `name` says what the folder is for."""
    collection = folder_audio(folder, name)
    return draw_audio(collection.count, collection.load, max_seconds, seed)
