"""
Log-mel k-means units, the spectral baseline of a spoken-LM ladder: k-means (`clustering.fit_kmeans`, the recipe of
SpidR's k-means units) on the log-mel frames of the built-in corpus' train split (`evaluation.features.log_mel`, the
evaluation's baseline features), then the nearest centroid of every frame of the corpus and of the benchmark's
speech, as unit folders in the format of `spidr-hf extract` (frame units, not deduplicated: the unit LM deduplicates
them as it does SpidR's). The centroids' hash stands for the weights: units of another fit are refused when scored.
"""

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.audio import decode
from ..evaluation.features import log_mel
from .clustering import fit_kmeans

DEFAULT_CLUSTERS = 64
DEFAULT_FRAMES = 100_000  # as `spidr-hf kmeans`: 2000 s at 50 Hz


class LogMelKMeans:
    """Fitted k-means of log-mel frames (scikit-learn's MiniBatchKMeans, as `fit_kmeans` gives it) and the units it
    gives audio: its `predict`, as the evaluation's log-mel k-means units."""

    def __init__(self, kmeans):
        self.kmeans = kmeans

    @classmethod
    def fit(cls, audios: Iterable[np.ndarray], num_clusters: int, max_frames: int, seed: int) -> "LogMelKMeans":
        """Fitted on the first `max_frames` log-mel frames of `audios` (16 kHz), in the order given."""
        frames, count = [], 0
        for audio in audios:
            frames.append(log_mel(audio).numpy())
            count += len(frames[-1])
            if count >= max_frames:
                break
        return cls(fit_kmeans(np.concatenate(frames)[:max_frames], num_clusters, seed))

    @property
    def centroids(self) -> np.ndarray:
        return self.kmeans.cluster_centers_.astype(np.float32)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.centroids.tobytes()).hexdigest()

    def units(self, audio: np.ndarray) -> np.ndarray:
        """`(frames,)` index of the nearest centroid (L2) of each log-mel frame of 16 kHz `audio`."""
        return self.kmeans.predict(log_mel(audio).numpy())

    def write(self, output: Path, units: dict[str, np.ndarray], input: str) -> Path:
        from .extract import write_unit_sequences

        source = {
            "model": "log-mel k-means",
            "weights_sha256": self.sha256,
            "input": input,
            "units": "log_mel",
            "num_units": len(self.centroids),
            "deduplicate": False,
        }
        return write_unit_sequences(output, units, source)


def corpus_log_mel_units(
    corpus: str | Path,
    output: str | Path,
    num_clusters: int = DEFAULT_CLUSTERS,
    max_frames: int = DEFAULT_FRAMES,
    seed: int = 0,
) -> LogMelKMeans:
    """k-means fitted on the corpus' train split, and the units of every utterance of the corpus (all its splits)."""
    from datasets import load_from_disk

    from ..data.aligned_speech import load_split

    splits = {name: load_split(corpus, name) for name in load_from_disk(str(corpus))}
    train = [splits["train"][index].audio for index in np.random.default_rng(seed).permutation(len(splits["train"]))]
    kmeans = LogMelKMeans.fit(train, num_clusters, max_frames, seed)
    units = {row.id: kmeans.units(row.audio) for rows in splits.values() for row in tqdm(rows, desc="Log-mel units")}
    kmeans.write(Path(output), units, str(corpus))
    return kmeans


def benchmark_log_mel_units(kmeans: LogMelKMeans, benchmark: str | Path, output: str | Path) -> Path:
    """The units of every file of a `spidr-hf slm-benchmark` folder (output/lexical, output/syntactic)."""
    from ..slm.score import read_gold

    benchmark, output = Path(benchmark), Path(output)
    for task in ("lexical", "syntactic"):
        folder = benchmark / task / "dev"
        rows = read_gold(folder / "gold.csv", task)
        units = {row["filename"]: kmeans.units(decode(folder / f"{row['filename']}.wav")) for row in tqdm(rows)}
        kmeans.write(output / task, units, str(benchmark / task))
    return output
