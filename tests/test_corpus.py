"""The built-in flite corpus: sentence source, planning, flite parsing, and a tiny real build with alignment checks."""

import itertools
import json
import wave

import pytest
from datasets import load_from_disk

from spidr_hf.data import corpus
from spidr_hf.data import sentences as sentences_module
from spidr_hf.data.flite import PHONE_CLASSES, SPEAKERS, Speaker, parse_psdur
from spidr_hf.data.sentences import load_sentences
from spidr_hf.evaluation import frame_span, read_item_file
from spidr_hf_cli import main

# Every phone flite prints has a class in the evaluation heatmap's table
PHONES = {phone for phones in PHONE_CLASSES.values() for phone in phones}
TINY = ["--hours", "0.01", "--speakers", "2", "--dev-speakers", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("corpus")
    assert main(["corpus", str(out_dir), *TINY]) == 0
    return out_dir


def _decoded_seconds(row) -> float:
    samples = row["audio"].get_all_samples()
    assert samples.sample_rate == corpus.SAMPLING_RATE and samples.data.shape[0] == 1
    return samples.data.shape[1] / corpus.SAMPLING_RATE


def test_splits_hold_out_dev_speakers(tiny):
    dataset = load_from_disk(str(tiny))
    assert set(dataset) == {"train", "dev"}
    assert set(dataset["train"]["speaker"]) == {"awb"} and set(dataset["dev"]["speaker"]) == {"slt"}
    assert {"audio", "id", "speaker", "text", "phones"} <= set(dataset["dev"].column_names)
    assert 2 <= len(dataset["train"]) <= 10 and 2 <= len(dataset["dev"]) <= 10
    texts = list(dataset["train"]["text"]) + list(dataset["dev"]["text"])
    assert len(set(texts)) == len(texts)  # different sentences for every speaker and utterance


def test_alignments_cover_the_audio(tiny):
    dataset = load_from_disk(str(tiny))
    for split in ("train", "dev"):
        for row in dataset[split]:
            phones = row["phones"]
            assert phones[0]["start"] == 0.0
            assert phones[0]["phone"] == phones[-1]["phone"] == "pau"
            for previous, phone in itertools.pairwise(phones):
                assert phone["start"] == previous["end"]  # contiguous, so the phones cover the audio
            assert all(phone["start"] < phone["end"] for phone in phones)  # strictly increasing boundaries
            assert phones[-1]["end"] == pytest.approx(_decoded_seconds(row), abs=1e-9)
            assert {phone["phone"] for phone in phones} <= PHONES
            assert len(phones) > len(row["text"].split())  # more phones than words


def test_speech_lies_inside_the_aligned_phones(tiny):
    """The leading pause is quiet and the first spoken phone is not: the alignment matches the audio."""
    row = load_from_disk(str(tiny))["dev"][0]
    audio = row["audio"].get_all_samples().data[0]
    pause_end = int(row["phones"][0]["end"] * corpus.SAMPLING_RATE)
    first_phone_end = int(row["phones"][1]["end"] * corpus.SAMPLING_RATE)
    pause, speech = audio[: pause_end - 160], audio[pause_end:first_phone_end]
    assert pause.square().mean() < 0.01 * speech.square().mean()


def test_item_file_lists_dev_triphones(tiny):
    dataset = load_from_disk(str(tiny))["dev"]
    alignments = {row["id"]: row["phones"] for row in dataset}
    items = read_item_file(tiny / "dev.item")
    assert (tiny / "dev.item").read_text().startswith("#file onset offset #phone prev-phone next-phone speaker\n")
    assert len(items) > 20
    for item in items:
        phones = alignments[item.file]
        position = next(i for i, phone in enumerate(phones) if round(phone["start"], 4) == item.onset)
        assert (item.phone, item.offset) == (phones[position]["phone"], round(phones[position]["end"], 4))
        assert (item.prev_phone, item.next_phone) == (phones[position - 1]["phone"], phones[position + 1]["phone"])
        assert item.phone != "pau" and item.speaker == "slt"
        start, end = frame_span(item.onset, item.offset)
        assert start < end  # at least one 20 ms frame centre inside
    spoken = sum(phone["phone"] != "pau" for phones in alignments.values() for phone in phones)
    assert len(items) <= spoken


def test_build_is_deterministic_and_resumable(tiny, tmp_path, monkeypatch):
    again = tmp_path / "again"
    assert main(["corpus", str(again), *TINY]) == 0
    first, second = load_from_disk(str(tiny)), load_from_disk(str(again))
    for split in ("train", "dev"):
        assert list(first[split]["text"]) == list(second[split]["text"])
        assert list(first[split]["phones"]) == list(second[split]["phones"])
    wav = next((again / "wavs" / "awb").glob("*.wav"))
    assert wav.read_bytes() == (tiny / "wavs" / "awb" / wav.name).read_bytes()
    assert (again / "dev.item").read_text() == (tiny / "dev.item").read_text()

    # A re-run synthesizes only what is missing
    wav.unlink()
    synthesized = []
    real_synthesize = corpus.synthesize

    def recording_synthesize(flite, wav_dir, utterance):
        synthesized.append(utterance.id)
        real_synthesize(flite, wav_dir, utterance)

    monkeypatch.setattr(corpus, "synthesize", recording_synthesize)
    assert main(["corpus", str(again), *TINY]) == 0
    assert synthesized == [wav.stem]
    assert list(load_from_disk(str(again))["train"]["phones"]) == list(first["train"]["phones"])


def test_another_seed_draws_other_sentences():
    sentences = load_sentences()
    speakers = SPEAKERS[:8]
    plan = corpus.plan_utterances(sentences, speakers, hours=0.5, seed=0)
    assert plan == corpus.plan_utterances(sentences, speakers, hours=0.5, seed=0)
    assert [u.text for u in plan] != [u.text for u in corpus.plan_utterances(sentences, speakers, 0.5, seed=1)]
    assert len({u.text for u in plan}) == len(plan)
    assert {u.speaker for u in plan} == set(speakers)
    planned = sum(len(u.text) * corpus._SECONDS_PER_CHAR[u.speaker.voice] * u.speaker.duration_stretch for u in plan)
    assert 0.5 * 3600 <= planned <= 0.5 * 3600 + 8 * 10


def test_sentences_are_plain_english():
    sentences = load_sentences()
    assert len(sentences) > 5000  # more than 10 hours of speech
    assert sentences == sorted(set(sentences))
    assert all(
        sentences_module.MIN_WORDS <= len(s.split()) <= sentences_module.MAX_WORDS and s[0].isupper() for s in sentences
    )
    assert sentences_module._is_plain_sentence("The quick brown fox jumps over the lazy dog.")
    assert not sentences_module._is_plain_sentence("Call 555-1234 now.")
    assert not sentences_module._is_plain_sentence("The NASA rocket flew very high.")
    assert not sentences_module._is_plain_sentence("Too short.")


def test_at_least_eight_distinct_speakers():
    voices = {(s.voice, s.f0_mean, s.duration_stretch) for s in SPEAKERS[:8]}
    assert len(voices) == 8 and {s.voice for s in SPEAKERS} == {"awb", "rms", "slt", "kal16"}
    assert Speaker("x", "slt", 220, 0.9).flite_options() == [
        "-voice",
        "slt",
        "--setf",
        "int_f0_target_mean=220",
        "--setf",
        "duration_stretch=0.9",
    ]


def test_parse_flite_alignment():
    segments = parse_psdur("pau:0.164 hh:0.255 ax:0.304 pau:0.500 \n")
    assert segments == [("pau", 0.164), ("hh", 0.255), ("ax", 0.304), ("pau", 0.5)]
    # The diphone voice's audio stops inside the final pause: the pause is cut to the audio
    phones = corpus.phone_alignment(segments, duration=0.4)
    assert [(p["phone"], p["start"], p["end"]) for p in phones] == [
        ("pau", 0.0, 0.164),
        ("hh", 0.164, 0.255),
        ("ax", 0.255, 0.304),
        ("pau", 0.304, 0.4),
    ]
    with pytest.raises(RuntimeError, match="ends at"):
        corpus.phone_alignment(segments, duration=2.0)
    with pytest.raises(ValueError, match="Unexpected"):
        parse_psdur("pau:0.1 garbage")


def test_missing_tools_say_how_to_install(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="apt-get install fortunes"):
        load_sentences(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["corpus", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "apt-get install flite" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--speakers", "1"], "speakers must be between 2"),
        (["--speakers", "13"], "speakers must be between 2"),
        (["--speakers", "2", "--dev-speakers", "2"], "dev speakers must be at least 1"),
        (["--hours", "0"], "argument --hours: must be a positive number"),
        (["--hours", "nan"], "argument --hours: must be a positive number"),
        (["--hours", "100"], "ask for fewer"),
    ],
)
def test_bad_arguments(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit):
        main(["corpus", str(tmp_path), *arguments])
    assert message in capsys.readouterr().err


def test_sidecar_records_the_flite_settings(tiny):
    record = json.loads(next((tiny / "wavs" / "slt").glob("*.json")).read_text())
    assert record["flite_options"] == ["-voice", "slt"]
    with wave.open(str(next((tiny / "wavs" / "slt").glob("*.wav")))) as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (16000, 1)


def test_a_folder_of_other_files_is_never_overwritten(tmp_path, capsys):
    from datasets import Dataset, DatasetDict, load_from_disk

    user_folder = tmp_path / "userds"
    DatasetDict({"train": Dataset.from_dict({"text": ["x"] * 100})}).save_to_disk(str(user_folder))
    before = {path: path.read_bytes() for path in user_folder.rglob("*") if path.is_file()}
    with pytest.raises(SystemExit):
        main(["corpus", str(user_folder), "--hours", "0.005"])
    assert "not a spidr-hf corpus" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in user_folder.rglob("*") if path.is_file()} == before
    assert len(load_from_disk(str(user_folder))["train"]) == 100
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SystemExit):
        main(["corpus", str(tmp_path / "file"), "--hours", "0.005"])
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file").read_text() == "mine"


