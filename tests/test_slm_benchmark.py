"""The built-in spoken-LM benchmark: the sLM21 layout, spoken by flite, balanced pairs, deterministic."""

import csv
import wave
from collections import defaultdict

import pytest

from spidr_hf.data.flite import SPEAKERS, find_flite, phones_of
from spidr_hf.data.sentences import load_sentences
from spidr_hf.slm import benchmark as slm_benchmark
from spidr_hf.slm.score import read_gold
from spidr_hf_cli import main

ARGUMENTS = ["--words", "8", "--sentences", "8", "--voices", "2", "--stories", "6"]


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
    for listing in ("lexical/dev/gold.csv", "syntactic/dev/gold.csv", "sSC/stories.csv", "tSC/stories.csv"):
        assert (again / listing).read_bytes() == (built / listing).read_bytes()
        assert (other / listing).read_bytes() != (built / listing).read_bytes()
    wav = next((built / "lexical/dev").glob("*.wav"))
    assert (again / "lexical/dev" / wav.name).read_bytes() == wav.read_bytes()


@pytest.mark.parametrize("story_set", ["sSC", "tSC"])
def test_story_pairs_end_coherently_or_not_with_as_many_phones_in_slamkits_layout(built, story_set):
    from spidr_hf.slm import stories
    from spidr_hf.slm.story_cloze import StoryPair, folder_story_cloze

    with open(built / story_set / "stories.csv", newline="") as file:
        rows = {row["filename"]: row for row in csv.DictReader(file)}
    pairs = folder_story_cloze(built / story_set).pairs  # slamkit's pairing: 2i and 2i+1, the true ending first
    assert pairs == [StoryPair(f"{2 * pair}_true", f"{2 * pair + 1}_false") for pair in range(6)]
    flite, voices = find_flite(), {speaker.name: speaker for speaker in SPEAKERS}
    for pair in pairs:
        true, false = rows[pair.true], rows[pair.false]
        assert (true["correct"], false["correct"]) == ("1", "0") and true["voice"] == false["voice"]
        # The same story, then another ending
        context = true["text"].rsplit(". ", 1)[0]
        assert false["text"].rsplit(". ", 1)[0] == context and true["text"] != false["text"]
        assert true["situation"] == false["situation"] == true["ending_situation"]
        opposite = stories.opposite(true["situation"])
        if story_set == "sSC":  # the opposite situation's ending contradicts the story
            assert false["ending_situation"] == opposite
        else:  # another topic's
            assert false["ending_situation"] not in (true["situation"], opposite)
        # As many phones, as flite speaks them, and the audio is that speech
        voice = voices[true["voice"]]
        spoken = [len(phones_of(flite, row["text"], voice)) for row in (true, false)]
        assert spoken[0] == spoken[1] == int(true["phones"]) == int(false["phones"])
        for row in (true, false):
            assert seconds(built / story_set / f"{row['filename']}.wav") > 2.0
    assert len({rows[pair.true]["voice"] for pair in pairs}) == 2  # the voices take turns


def test_a_used_folder_is_refused(built, capsys):
    with pytest.raises(SystemExit):
        main(["slm-benchmark", str(built), *ARGUMENTS])
    assert "not an empty folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--words", "At most 9282 word / pseudo-word pairs can be made"),
        ("--sentences", "At most 2304 sentence pairs can be made"),
        ("--stories", "At most 576 story pairs of each set can be made"),
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
