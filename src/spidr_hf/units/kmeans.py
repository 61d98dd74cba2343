"""
k-means on frames of representations (scikit-learn's MiniBatchKMeans, HuBERT's and SpidR's unit recipe), in memory or
streamed over more frames than memory holds: for the centroids `spidr-hf kmeans` stores with a model
(`units.stored_kmeans`), the k-means units of `spidr-hf evaluate`, the log-mel units and the k-means codebooks of the
small-batch remedy.
"""

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from ..errors import SpidrError


def kmeans_training_frames(
    representations, audios: Sequence[np.ndarray], max_frames: int, batch_size: int, desc: str
) -> dict[int | None, np.ndarray]:
    """Up to `max_frames` frames of each layer of the representations of `audios`, for fitting k-means."""
    by_batch = frames_by_batch(representations, audios, batch_size, desc)
    return join_batches(by_batch, representations.layers, max_frames)


def frames_by_batch(
    representations, audios: Sequence[np.ndarray], batch_size: int, desc: str
) -> list[dict[int | None, list[np.ndarray]]]:
    """Each layer's per-utterance frames of the batches of `audios` (batch -> layer -> frames)."""
    by_batch = []
    for start in tqdm(range(0, len(audios), batch_size), desc=desc):
        output = representations(audios[start : start + batch_size], with_units=False)
        by_batch.append(
            {layer: [features.numpy() for features in output.features[layer]] for layer in representations.layers}
        )
    return by_batch


def join_batches(
    by_batch: list[dict[int | None, list[np.ndarray]]], layers: Sequence[int | None], max_frames: int
) -> dict[int | None, np.ndarray]:
    """The frames of the batches in order, the first `max_frames` of each layer."""
    return {
        layer: np.concatenate([item for batch in by_batch for item in batch[layer]])[:max_frames] for layer in layers
    }


def fit_kmeans(frames: np.ndarray, num_clusters: int, seed: int):
    """scikit-learn MiniBatchKMeans with `num_clusters` clusters (HuBERT and SpidR's unit recipe)."""
    from sklearn.cluster import MiniBatchKMeans

    if len(frames) < num_clusters:
        raise SpidrError(
            f"k-means needs at least as many training frames as clusters ({num_clusters}), got {len(frames)}: use "
            "more audio or fewer clusters"
        )
    return MiniBatchKMeans(n_clusters=num_clusters, random_state=seed).fit(frames)


STREAM_BATCH_FRAMES = 1024  # frames per partial_fit step: MiniBatchKMeans' own default batch size


class StreamingKMeans:
    """
    k-means on more frames than memory holds, fed in order: the first `memory_frames` are fitted exactly as
    `fit_kmeans` fits them in memory (so a job that fits in memory gives the same centroids as before), then each
    further `memory_frames` refine the centroids with one pass of `partial_fit` over mini-batches of
    `STREAM_BATCH_FRAMES` frames (online k-means: each centroid moves toward its frames by a step that shrinks as its
    count of frames grows; scikit-learn's counts start from the first fit's, one per frame and pass of that fit). At
    most `total_frames` frames are used; memory holds at most `memory_frames` (plus the batch being added).
    """

    def __init__(self, num_clusters: int, seed: int, total_frames: int, memory_frames: int):
        self.num_clusters, self.seed = num_clusters, seed
        self.total_frames, self.memory_frames = total_frames, memory_frames
        self.buffer: list[np.ndarray] = []
        self.buffered = self.seen = 0
        self.kmeans = None

    @property
    def full(self) -> bool:
        """True once `total_frames` frames were added: later frames are ignored."""
        return self.seen >= self.total_frames

    def add(self, frames: np.ndarray) -> None:
        """Feed `(frames, dim)` frames in order; fits whenever `memory_frames` are buffered."""
        frames = frames[: self.total_frames - self.seen]
        self.seen += len(frames)
        while len(frames):
            room = self.memory_frames - self.buffered
            self.buffer.append(frames[:room])
            self.buffered += len(self.buffer[-1])
            frames = frames[room:]
            if self.buffered == self.memory_frames:
                self._fit_buffer()

    def centroids(self) -> np.ndarray:
        """`(num_clusters, dim)` centroids of all the frames added."""
        if self.buffered:
            self._fit_buffer()
        if self.kmeans is None:
            raise SpidrError(f"k-means needs at least as many training frames as clusters ({self.num_clusters}), got 0")
        return self.kmeans.cluster_centers_

    def _fit_buffer(self) -> None:
        frames = np.concatenate(self.buffer)
        self.buffer, self.buffered = [], 0
        if self.kmeans is None:
            self.kmeans = fit_kmeans(frames, self.num_clusters, self.seed)
            self.kmeans.set_params(compute_labels=False)  # partial_fit would otherwise label every mini-batch
            return
        for start in range(0, len(frames), STREAM_BATCH_FRAMES):
            self.kmeans.partial_fit(frames[start : start + STREAM_BATCH_FRAMES])
