"""The spidr-features and spidr-units pipelines: inputs, batching, resampling, chunking of long recordings."""

import sys

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG, write_audio
from datasets import Audio, Dataset
from torchcodec.decoders import AudioDecoder
from torchcodec.encoders import AudioEncoder
from transformers import pipeline
from transformers.dynamic_module_utils import get_imports
from transformers.pipelines import PIPELINE_REGISTRY

import spidr_hf
from spidr_hf import SpidrConfig, SpidrFeatureExtractor, SpidrForPreTraining
from spidr_hf.model.pipeline_spidr import SpidrFeaturesPipeline, SpidrUnitsPipeline, plan_chunks, resample

RATE = 16000
HOP = 320
# Chunked vs single pass on the tiny random model (12 s, 4 s chunks, 1 s stride): measured at most 0.05 per-frame
# relative L2 difference and over 99.8% equal units (seeds 0-3); a one-frame misalignment gives about 0.6.
CHUNKED_FRAME_TOLERANCE = 0.08
CHUNKED_UNIT_AGREEMENT = 0.97


def speech_like(seconds: float, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """
    A deterministic voiced-like signal: a gliding tone and noise under a syllable-rate envelope. No silence: random
    models amplify near-silent frames so much that 16-bit rounding would change their features by percents.
    """
    rng = np.random.default_rng(seed)
    time = np.arange(int(seconds * rate)) / rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * time + rng.uniform(0, 6))
    pitch = 150 + 100 * np.sin(2 * np.pi * 0.5 * time)
    tone = np.sin(2 * np.pi * np.cumsum(pitch) / rate)
    return (envelope * (tone + 0.3 * rng.standard_normal(time.size))).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> SpidrForPreTraining:
    torch.manual_seed(0)
    return SpidrForPreTraining(SpidrConfig(**TINY_CONFIG)).eval()


@pytest.fixture(scope="module")
def features(model):
    return pipeline("spidr-features", model=model.spidr, feature_extractor=SpidrFeatureExtractor(), device="cpu")


@pytest.fixture(scope="module")
def units(model):
    return pipeline("spidr-units", model=model, feature_extractor=SpidrFeatureExtractor(), device="cpu")


def direct_layer_results(model: SpidrForPreTraining, audio: np.ndarray, layer: int) -> np.ndarray:
    inputs = SpidrFeatureExtractor()(audio, sampling_rate=RATE, return_tensors="pt")
    with torch.no_grad():
        return model.spidr(**inputs, output_layer_results=True).layer_results[layer - 1][0].numpy()


def frame_relative_error(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return np.linalg.norm(actual - expected, axis=1) / np.linalg.norm(expected, axis=1)


def test_tasks_are_registered_on_import():
    for task, pipeline_class, auto_class in [
        ("spidr-features", SpidrFeaturesPipeline, "AutoModel"),
        ("spidr-units", SpidrUnitsPipeline, "AutoModelForPreTraining"),
    ]:
        _, entry, _ = PIPELINE_REGISTRY.check_task(task)
        assert entry["impl"] is pipeline_class
        assert [c.__name__ for c in entry["pt"]] == [auto_class]
    assert spidr_hf.SpidrFeaturesPipeline is SpidrFeaturesPipeline


def test_pipeline_file_imports_only_torch_transformers_numpy():
    """The file ships as remote code: transformers refuses to load it if it imports a package that is missing."""
    packages = set(get_imports(sys.modules[SpidrFeaturesPipeline.__module__].__file__)) - sys.stdlib_module_names
    assert packages == {"numpy", "torch", "transformers"}


@pytest.mark.parametrize("layer", [1, 3, 4])
def test_features_are_the_layer_results(model, features, layer):
    audio = speech_like(3.0)
    output = features(audio, sampling_rate=RATE, layer=layer)["features"]
    expected = direct_layer_results(model, audio, layer)
    assert output.dtype == np.float32 and output.shape == expected.shape == (149, 64)
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)


def test_features_default_to_layer_6_layer_results():
    torch.manual_seed(0)
    model = SpidrForPreTraining(SpidrConfig(**{**TINY_CONFIG, "num_hidden_layers": 7})).eval()
    pipe = pipeline("spidr-features", model=model, feature_extractor=SpidrFeatureExtractor(), device="cpu")
    audio = speech_like(1.0)
    np.testing.assert_allclose(
        pipe(audio, sampling_rate=RATE)["features"], direct_layer_results(model, audio, 6), rtol=1e-5, atol=1e-6
    )


