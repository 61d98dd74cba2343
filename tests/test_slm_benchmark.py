"""The built-in spoken-LM benchmark: the sLM21 layout, spoken by flite, balanced pairs, deterministic."""

import wave
from collections import defaultdict

import pytest

from spidr_hf.data.flite import SPEAKERS, find_flite, phones_of
from spidr_hf.data.sentences import load_sentences
from spidr_hf.slm import benchmark as slm_benchmark
from spidr_hf.slm.score import read_gold
from spidr_hf_cli import main

ARGUMENTS = ["--words", "8", "--sentences", "8", "--voices", "2"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench") / "b"
    assert main(["slm-benchmark", str(folder), *ARGUMENTS]) == 0
    return folder


def pairs_of(rows, key):
    pairs = defaultdict(dict)
    for row in rows:
        pairs[tuple(row[column] for column in key)][row["correct"]] = row
    return pairs


def seconds(path) -> float:
    with wave.open(str(path)) as audio:
        return audio.getnframes() / audio.getframerate()


def test_word_pairs_are_distinct_pronounceable_and_balanced(built):
    rows = read_gold(built / "lexical/dev/gold.csv", "lexical")
    pairs = pairs_of(rows, ("voice", "id"))
    assert len(pairs) == 8 * 2 and all(set(pair) == {"0", "1"} for pair in pairs.values())
    corpus_words = slm_benchmark.corpus_words(load_sentences())
    known = set(corpus_words) | {line.strip().lower() for line in slm_benchmark.WORD_LIST.read_text().splitlines()}
    for pair in pairs.values():
        word, nonword = pair["1"], pair["0"]
        assert word["word"] != nonword["word"] and nonword["word"] not in known and word["word"] in corpus_words
        assert len(word["word"]) == len(nonword["word"])
        assert word["length"] == nonword["length"] == str(len(word["phones"].split()))  # as many phones
        assert int(word["frequency"]) == corpus_words[word["word"]] and nonword["frequency"] == ""
        for row in (word, nonword):
            assert seconds(built / "lexical/dev" / f"{row['filename']}.wav") > 0.2  # flite spoke it
    assert len({row["filename"] for row in rows}) == len(rows)


def test_sentence_pairs_differ_by_their_error(built):
    rows = read_gold(built / "syntactic/dev/gold.csv", "syntactic")
    pairs = pairs_of(rows, ("voice", "type", "subtype", "id"))
    assert len(pairs) == 8 * 2
    flite, voice = find_flite(), SPEAKERS[0]
    for (_, type, _, _), pair in pairs.items():
        good, bad = pair["1"]["transcription"], pair["0"]["transcription"]
        assert good != bad
        if type == "word_order":
            assert sorted(good.split()) == sorted(bad.split())  # the same words, another order
        # As many phones: no length for a summed log-probability to favour
        assert len(phones_of(flite, good, voice)) == len(phones_of(flite, bad, voice))
    for row in rows:
        assert seconds(built / "syntactic/dev" / f"{row['filename']}.wav") > 0.3


def test_the_same_seed_builds_the_same_benchmark_and_another_seed_another(built, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    assert main(["slm-benchmark", str(again), *ARGUMENTS]) == 0
    assert main(["slm-benchmark", str(other), *ARGUMENTS, "--seed", "1"]) == 0
    for task in ("lexical", "syntactic"):
        assert (again / task / "dev/gold.csv").read_bytes() == (built / task / "dev/gold.csv").read_bytes()
        assert (other / task / "dev/gold.csv").read_bytes() != (built / task / "dev/gold.csv").read_bytes()
    wav = next((built / "lexical/dev").glob("*.wav"))
    assert (again / "lexical/dev" / wav.name).read_bytes() == wav.read_bytes()


def test_a_used_folder_is_refused(built, capsys):
    with pytest.raises(SystemExit):
        main(["slm-benchmark", str(built), *ARGUMENTS])
    assert "not an empty folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--words", "At most 9282 word / pseudo-word pairs can be made"),
        ("--sentences", "At most 576 sentence pairs can be made"),
    ],
)
def test_more_pairs_than_can_be_made_are_refused_before_flite_runs(tmp_path, monkeypatch, capsys, option, message):
    from spidr_hf.slm import benchmark

    def no_flite(*args, **kwargs):
        raise AssertionError("flite ran")

    monkeypatch.setattr(benchmark, "phones_of", no_flite)
    with pytest.raises(SystemExit) as exit_info:
        main(["slm-benchmark", str(tmp_path / "out"), option, "100000"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and "100000 were asked for" in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()
