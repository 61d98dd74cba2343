"""Unit-quality metrics on hand-made phone/unit tables with known values, and against the reference package."""

import math

import evaluate
import numpy as np
import pytest
from spidr.models.metrics import units_quality as reference_units_quality

from spidr_hf.evaluation import bitrate, cooccurrence, frame_labels, metric_path, units_quality


def test_perfect_units():
    quality = units_quality([[0, 0, 1, 1]], [["a"] * 4 + ["b"] * 4], num_units=4)
    # 2 units after merging repeats in 4 frames of 20 ms: 25 units/s of log2(4) = 2 bits
    assert quality == pytest.approx(
        {
            "pnmi": 1.0,
            "phone_purity": 1.0,
            "cluster_purity": 1.0,
            "codebook_perplexity": 2.0,
            "active_codewords": 2.0,
            "bitrate": 50.0,
        }
    )


def test_units_independent_of_phones():
    quality = units_quality([[0, 1, 0, 1]], [["a"] * 4 + ["b"] * 4], num_units=2)
    assert quality["pnmi"] == pytest.approx(0.0, abs=1e-12)
    assert quality["phone_purity"] == pytest.approx(0.5)
    assert quality["cluster_purity"] == pytest.approx(0.5)
    assert quality["codebook_perplexity"] == pytest.approx(2.0)


def test_hand_computed_table():
    """Counts (phones a, b x units 0, 1) = 2 x [[3, 1], [0, 2]]."""
    units = [[0, 0, 0, 1, 1, 1]]
    labels = [["a"] * 6 + ["a", "a", "b", "b", "b", "b"]]
    phones, counts = cooccurrence(units, labels, num_units=3)
    assert phones == ["a", "b"]
    assert counts.tolist() == [[6, 2, 0], [0, 4, 0]]
    mutual_information = 0.5 * math.log(1.5) + math.log(2) / 6
    phone_entropy = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    quality = units_quality(units, labels, num_units=3)
    assert quality["pnmi"] == pytest.approx(mutual_information / phone_entropy)
    assert quality["phone_purity"] == pytest.approx(1 / 2 + 1 / 3)
    assert quality["cluster_purity"] == pytest.approx(1 / 2 + 1 / 3)
    assert quality["codebook_perplexity"] == pytest.approx(2.0)
    assert quality["active_codewords"] == 2
    assert quality["bitrate"] == pytest.approx(math.log2(3) * 2 / 0.12)


def test_bitrate_merges_repeats_within_utterances_only():
    # 3 + 1 units after merging, over 8 frames of 20 ms
    assert bitrate([[0, 0, 1, 1, 1, 2], [2, 2]], num_units=256) == pytest.approx(8 * 4 / 0.16)


def test_frame_labels_at_10ms_centres():
    phones = [{"phone": "a", "start": 0.0, "end": 0.025}, {"phone": "b", "start": 0.025, "end": 0.05}]
    # centres 5, 15, 25, 35, 45 ms: a boundary belongs to the phone that starts there
    assert frame_labels(phones, 5) == ["a", "a", "b", "b", "b"]


def test_labels_may_be_two_frames_off():
    base = units_quality([[0, 1]], [["a", "a", "b", "b"]], num_units=2)
    assert units_quality([[0, 1]], [["a", "a", "b", "b", "b", "b"]], num_units=2) == base
    with pytest.raises(ValueError, match="expected 4"):
        units_quality([[0, 1]], [["a", "a", "b", "b", "b", "b", "b"]], num_units=2)


@pytest.mark.parametrize(
    ("units", "labels", "message"),
    [
        ([[0, 2]], [["a", "a", "b", "b"]], r"\[0, 2\)"),
        ([[0, -1]], [["a", "a", "b", "b"]], r"\[0, 2\)"),
        ([[0, 1]], [["a"] * 4], "two distinct phones"),
        ([[0, 1]], [], "labels for 0"),
        ([], [], "No utterances"),
    ],
)
def test_bad_input(units, labels, message):
    with pytest.raises(ValueError, match=message):
        units_quality(units, labels, num_units=2)


def test_matches_reference_package():
    rng = np.random.default_rng(0)
    units, labels, data = [], [], {}
    for index in range(12):
        length = int(rng.integers(20, 60))
        utterance_units = rng.integers(0, 16, length).tolist()
        noise = rng.choice(list("abcdef"), 2 * length + int(rng.integers(-2, 3))).tolist()
        # Phone "a" wherever the unit is below 4: units carry some phone information
        utterance_labels = [
            "a" if frame < 2 * length and utterance_units[frame // 2] < 4 else phone
            for frame, phone in enumerate(noise)
        ]
        units.append(utterance_units)
        labels.append(utterance_labels)
        data[index] = (utterance_labels, utterance_units)
    expected = reference_units_quality(data, num_units=16, num_phones=6)._asdict()
    assert units_quality(units, labels, num_units=16) == pytest.approx(expected, rel=1e-5)


def test_evaluate_metric_module():
    metric = evaluate.load(metric_path("units_quality"))
    units, labels = [[0, 0, 0, 1, 1, 1], [1, 1]], [["a"] * 6 + ["a", "a", "b", "b", "b", "b"], ["b"] * 4]
    assert metric.compute(predictions=units, references=labels, num_units=3) == pytest.approx(
        units_quality(units, labels, num_units=3)
    )


def test_unknown_metric_module():
    with pytest.raises(ValueError, match="Unknown metric"):
        metric_path("wer")
