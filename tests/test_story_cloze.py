"""Spoken story cloze: pairing in slamkit's folder layout and in a `datasets` dataset, scoring with both scores and
bootstrap intervals, and the built-in sSC- and tSC-like sets."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_audio
from test_extract import speech_like
from test_unit_lm import tiny_lm

from spidr_hf.data.audio import decode
from spidr_hf.slm.score import score_benchmark
from spidr_hf.slm.statistics import bootstrap_interval, separated, spearman_with_interval
from spidr_hf.slm.story_cloze import StoryPair, dataset_story_cloze, folder_story_cloze, load_story_cloze
from spidr_hf.slm.unit_lm import UnitVocabulary
from spidr_hf.units.record import UnitIdentity, write_units_folder
from spidr_hf_cli import main

IDENTITY = UnitIdentity("codebook", "m", "sha", 4, 16, True)


def wavs(folder: Path, names: list[str]) -> Path:
    for index, name in enumerate(names):
        write_audio(folder / f"{name}.wav", speech_like(0.4, index, 16000))
    return folder


def test_a_folder_pairs_files_two_by_two_in_the_order_of_their_numbers(tmp_path):
    # Numbers 1, 2, 3, 4, 9, 10: by number the pairs are (1, 2), (3, 4), (9, 10); by name ("10" < "2") they would be
    # (1, 10), (2, 3), (4, 9)
    folder = wavs(tmp_path / "ssc", ["1_a", "2_b", "3_c", "4_d", "9_e", "10_f"])
    (folder / "notes.txt").write_text("not audio")
    pairs = folder_story_cloze(folder).pairs
    assert pairs == [StoryPair("1_a", "2_b"), StoryPair("3_c", "4_d"), StoryPair("9_e", "10_f")]
    # Without wav files of its own, each subfolder pairs apart (slamkit's subfolder=True), in name order
    nested = tmp_path / "nested"
    wavs(nested / "b", ["0_x", "1_y"])
    wavs(nested / "a", ["5_p", "7_q", "6_r", "8_s"])
    story_set = folder_story_cloze(nested)
    assert story_set.pairs == [StoryPair("a/5_p", "a/6_r"), StoryPair("a/7_q", "a/8_s"), StoryPair("b/0_x", "b/1_y")]
    assert story_set.files["a/6_r"] == nested / "a/6_r.wav"


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["0_a", "1_b", "2_c"], "an odd number, so .*2_c.wav has no pair"),
        (["0_true", "0_false"], "both have the number 0"),
        (["0_a", "x_b"], "x_b.wav does not start with a number"),
    ],
)
def test_a_folder_that_cannot_be_paired_is_one_line(tmp_path, names, message):
    with pytest.raises(ValueError, match=message):
        folder_story_cloze(wavs(tmp_path / "ssc", names))


def story_dataset(folder: Path, columns=("positive", "negative"), broken_row: int | None = None) -> tuple[Path, list]:
    """A `save_to_disk` dataset of 3 rows, each a true and a false audio (the false ones longer)."""
    from datasets import Audio, Dataset, Features, Value

    rows, audios = [], []
    for index in range(3):
        true, false = speech_like(0.5, 10 + index, 16000), speech_like(0.7, 20 + index, 16000)
        audios.append((true, false))
        rows.append({columns[0]: {"array": true, "sampling_rate": 16000},
                     columns[1]: None if index == broken_row else {"array": false, "sampling_rate": 16000},
                     "story": f"story {index}"})  # fmt: skip
    features = Features({columns[0]: Audio(sampling_rate=16000), columns[1]: Audio(sampling_rate=16000),
                         "story": Value("string")})  # fmt: skip
    Dataset.from_list(rows, features=features).save_to_disk(str(folder))
    return folder, audios


def test_a_dataset_pairs_its_rows_and_names_those_without_audio(tmp_path):
    dataset, audios = story_dataset(tmp_path / "dataset", broken_row=1)
    story_set = dataset_story_cloze(str(dataset), tmp_path / "cache")
    assert story_set.pairs == [StoryPair("row0-true", "row0-false"), StoryPair("row2-true", "row2-false")]
    assert list(story_set.left_out) == ["row 1"] and "negative" in story_set.left_out["row 1"]
    for id, audio in (("row0-true", audios[0][0]), ("row2-false", audios[2][1])):
        written = decode(story_set.files[id])
        assert len(written) == len(audio) and np.abs(written - audio).max() <= 1 / 2**15  # 16-bit PCM
    # Written once: a rerun reuses the files (and a folder of wavs is read as slamkit's layout, not as a dataset)
    again = load_story_cloze(dataset, tmp_path / "cache")
    assert again.pairs == story_set.pairs and again.files == story_set.files
    # Other columns, named
    other, _ = story_dataset(tmp_path / "other", columns=("good", "bad"))
    assert len(load_story_cloze(other, tmp_path / "cache", true_column="good", false_column="bad").pairs) == 3


def test_a_dataset_without_the_named_columns_is_a_one_line_error(tmp_path, capsys):
    dataset, _ = story_dataset(tmp_path / "dataset")
    capsys.readouterr()  # the dataset's saving progress
    arguments = ["slm-score", str(tmp_path / "ulm"), "--units", str(tmp_path / "units"), "--tsc", str(dataset)]
    with pytest.raises(SystemExit):
        main([*arguments, "--true-column", "correct", "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "has no column 'correct'" in error and "positive, negative, story" in error and "--true-column" in error
    assert not (tmp_path / "out/scores.json").exists()


def log_probability_by_hand(model, tokens: list[int]) -> float:
    """log P(tokens[1:] | tokens[0]) of one sequence alone: each next token's log-softmax, summed."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokens])).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return float(sum(log_probs[position, token] for position, token in enumerate(tokens[1:])))