def test_hidden_states_representation(model, features):
    audio = speech_like(2.0)
    inputs = SpidrFeatureExtractor()(audio, sampling_rate=RATE, return_tensors="pt")
    with torch.no_grad():
        hidden_states = model.spidr(**inputs, output_hidden_states=True).hidden_states
    for layer in (0, 2, 4):
        output = features(audio, sampling_rate=RATE, layer=layer, representation="hidden_states")["features"]
        np.testing.assert_allclose(output, hidden_states[layer][0].numpy(), rtol=1e-5, atol=1e-6)


def test_units_deduplication_and_timestamps(model, units):
    audio = speech_like(3.0)
    inputs = SpidrFeatureExtractor()(audio, sampling_rate=RATE, return_tensors="pt")
    expected = model.get_units(**inputs, layer=4)[0].numpy()
    frames = units(audio, sampling_rate=RATE, layer=4, return_timestamps=True)
    np.testing.assert_array_equal(frames["units"], expected)
    np.testing.assert_allclose(frames["timestamps"][:, 0], np.arange(len(expected)) * 0.02)
    np.testing.assert_allclose(frames["timestamps"][:, 1], np.arange(1, len(expected) + 1) * 0.02)

    merged = units(audio, sampling_rate=RATE, layer=4, deduplicate=True, return_timestamps=True)
    assert len(merged["units"]) < len(expected)
    assert np.all(np.diff(merged["units"]) != 0)
    spans = merged["timestamps"]
    assert spans[0, 0] == 0 and spans[-1, 1] == pytest.approx(len(expected) * 0.02)
    np.testing.assert_allclose(spans[1:, 0], spans[:-1, 1])  # runs tile the recording
    # expanding every unit over its frames gives back the frame-level units
    run_frames = np.rint((spans[:, 1] - spans[:, 0]) / 0.02).astype(int)
    np.testing.assert_array_equal(np.repeat(merged["units"], run_frames), expected)
    assert set(units(audio, sampling_rate=RATE, layer=4, deduplicate=True)) == {"units"}


def test_units_of_layer_without_codebook_are_refused(units):
    with pytest.raises(ValueError, match="no codebook head"):
        units(speech_like(1.0), sampling_rate=RATE, layer=2)


def test_units_need_the_pretraining_model(model):
    pipe = SpidrUnitsPipeline(model=model.spidr, feature_extractor=SpidrFeatureExtractor(), device="cpu")
    with pytest.raises(ValueError, match="AutoModelForPreTraining"):
        pipe(speech_like(1.0), sampling_rate=RATE, layer=4)


def test_input_forms_agree(features):
    audio = speech_like(2.0)
    expected = features(audio, sampling_rate=RATE, layer=3)["features"]
    for given in (
        {"array": audio, "sampling_rate": RATE},
        {"raw": audio, "sampling_rate": RATE, "path": None},
        torch.from_numpy(audio),
    ):
        kwargs = {} if isinstance(given, dict) else {"sampling_rate": RATE}
        np.testing.assert_array_equal(features(given, layer=3, **kwargs)["features"], expected)


def test_batches_equal_single_items(features, units):
    items = [
        speech_like(1.3, seed=1),
        speech_like(2.9, seed=2),
        {"array": speech_like(0.7, seed=3), "sampling_rate": RATE},
    ]
    alone = [features(item, sampling_rate=RATE, layer=4)["features"] for item in items]
    batched = features(items, sampling_rate=RATE, layer=4, batch_size=3)
    assert [b["features"].shape for b in batched] == [a.shape for a in alone] == [(64, 64), (144, 64), (34, 64)]
    for one, many in zip(alone, batched, strict=True):
        np.testing.assert_allclose(many["features"], one, rtol=1e-4, atol=1e-5)
    alone_units = [units(item, sampling_rate=RATE, layer=3)["units"] for item in items]
    for one, many in zip(alone_units, units(items, sampling_rate=RATE, layer=3, batch_size=2), strict=True):
        np.testing.assert_array_equal(many["units"], one)


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_files_are_decoded(tmp_path, features, suffix):
    audio = speech_like(2.0)
    audio = 0.5 * audio / np.abs(audio).max()
    path = write_audio(tmp_path / f"speech{suffix}", audio, RATE)
    from_file = features(str(path), layer=4)["features"]
    from_array = features(audio, sampling_rate=RATE, layer=4)["features"]
    assert from_file.shape == from_array.shape
    # WAV stores 16-bit samples, FLAC 24-bit: only quantization separates the file from the array
    assert frame_relative_error(from_file, from_array).max() < 1e-2
    np.testing.assert_array_equal(features(path, layer=4)["features"], from_file)  # pathlib.Path too