def test_an_interrupted_resynthesis_never_pairs_old_audio_with_a_new_alignment(tmp_path, monkeypatch):
    """A kill between the alignment's rename and the wav's must not leave an earlier text's wav passing as done."""
    import os

    from spidr_hf.io import atomic_files

    flite = corpus.find_flite()
    speaker = SPEAKERS[0]
    corpus.synthesize(flite, tmp_path, corpus.PlannedUtterance("u1", speaker, "An earlier sentence."))
    later = corpus.PlannedUtterance("u1", speaker, "Another sentence, longer than the first one.")
    assert not corpus._is_done(tmp_path, later)

    real_replace = os.replace

    def killed_before_the_wav(source, target):
        if str(target).endswith(".wav"):
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(atomic_files.os, "replace", killed_before_the_wav)
    with pytest.raises(KeyboardInterrupt):
        corpus.synthesize(flite, tmp_path, later)
    assert not corpus._is_done(tmp_path, later)  # redone by the next run, not kept with the earlier text's audio
    monkeypatch.setattr(atomic_files.os, "replace", real_replace)
    corpus.synthesize(flite, tmp_path, later)
    assert corpus._is_done(tmp_path, later)
    assert sorted(path.name for path in (tmp_path / speaker.name).iterdir()) == ["u1.json", "u1.wav"]


