"""
Log-mel k-means units, the spectral baseline of a spoken-LM ladder (`LogMelUnitEncoder`): k-means
(`units.kmeans.fit_kmeans`, the recipe of SpidR's k-means units) on log-mel frames (`evaluation.features.log_mel`, the
evaluation's baseline features), then the nearest centroid of every frame. The centroids' hash stands for the
weights: units of another fit are refused when scored.
"""

import hashlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ..data.audio import decode
from ..data.audio_batches import AudioFile
from ..defaults import KMEANS_FRAMES
from ..evaluation.features import log_mel
from .encoder import UnitEncoder
from .kmeans import fit_kmeans
from .record import UnitIdentity

DEFAULT_CLUSTERS = 64


class LogMelUnitEncoder(UnitEncoder):
    """Fitted k-means of log-mel frames (scikit-learn's MiniBatchKMeans, as `fit_kmeans` gives it) and the units it
    gives audio: its `predict`, as the evaluation's log-mel k-means units."""

    def __init__(self, kmeans) -> None:
        self.kmeans = kmeans

    @classmethod
    def fit(
        cls,
        audios: Iterable[np.ndarray],
        num_clusters: int = DEFAULT_CLUSTERS,
        max_frames: int = KMEANS_FRAMES,
        seed: int = 0,
    ) -> "LogMelUnitEncoder":
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
    def identity(self) -> UnitIdentity:
        return UnitIdentity(
            kind="log_mel",
            model="log-mel k-means",
            weights_sha256=hashlib.sha256(self.centroids.tobytes()).hexdigest(),
            layer=None,
            num_units=len(self.centroids),
            deduplicate=False,
        )

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """`(frames,)` index of the nearest centroid (L2) of each log-mel frame of 16 kHz `audio`."""
        return self.kmeans.predict(log_mel(audio).numpy())

    def encode_batches(
        self, files: Sequence[AudioFile], done: frozenset[str] = frozenset()
    ) -> Iterator[dict[str, np.ndarray]]:
        """One file at a time: log-mel frames do not depend on the rest of a batch."""
        for file in files:
            if file.id not in done:
                yield {file.id: self.encode(decode(file.path))}
