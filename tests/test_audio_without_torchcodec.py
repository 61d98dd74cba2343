"""
Decoding where torchcodec cannot be imported (the lent GPU machines' image): 16 kHz mono 16-bit PCM wav files decode
with the standard library to the samples torchcodec gives, and anything else is a one-line error that says why.
"""

import sys
import wave

import numpy as np
import pytest

from spidr_hf.data import audio
from spidr_hf.errors import AudioError


def write_wav(path, samples: np.ndarray, rate: int = 16_000, channels: int = 1, width: int = 2) -> None:
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(samples.tobytes())


@pytest.fixture
def without_torchcodec(monkeypatch):
    """torchcodec unimportable, as if never installed; the cached answer of `torchcodec_failure` cleared around."""
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    audio.torchcodec_failure.cache_clear()
    yield
    audio.torchcodec_failure.cache_clear()


def random_samples(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-(2**15), 2**15, size=count, dtype=np.int16)


def test_wav_decodes_without_torchcodec_to_the_samples_and_duration_torchcodec_gives(tmp_path, monkeypatch):
    path = tmp_path / "a.wav"
    samples = random_samples(16_000 * 2 + 123)
    samples[:2] = [-(2**15), 2**15 - 1]  # the extremes
    write_wav(path, samples)
    audio.torchcodec_failure.cache_clear()
    assert audio.torchcodec_failure() is None  # this machine has torchcodec: its decoding is the expected one
    expected, expected_seconds = audio.decode(path), audio.audio_duration(str(path))
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    audio.torchcodec_failure.cache_clear()
    try:
        assert audio.torchcodec_failure() is not None
        found = audio.decode(path)
        assert found.dtype == np.float32
        np.testing.assert_array_equal(found, expected)
        assert audio.audio_duration(str(path)) == pytest.approx(expected_seconds, abs=1e-9)
        assert audio.audio_duration(path.read_bytes()) == pytest.approx(expected_seconds, abs=1e-9)
    finally:
        audio.torchcodec_failure.cache_clear()


@pytest.mark.parametrize(
    ("rate", "channels", "width", "says"),
    [
        (8_000, 1, 2, "1-channel 16-bit 8000 Hz"),
        (16_000, 2, 2, "2-channel 16-bit 16000 Hz"),
        (16_000, 1, 4, "1-channel 32-bit 16000 Hz"),
    ],
)
def test_other_wav_files_are_a_one_line_error_without_torchcodec(
    tmp_path, without_torchcodec, rate, channels, width, says
):
    path = tmp_path / "other.wav"
    write_wav(path, np.zeros(1600 * channels, dtype=f"<i{width}"), rate=rate, channels=channels, width=width)
    for call in (audio.decode, lambda source: audio.audio_duration(str(source))):
        with pytest.raises(AudioError) as error:
            call(path)
        message = str(error.value)
        assert "\n" not in message
        assert str(path) in message and says in message and "needs torchcodec" in message


def test_non_wav_and_missing_files_are_a_one_line_error_without_torchcodec(tmp_path, without_torchcodec):
    flac = tmp_path / "a.flac"
    flac.write_bytes(b"fLaC" + bytes(100))
    with pytest.raises(AudioError, match=r"a\.flac as PCM wav .*other formats needs torchcodec") as error:
        audio.decode(flac)
    assert "\n" not in str(error.value)
    with pytest.raises(AudioError, match=r"Could not decode .*missing\.wav: no such file"):
        audio.decode(tmp_path / "missing.wav")
    # file_seconds, which extract calls on every file first, names the file in one line too
    with pytest.raises(AudioError, match=r"a\.flac"):
        audio.file_seconds(flac)
