"""
Audio files for the commands: which files of a folder are audio, their durations from the headers, decoding to 16 kHz
mono with a one-line error, and naming the first few bad files. (Released folders decode with the pipeline's own
minimal decoder, `pipeline_spidr.load_audio`, which this module uses too.)

Decoding goes through torchcodec (FFmpeg). Where torchcodec cannot be imported (not installed, as on the lent GPU
machines' image, or without its FFmpeg libraries), 16 kHz mono 16-bit PCM wav files (what `spidr-hf corpus` and
benchmarks/gpu_suite.py write) are read with the standard library's `wave` instead, to the same samples; any other
file is a one-line error saying that it needs torchcodec.
"""

import functools
import io
import os
import wave
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
        raise AudioError(f"Audio folder {folder} " + ("is a file, not a folder" if folder.exists() else "not found"))
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in AUDIO_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def audio_duration(source: str | bytes) -> float:
    """Seconds of audio in a file (its path or bytes): from the header, decoded when the header does not say."""
    if torchcodec_failure() is not None:
        with pcm_wav(source) as reader:
            return reader.getnframes() / SAMPLING_RATE
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
    """16 kHz mono float32 samples of a file FFmpeg reads; a missing or unreadable file, or one whose samples are not
    all finite (a float wav can hold NaN), is a one-line error naming it."""
    if torchcodec_failure() is not None:
        return decode_wav(path)
    try:
        audio = load_audio(path, None, SAMPLING_RATE)
    except (RuntimeError, ValueError, OSError) as error:
        prefix, message = f"Could not decode {path}: ", first_line(error)
        # The pipeline's decoder already says so for files FFmpeg cannot open: not twice
        raise AudioError(message if message.startswith(prefix) else prefix + message) from error
    if not np.isfinite(audio).all():  # else the feature extractor refuses "utterance N" of a batch, unnamed
        raise AudioError(f"{path} holds NaN or infinite samples: repair or leave out that file")
    return audio


@functools.cache
def torchcodec_failure() -> str | None:
    """Why torchcodec cannot decode in this environment (its import error, in one line), or None when it can."""
    try:
        import torchcodec.decoders  # noqa: F401
    except (ImportError, RuntimeError, OSError) as error:  # RuntimeError: installed, but its FFmpeg libraries are not
        return first_line(error)
    return None


@contextmanager
def pcm_wav(source: str | os.PathLike | bytes) -> Iterator[wave.Wave_read]:
    """
    A 16 kHz mono 16-bit PCM wav file (a path or its bytes) opened with the standard library's `wave`, for where
    torchcodec is missing. Other files, which would need FFmpeg to resample or downmix, are a one-line `AudioError`.
    """
    name = "the audio bytes" if isinstance(source, bytes) else os.fspath(source)
    needs = f"needs torchcodec, which cannot be imported here ({torchcodec_failure()})"
    try:  # the opening alone: errors of the caller's block are not this file's (closed by the `with` below)
        reader = wave.open(io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source), "rb")  # noqa: SIM115
    except FileNotFoundError as error:
        raise AudioError(f"Could not decode {name}: no such file") from error
    except (wave.Error, EOFError, OSError) as error:
        raise AudioError(f"Could not decode {name} as PCM wav ({first_line(error)}): other formats {needs}") from error
    with reader:
        channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
        if (channels, width, rate) != (1, 2, SAMPLING_RATE):
            raise AudioError(
                f"{name} is {channels}-channel {8 * width}-bit {rate} Hz wav: only 1-channel 16-bit {SAMPLING_RATE} Hz "
                f"wav decodes without FFmpeg; other files {needs}"
            )
        yield reader


def decode_wav(source: str | os.PathLike | bytes) -> np.ndarray:
    """
    The float32 samples of a 16 kHz mono 16-bit PCM wav file (`pcm_wav`): the integers over 2^15, the samples that
    torchcodec gives (tests/test_audio_without_torchcodec.py compares them).
    """
    with pcm_wav(source) as reader:
        raw = reader.readframes(reader.getnframes())
    return np.frombuffer(raw, "<i2").astype(np.float32) / np.float32(2**15)


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