def test_stereo_file_is_downmixed(tmp_path, features):
    left, right = speech_like(2.0, seed=1), speech_like(2.0, seed=2)
    stereo = 0.4 * np.stack([left / np.abs(left).max(), right / np.abs(right).max()])
    path = tmp_path / "stereo.flac"
    AudioEncoder(torch.from_numpy(stereo), sample_rate=RATE).to_file(path)
    mono = features(stereo.mean(0), sampling_rate=RATE, layer=4)["features"]
    assert frame_relative_error(features(str(path), layer=4)["features"], mono).max() < 1e-3


def test_datasets_audio_column(tmp_path, features):
    """`datasets` >= 4 hands out torchcodec decoders (here at the file's 22.05 kHz, resampled by the pipeline)."""
    audio = speech_like(2.0, rate=22050)
    path = write_audio(tmp_path / "speech.flac", 0.5 * audio / np.abs(audio).max(), 22050)
    dataset = Dataset.from_dict({"audio": [str(path)]}).cast_column("audio", Audio())
    decoder = dataset[0]["audio"]
    assert isinstance(decoder, AudioDecoder)
    from_decoder = features(decoder, layer=4)["features"]
    assert frame_relative_error(from_decoder, features(str(path), layer=4)["features"]).max() < 1e-3


def test_resample_matches_the_analytic_signal():
    """A band-limited signal sampled at 8 kHz, resampled to 16 kHz, equals the same signal sampled at 16 kHz."""

    def tones(rate: int) -> np.ndarray:
        time = np.arange(int(1.0 * rate)) / rate
        return (0.4 * np.sin(2 * np.pi * 440 * time) + 0.3 * np.sin(2 * np.pi * 1250 * time + 1)).astype(np.float32)

    resampled = resample(3.0 * tones(8000), 8000, 16000)  # out of [-1, 1]: scaled around FLAC's range
    assert resampled.shape == (16000,)
    interior = slice(800, -800)  # the filter's start-up and tail
    np.testing.assert_allclose(resampled[interior], 3.0 * tones(16000)[interior], atol=3e-3)


def test_wrong_rate_input_is_resampled(tmp_path, features):
    audio_8k = speech_like(3.0, rate=8000)
    output = features(audio_8k, sampling_rate=8000, layer=4)["features"]
    assert output.shape == (149, 64)  # 3 s at 16 kHz
    expected = features(resample(audio_8k, 8000, RATE), sampling_rate=RATE, layer=4)["features"]
    np.testing.assert_array_equal(output, expected)
    # the same resampler as file decoding: an 8 kHz file and its samples give the same features
    path = write_audio(tmp_path / "speech_8k.flac", audio_8k / np.abs(audio_8k).max(), 8000)
    samples = AudioDecoder(str(path)).get_all_samples()
    from_array = features({"array": samples.data[0].numpy(), "sampling_rate": samples.sample_rate}, layer=4)
    assert frame_relative_error(from_array["features"], features(str(path), layer=4)["features"]).max() < 1e-3


@pytest.mark.parametrize(
    ("given", "kwargs", "error", "match"),
    [
        (np.zeros(16000, np.float32), {}, ValueError, "sampling rate of raw arrays"),
        (np.zeros((2, 16000), np.float32), {"sampling_rate": RATE}, ValueError, "mono"),
        ({"sampling_rate": RATE}, {}, ValueError, "'array'"),
        (np.zeros(200, np.float32), {"sampling_rate": RATE}, ValueError, "receptive field"),
        ([0.0] * 16000, {"sampling_rate": RATE}, ValueError, "Expected a file path"),
        ("/nonexistent/speech.wav", {}, FileNotFoundError, "No audio file"),
        (np.ones(16000, np.float32), {"sampling_rate": RATE, "layer": 5}, ValueError, "it has layers 1 to 4"),
        (np.ones(16000, np.float32), {"sampling_rate": RATE, "representation": "x"}, ValueError, "representation"),
        (np.ones(16000, np.float32), {"sampling_rate": RATE, "layers": 3}, TypeError, "layers"),
        (np.ones(16000, np.float32), {"sampling_rate": RATE, "stride_length_s": 10}, ValueError, "half a chunk"),
    ],
)
def test_bad_inputs_are_refused(features, given, kwargs, error, match):
    with pytest.raises(error, match=match):
        features(given, **kwargs)