def test_scores_sum_and_mean_per_unit_as_computed_by_hand_with_reproducible_intervals(tmp_path):
    # 12 story pairs whose true and false units differ in length, so that the summed and the mean score can disagree
    rng = np.random.default_rng(0)
    story = tmp_path / "ssc"
    units, names = {}, []
    for pair in range(12):
        for side, label in ((0, "true"), (1, "false")):
            name = f"{2 * pair + side}_{label}"
            names.append(name)
            units[name] = rng.integers(0, 16, size=int(rng.integers(2, 12)))
    wavs(story, names)
    write_units_folder(tmp_path / "units/ssc", IDENTITY, units, "hand-made")
    vocabulary = UnitVocabulary(IDENTITY)
    lm = tiny_lm(vocabulary)
    lm.save_pretrained(tmp_path / "ulm")

    results = score_benchmark(tmp_path / "ulm", None, None, tmp_path / "out", units=tmp_path / "units", ssc=story)
    by_hand = {name: log_probability_by_hand(lm, vocabulary.tokens(units[name])) for name in names}
    tokens = {name: len(vocabulary.tokens(units[name])) - 1 for name in names}
    with open(tmp_path / "out/file_scores/ssc.tsv", newline="") as file:
        written = {row["id"]: row for row in csv.DictReader(file, delimiter="\t")}
    for name in names:
        assert float(written[name]["sum"]) == pytest.approx(by_hand[name], abs=1e-4)
        assert int(written[name]["tokens"]) == tokens[name]
    for kind, score in (("sum", by_hand), ("mean", {name: by_hand[name] / tokens[name] for name in names})):
        expected = [1.0 if score[f"{2 * p}_true"] > score[f"{2 * p + 1}_false"] else 0.0 for p in range(12)]
        assert results["ssc"][kind]["all"] == pytest.approx(100 * np.mean(expected))
        assert results["ssc"][kind]["pairs"] == 12
        low, high = results["ssc"][kind]["ci95"]
        assert low <= results["ssc"][kind]["all"] <= high and high - low > 10  # 12 pairs: a wide interval
    assert results["ssc"]["sum"]["all"] != results["ssc"]["mean"]["all"]  # the two scores do disagree here
    assert results["ssc"]["all"] == results["ssc"]["sum"]["all"] and results["score"] == "sum"
    assert results["ssc"]["left_out"] == {} and "swuggy" not in results
    # The same seed gives the same intervals (another seed's differ: test_bootstrap_intervals_are_reproducible...)
    again = score_benchmark(tmp_path / "ulm", None, None, tmp_path / "out", units=tmp_path / "units", ssc=story,
                            overwrite=True, mean_per_unit=True)  # fmt: skip
    assert again["ssc"]["sum"]["ci95"] == results["ssc"]["sum"]["ci95"] and again["score"] == "mean"
    assert again["ssc"]["all"] == results["ssc"]["mean"]["all"]
    assert json.loads((tmp_path / "out/scores.json").read_text())["bootstrap"]["seed"] == 0


