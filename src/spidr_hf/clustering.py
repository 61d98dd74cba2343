"""
k-means fitting (scikit-learn's MiniBatchKMeans, HuBERT's and SpidR's unit recipe) on frames of representations: for
`spidr-hf kmeans`, the k-means units of `spidr-hf evaluate` and the k-means codebooks of the small-batch remedy.
"""

from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from .errors import SpidrError


def kmeans_training_frames(
    representations, audios: Sequence[np.ndarray], max_frames: int, batch_size: int, desc: str
) -> dict[int | None, np.ndarray]:
    """Up to `max_frames` frames of each layer of the representations of `audios`, for fitting k-means."""
    by_batch = frames_by_batch(representations, audios, batch_size, desc)
    return join_batches(by_batch, representations.layers, max_frames)


def frames_by_batch(
    representations, audios: Sequence[np.ndarray], batch_size: int, desc: str, part: tuple[int, int] = (0, 1)
) -> dict[int, dict[int | None, list[np.ndarray]]]:
    """
    Each layer's per-utterance frames of the batches of `audios` (batch number -> layer -> frames); `part` (index,
    count) keeps every count-th batch from the index-th, so that processes can share the work with the batches one
    process would run.
    """
    index, count = part
    starts = list(range(0, len(audios), batch_size))[index::count]
    by_batch = {}
    for start in tqdm(starts, desc=desc):
        output = representations(audios[start : start + batch_size], with_units=False)
        by_batch[start // batch_size] = {
            layer: [features.numpy() for features in output.features[layer]] for layer in representations.layers
        }
    return by_batch


def join_batches(
    by_batch: dict[int, dict[int | None, list[np.ndarray]]], layers: Sequence[int | None], max_frames: int
) -> dict[int | None, np.ndarray]:
    """The frames of the batches in batch order, the first `max_frames` of each layer."""
    batches = [by_batch[number] for number in sorted(by_batch)]
    return {
        layer: np.concatenate([item for batch in batches for item in batch[layer]])[:max_frames] for layer in layers
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