def test_arrays_need_no_torchcodec(features, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # as if torchcodec were not installed
    audio = speech_like(1.0)
    assert features(audio, sampling_rate=RATE, layer=4)["features"].shape == (49, 64)
    for needs_ffmpeg in ({"inputs": str(tmp_path / "speech.wav")}, {"inputs": audio, "sampling_rate": 8000}):
        (tmp_path / "speech.wav").write_bytes(b"")
        with pytest.raises(ImportError, match="torchcodec"):
            features(**needs_ffmpeg, layer=4)


def test_undecodable_file_is_refused(tmp_path, features):
    path = tmp_path / "notes.wav"
    path.write_text("not audio")
    with pytest.raises(ValueError, match=r"notes\.wav"):
        features(str(path), layer=4)


@pytest.mark.parametrize("num_samples", [400, 63_999, 64_000, 64_321, 100_000, 128_640, 200_000, 1_000_003])
def test_chunks_tile_the_frames(num_samples):
    chunk, stride = 64_000, 16_000
    total_frames = (num_samples - 400) // HOP + 1
    kept = []
    plan = plan_chunks(num_samples, chunk, stride, HOP, 400)
    for index, (start, end, keep_from, keep_to) in enumerate(plan):
        assert start % HOP == 0 and end - start <= chunk and end <= num_samples
        chunk_frames = (end - start - 400) // HOP + 1
        assert 0 <= keep_from <= keep_to <= chunk_frames
        if index > 0:  # kept frames end at least `stride` after the chunk's cut start...
            assert keep_from * HOP >= stride
        if index < len(plan) - 1:  # ... and their windows end at least `stride` before its cut end
            assert (keep_to - 1) * HOP + 400 <= end - start - stride + HOP
        kept.extend(range(start // HOP + keep_from, start // HOP + keep_to))
    assert kept == list(range(total_frames))
    assert plan[-1][1] == num_samples


def test_chunking_keeps_frames_aligned(features):
    """Before self-attention (encoder input, layer 0) chunked and single-pass outputs are the same numbers."""
    audio = speech_like(12.0)
    single = features(audio, sampling_rate=RATE, layer=0, representation="hidden_states", chunk_length_s=60)
    chunked = features(
        audio, sampling_rate=RATE, layer=0, representation="hidden_states", chunk_length_s=4, stride_length_s=1
    )
    assert chunked["features"].shape == single["features"].shape == (599, 64)
    np.testing.assert_allclose(chunked["features"], single["features"], atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_long_audio_matches_single_pass(model, features, units, seed):
    audio = speech_like(12.0, seed=seed)
    for layer in (1, 4):
        single = features(audio, sampling_rate=RATE, layer=layer, chunk_length_s=60)["features"]
        chunked = features(audio, sampling_rate=RATE, layer=layer, chunk_length_s=4, stride_length_s=1)["features"]
        np.testing.assert_allclose(single, direct_layer_results(model, audio, layer), rtol=1e-5, atol=1e-6)
        assert frame_relative_error(chunked, single).max() < CHUNKED_FRAME_TOLERANCE
    single_units = units(audio, sampling_rate=RATE, layer=4, chunk_length_s=60)["units"]
    chunked_units = units(audio, sampling_rate=RATE, layer=4, chunk_length_s=4, stride_length_s=1)["units"]
    assert len(chunked_units) == len(single_units)
    assert (chunked_units == single_units).mean() >= CHUNKED_UNIT_AGREEMENT


def test_minutes_long_recording_runs_in_bounded_chunks(model, features):
    seen_lengths = []
    hook = model.spidr.feature_extractor.register_forward_pre_hook(
        lambda module, args: seen_lengths.append(args[0].shape[-1])
    )
    try:
        audio = speech_like(150.0)
        output = features([audio], sampling_rate=RATE, layer=4, batch_size=4)[0]["features"]
    finally:
        hook.remove()
    assert output.shape == ((len(audio) - 400) // HOP + 1, 64)
    assert max(seen_lengths) == 20 * RATE  # the default 20 s chunks, never the whole recording
    assert np.isfinite(output).all()