def test_a_rerun_cut_before_its_item_file_leaves_no_stale_item_file(tiny, tmp_path, monkeypatch, capsys):
    import shutil

    folder = tmp_path / "corpus"
    shutil.copytree(tiny, folder)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus, "write_item_file", killed)
    other_seed = [*TINY[:-1], "4"]
    with pytest.raises(KeyboardInterrupt):
        main(["corpus", str(folder), *other_seed])
    assert not (folder / "dev.item").exists()  # not the first seed's items beside the second seed's dataset
    error = run_evaluate_error(folder, tmp_path, capsys)
    assert "dev.item not found" in error
    monkeypatch.undo()
    assert main(["corpus", str(folder), *other_seed]) == 0
    dev_ids = set(load_from_disk(str(folder))["dev"]["id"])
    assert {item.file for item in read_item_file(folder / "dev.item")} <= dev_ids


def run_evaluate_error(folder, tmp_path, capsys) -> str:
    from conftest import TINY_CONFIG

    from spidr_hf import SpidrConfig, SpidrForPreTraining

    SpidrForPreTraining(SpidrConfig(**TINY_CONFIG)).save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit):
        main(["evaluate", str(tmp_path / "model"), "--dataset", str(folder), "--output", str(tmp_path / "report")])
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_two_corpus_runs_into_one_folder_are_refused(tmp_path, capsys):
    from spidr_hf.io.file_locks import exclusive_lock

    folder = tmp_path / "corpus"
    folder.mkdir()
    with exclusive_lock(folder), pytest.raises(SystemExit):  # another run at work
        main(["corpus", str(folder), *TINY])
    assert "Another spidr-hf corpus is writing into" in capsys.readouterr().err
    assert list(folder.iterdir()) == []