def test_missing_or_unreadable_audio_leaves_its_pairs_out_named_in_one_line(source_dir, tmp_path, capsys):
    from test_unit_lm import lexical_row, write_gold

    from spidr_hf.units.encoder import SpidrUnitEncoder

    encoder = SpidrUnitEncoder.from_pretrained(source_dir, "codebook", 3, deduplicate=True)
    tiny_lm(UnitVocabulary(encoder.identity)).save_pretrained(tmp_path / "ulm")
    # sLM21: 3 word pairs, the audio of one word missing; a story folder of 3 pairs, one file not audio
    data, rows = tmp_path / "data", []
    for id in range(3):
        for correct in ("1", "0"):
            rows.append(lexical_row(str(id), "v1", f"w{id}", correct, "3" if correct == "1" else ""))
            if rows[-1]["filename"] != "1_v1_1":
                write_audio(data / "lexical/dev" / f"{rows[-1]['filename']}.wav", speech_like(0.5, len(rows), 16000))
    write_gold(data / "lexical/dev/gold.csv", rows)
    wavs(data / "sSC", ["0_t", "1_f", "2_t", "3_f", "4_t", "5_f"])
    (data / "sSC/3_f.wav").write_bytes(b"RIFF, but not audio")
    capsys.readouterr()

    results = score_benchmark(tmp_path / "ulm", source_dir, data, tmp_path / "out", device="cpu")
    assert results["swuggy"]["pairs"] == 2 and results["swuggy"]["left_out"] == {"1_v1_1": "missing"}
    assert results["ssc"]["pairs"] == 2 and list(results["ssc"]["left_out"]) == ["3_f"]
    lines = [line for line in capsys.readouterr().out.splitlines() if "left out" in line]
    assert len(lines) == 2 and "1_v1_1 (missing)" in lines[0] and "3_f (Could not decode" in lines[1]
    submitted = (tmp_path / "out/submission/lexical/dev.txt").read_text().split()[::2]
    assert sorted(submitted) == sorted(row["filename"] for row in rows if row["filename"] != "1_v1_1")


def test_bootstrap_intervals_are_reproducible_and_cover_the_mean():
    values = np.random.default_rng(0).choice([0.0, 0.5, 1.0], size=200, p=[0.3, 0.1, 0.6])
    interval = bootstrap_interval(values, seed=3)
    assert interval == bootstrap_interval(values, seed=3)
    assert interval != bootstrap_interval(values, seed=4)
    low, high = interval
    # Around the mean, about 2 standard errors either side
    mean, error = 100 * values.mean(), 100 * values.std() / np.sqrt(len(values))
    assert low < mean < high and 2.5 * error < high - low < 5.5 * error
    assert bootstrap_interval([1.0] * 5) == (100.0, 100.0)
    assert separated((40, 50), (51, 60)) and not separated((40, 52), (51, 60))


def test_rank_correlation_and_its_interval():
    x = [1, 2, 3, 4, 5, 6, 7, 8]
    result = spearman_with_interval(x, [2, 1, 4, 3, 6, 5, 8, 7], seed=0)
    assert result["rho"] == pytest.approx(1 - 6 * 8 / (8 * 63))  # 1 - 6 sum(d^2) / (n (n^2 - 1)), d = +-1
    low, high = result["ci95"]
    assert low < result["rho"] <= high <= 1 and result["n"] == 8
    assert spearman_with_interval(x, [8, 7, 6, 5, 4, 3, 2, 1])["rho"] == pytest.approx(-1)
    assert result == spearman_with_interval(x, [2, 1, 4, 3, 6, 5, 8, 7], seed=0)
