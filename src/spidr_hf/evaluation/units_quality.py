"""
Quality of discrete units against phone labels: PNMI, phone and cluster purity, codebook perplexity, active
codewords and bitrate (HuBERT paper definitions), from 10 ms phone labels and 20 ms units.
"""

import math
from collections.abc import Hashable, Mapping, Sequence
from itertools import groupby

import numpy as np

from .items import FRAME_RATE

UNIT_RATE = FRAME_RATE  # units per second: one per SpidR frame
LABEL_RATE = 100  # phone labels per second
# A label sequence may be this many 10 ms frames longer or shorter than its units repeated to 10 ms
MAX_LENGTH_DIFFERENCE = 2


def frame_labels(phones: Sequence[Mapping], num_labels: int, rate: int = LABEL_RATE) -> list[str]:
    """Phone at the centre `(k + 0.5) / rate` of each of `num_labels` frames (dicts with "phone", "start", "end")."""
    ends = np.array([phone["end"] for phone in phones])
    centres = (np.arange(num_labels) + 0.5) / rate
    indices = np.minimum(np.searchsorted(ends, centres, side="right"), len(phones) - 1)
    return [phones[index]["phone"] for index in indices]


def _aligned_frames(
    units: Sequence[Sequence[int]], labels: Sequence[Sequence[Hashable]], num_units: int
) -> tuple[np.ndarray, np.ndarray]:
    """
    The phone label (as a string) and the unit of every 10 ms frame of all utterances, each 20 ms unit standing for
    two 10 ms label frames. Per utterance, labels and repeated units may differ by two frames; the extra ones are
    ignored.
    """
    if len(units) != len(labels):
        raise ValueError(f"Got units for {len(units)} utterances but labels for {len(labels)}")
    if len(units) == 0:
        raise ValueError("No utterances")
    unit_frames, label_frames = [], []
    for index, (utterance_units, utterance_labels) in enumerate(zip(units, labels, strict=True)):
        repeated = np.repeat(np.asarray(utterance_units, dtype=np.int64), LABEL_RATE // UNIT_RATE)
        if abs(len(repeated) - len(utterance_labels)) > MAX_LENGTH_DIFFERENCE:
            raise ValueError(
                f"Utterance {index}: {len(utterance_units)} units of 20 ms but {len(utterance_labels)} phone labels "
                f"of 10 ms (expected {len(repeated)} +- {MAX_LENGTH_DIFFERENCE})"
            )
        length = min(len(repeated), len(utterance_labels))
        unit_frames.append(repeated[:length])
        label_frames.extend(utterance_labels[:length])
    flat_units = np.concatenate(unit_frames)
    if len(flat_units) == 0:
        raise ValueError("No frames")
    if flat_units.min() < 0 or flat_units.max() >= num_units:
        raise ValueError(f"Units must lie in [0, {num_units}), got [{flat_units.min()}, {flat_units.max()}]")
    return np.asarray(label_frames, dtype=object).astype(str), flat_units


def cooccurrence(
    units: Sequence[Sequence[int]], labels: Sequence[Sequence[Hashable]], num_units: int
) -> tuple[list[Hashable], np.ndarray]:
    """
    Sorted phones and their `(phones, num_units)` co-occurrence counts with the units, over the frames of
    `_aligned_frames`; units that never occur get a column of zeros.
    """
    return _cooccurrence(*_aligned_frames(units, labels, num_units), num_units)


def _cooccurrence(phone_frames: np.ndarray, unit_frames: np.ndarray, num_units: int) -> tuple[list[str], np.ndarray]:
    from sklearn.metrics.cluster import contingency_matrix  # scikit-learn is an `eval` extra

    # Rows follow the sorted phones, columns the sorted units that occur
    phones, occurring_units = np.unique(phone_frames), np.unique(unit_frames)
    counts = np.zeros((len(phones), num_units), dtype=np.int64)
    counts[:, occurring_units] = contingency_matrix(phone_frames, unit_frames)
    return phones.tolist(), counts


def bitrate(units: Sequence[Sequence[int]], num_units: int) -> float:
    """log2(num_units) times the number of units per second once consecutive repeats are merged."""
    seconds = sum(len(utterance) for utterance in units) / UNIT_RATE
    merged = sum(len(list(groupby(utterance))) for utterance in units)
    return math.log2(num_units) * merged / seconds


def units_quality(
    units: Sequence[Sequence[int]], labels: Sequence[Sequence[Hashable]], num_units: int
) -> dict[str, float]:
    """
    Unit metrics of utterances given as 20 ms units in `[0, num_units)` and 10 ms phone labels:

    - pnmi: mutual information of phone and unit over the phone entropy;
    - phone_purity: mean over frames of the probability of the unit's most frequent phone;
    - cluster_purity: mean over frames of the probability of the phone's most frequent unit;
    - codebook_perplexity: 2 ** entropy (bits) of the unit distribution;
    - active_codewords: units that occur;
    - bitrate: log2(num_units) x units per second after merging consecutive repeats.
    """
    from sklearn.metrics.cluster import homogeneity_score

    phone_frames, unit_frames = _aligned_frames(units, labels, num_units)
    _, counts = _cooccurrence(phone_frames, unit_frames, num_units)
    if len(counts) < 2:
        raise ValueError("PNMI needs at least two distinct phones")
    joint = counts / counts.sum()
    unit_marginal = joint.sum(0)
    used = unit_marginal[unit_marginal > 0]
    return {
        # (H(phone) - H(phone | unit)) / H(phone): the homogeneity of the units with respect to the phones
        "pnmi": float(homogeneity_score(phone_frames, unit_frames)),
        "phone_purity": float(joint.max(0).sum()),
        "cluster_purity": float(joint.max(1).sum()),
        "codebook_perplexity": float(2 ** -(used * np.log2(used)).sum()),
        "active_codewords": float(len(used)),
        "bitrate": bitrate(units, num_units),
    }
