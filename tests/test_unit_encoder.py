"""The unit encoder (what units are and how speech becomes them), the units folder's record, and slm-score's cache."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_audio
from test_extract import speech_like
from test_unit_lm import slm_benchmark, tiny_lm  # noqa: F401 (slm_benchmark: a fixture, found by this name)

from spidr_hf import SpidrConfig, SpidrFeatureExtractor, SpidrForPreTraining
from spidr_hf.data.audio import decode, file_seconds
from spidr_hf.data.audio_batches import AudioFile
from spidr_hf.slm import score as score_module
from spidr_hf.slm.unit_lm import UnitVocabulary
from spidr_hf.units.encoder import SpidrUnitEncoder, job_batches
from spidr_hf.units.extract import extract
from spidr_hf.units.phones import PhoneUnitEncoder
from spidr_hf.units.record import (
    RECORD_FILE,
    ExtractSettings,
    UnitIdentity,
    read_record,
    read_unit_sequences,
    read_units,
    write_units_folder,
)

# Durations that make batches of several files, and one file longer than the chunk length below
SECONDS = (0.6, 1.3, 2.2, 0.9, 1.3, 3.1, 0.7, 1.8, 20.0)
CHUNK_SECONDS = 9.0


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    for index, seconds in enumerate(SECONDS):
        write_audio(folder / f"f{index}.wav", speech_like(seconds, index, 16000))
    return folder


def audio_files(folder: Path) -> list[AudioFile]:
    return [AudioFile(path, path.stem, file_seconds(path)) for path in sorted(folder.glob("*.wav"))]


@pytest.fixture(scope="module")
def kmeans_model(source_dir, audio, tmp_path_factory) -> Path:
    from spidr_hf_cli import main

    folder = tmp_path_factory.mktemp("kmeans") / "model"
    arguments = ["--layer", "3", "--num-clusters", "6", "--kmeans-frames", "400", "--output", str(folder)]
    assert main(["kmeans", str(source_dir), "--audio", str(audio), *arguments]) == 0
    return folder


@pytest.mark.parametrize("kind", ["codebook", "kmeans"])
def test_the_encoders_units_are_extracts_bitwise_and_its_identity_is_the_records(
    kind, source_dir, kmeans_model, audio, tmp_path
):
    model, layer = (source_dir, 4) if kind == "codebook" else (kmeans_model, 3)
    extract(model, audio, tmp_path / "out", layer=layer, features=False, units=kind, units_format="jsonl",
            chunk_seconds=CHUNK_SECONDS, batch_seconds=4.0)  # fmt: skip
    identity, written = read_unit_sequences(tmp_path / "out")
    encoder = SpidrUnitEncoder.from_pretrained(model, kind, layer, batch_seconds=4.0, chunk_seconds=CHUNK_SECONDS)
    encoded = encoder.encode_files(audio_files(audio))
    assert sorted(encoded) == sorted(written)
    for id, units in written.items():
        assert np.array_equal(encoded[id], units), id
    assert encoder.identity == identity and identity.layer == layer and identity.kind == kind
    assert identity.num_units == (6 if kind == "kmeans" else 16)
    # One waveform alone: the units of the same file (it had a batch of its own, or was chunked)
    longest = max(audio_files(audio), key=lambda file: file.seconds)
    assert np.array_equal(encoder.encode(decode(longest.path)), written[longest.id])
    # The default layer is the one extract takes too: the centroids' for k-means units
    assert SpidrUnitEncoder.from_pretrained(model, kind).layer == layer


def test_a_batch_runs_whole_so_that_skipping_done_files_changes_no_unit(source_dir, audio):
    encoder = SpidrUnitEncoder.from_pretrained(
        source_dir, "codebook", 4, batch_seconds=4.0, chunk_seconds=CHUNK_SECONDS
    )
    files = audio_files(audio)
    batches = job_batches(files, 4.0, CHUNK_SECONDS)
    assert len(batches) > 2 and max(len(batch) for batch in batches) > 1  # the test needs shared batches
    everything = encoder.encode_files(files)
    shared = next(batch for batch in batches if len(batch) > 1)
    whole = next(batch for batch in batches if batch != shared)
    done = frozenset({shared[0].id, *(file.id for file in whole)})  # part of one batch, all of another
    later = list(encoder.encode_batches(files, done=done))
    expected = {frozenset(file.id for file in batch) for batch in batches if batch != whole}
    assert {frozenset(batch) for batch in later} == expected  # the partly done batch whole, the done one not at all
    for batch in later:
        for id, units in batch.items():
            assert np.array_equal(units, everything[id])


def test_layers_are_checked_on_the_config_before_the_weights_load(source_dir, kmeans_model, tmp_path):
    (tmp_path / "broken").mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / "broken" / name).write_bytes((source_dir / name).read_bytes())
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not weights")  # loading them would fail otherwise
    cases = [
        (tmp_path / "broken", "codebook", 9, "Layer 9 is not a layer of this model: it has layers 1 to 4"),
        (tmp_path / "broken", "codebook", 1, "Layer 1 has no codebook head"),
        (kmeans_model, "kmeans", 4, "The k-means centroids of this model are of layer 3, not 4"),
        (source_dir, "kmeans", None, "no k-means centroids"),
    ]
    for model, kind, layer, message in cases:
        with pytest.raises(ValueError, match=message):
            SpidrUnitEncoder.from_pretrained(model, kind, layer)


def test_the_record_is_typed_and_encoders_without_layers_record_none(tmp_path):
    identity = PhoneUnitEncoder().identity
    folder = write_units_folder(tmp_path / "phones", identity, {"a": [3, 1], "b": [2]}, "somewhere")
    settings = read_record(folder)
    assert isinstance(settings, ExtractSettings) and settings.layer is None and settings.units == "phones"
    assert settings.identity() == identity
    read, units = read_unit_sequences(folder)
    assert read == identity and {id: values.tolist() for id, values in units.items()} == {"a": [3, 1], "b": [2]}
    with pytest.raises(ValueError, match="already holds units"):
        write_units_folder(folder, identity, {"a": [1]}, "again")
    # A record with a key this version does not know is refused in one line, not half read
    record = json.loads((folder / RECORD_FILE).read_text())
    record["settings"]["codec"] = "opus"
    (folder / RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"records settings this spidr-hf does not know \(codec\)"):
        read_units(folder)
    # The identity's dictionary is what a unit LM's config records
    assert UnitIdentity.from_dict(identity.to_dict()) == identity


def test_an_interrupted_slm_score_goes_on_from_its_cache_with_the_same_scores(
    source_dir,
    slm_benchmark,  # noqa: F811 (the fixture imported above)
    tmp_path,
    monkeypatch,
):
    benchmark = slm_benchmark
    encoder = SpidrUnitEncoder.from_pretrained(source_dir, "codebook", 3, deduplicate=True)
    tiny_lm(UnitVocabulary(encoder.identity)).save_pretrained(tmp_path / "ulm")
    whole = score_module.score_benchmark(tmp_path / "ulm", source_dir, benchmark, tmp_path / "whole", device="cpu")

    real = SpidrUnitEncoder.encode_batches
    batches_encoded = []

    def one_batch_then_die(self, files, done=frozenset()):
        for batch in real(self, files, done):
            batches_encoded.append(sorted(batch))
            yield batch
            raise KeyboardInterrupt

    monkeypatch.setattr(SpidrUnitEncoder, "encode_batches", one_batch_then_die)
    with pytest.raises(KeyboardInterrupt):
        score_module.score_benchmark(tmp_path / "ulm", source_dir, benchmark, tmp_path / "cut", device="cpu")
    cache = tmp_path / "cut" / "units" / "lexical.jsonl"
    assert len(cache.read_text().splitlines()) == 1 + len(batches_encoded[0])  # the identity, then a batch's files
    monkeypatch.setattr(SpidrUnitEncoder, "encode_batches", real)
    resumed = score_module.score_benchmark(tmp_path / "ulm", source_dir, benchmark, tmp_path / "cut", device="cpu")
    assert resumed == whole
    cached = [json.loads(line)["id"] for line in cache.read_text().splitlines()[1:]]
    assert len(cached) == len(set(cached))  # nothing encoded twice

    # A cache of other units (another model's) is started anew, not mixed in
    other = tmp_path / "other-model"
    torch.manual_seed(1)
    SpidrForPreTraining(SpidrConfig.from_pretrained(source_dir)).save_pretrained(other)
    SpidrFeatureExtractor().save_pretrained(other)
    other_lm = tiny_lm(
        UnitVocabulary(SpidrUnitEncoder.from_pretrained(other, "codebook", 3, deduplicate=True).identity)
    )
    other_lm.save_pretrained(tmp_path / "other-ulm")
    score_module.score_benchmark(
        tmp_path / "other-ulm", other, benchmark, tmp_path / "cut", device="cpu", overwrite=True
    )
    header = json.loads(cache.read_text().splitlines()[0])["identity"]
    assert header["weights_sha256"] != encoder.identity.weights_sha256


def test_a_joint_encoder_gives_every_encoders_own_units_and_resumes_from_its_cache(
    source_dir, kmeans_model, audio, tmp_path
):
    from spidr_hf.units.joint import JointUnitEncoder, cached_joint_units

    options = {"batch_seconds": 4.0, "chunk_seconds": CHUNK_SECONDS}
    encoders = {
        "codebook_3": SpidrUnitEncoder.from_pretrained(source_dir, "codebook", 3, **options),
        "codebook_4": SpidrUnitEncoder.from_pretrained(source_dir, "codebook", 4, **options),
        "kmeans_3": SpidrUnitEncoder.from_pretrained(kmeans_model, "kmeans", 3, **options),
    }
    files = audio_files(audio)  # batches of several files, and one file in chunks (each encoder alone)
    joint = cached_joint_units(JointUnitEncoder(encoders), files, tmp_path / "cache")
    for name, encoder in encoders.items():
        alone = encoder.encode_files(files)
        assert sorted(joint[name]) == sorted(alone)
        for id, units in alone.items():
            assert np.array_equal(joint[name][id], units), (name, id)
    assert not np.array_equal(joint["codebook_3"]["f0"], joint["codebook_4"]["f0"])  # other layers, other units
    # Cut short (a line half written, one cache shorter than the others): the rerun gives the same units
    cache = tmp_path / "cache" / "kmeans_3.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text("".join(lines[:3]) + lines[3][:10])
    again = cached_joint_units(JointUnitEncoder(encoders), files, tmp_path / "cache")
    assert all(np.array_equal(again[n][id], joint[n][id]) for n in encoders for id in joint[n])
    assert json.loads(cache.read_text().splitlines()[0])["identity"] == encoders["kmeans_3"].identity.to_dict()
    # Encoders of other weights cannot share a pass
    torch.manual_seed(1)
    other = tmp_path / "other"
    SpidrForPreTraining(SpidrConfig.from_pretrained(source_dir)).save_pretrained(other)
    SpidrFeatureExtractor().save_pretrained(other)
    with pytest.raises(ValueError, match="runs other weights"):
        JointUnitEncoder({**encoders, "other": SpidrUnitEncoder.from_pretrained(other, "codebook", 4, **options)})
