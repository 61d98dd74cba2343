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
    frames: dict[int | None, list[np.ndarray]] = {layer: [] for layer in representations.layers}
    for start in tqdm(range(0, len(audios), batch_size), desc=desc):
        output = representations(audios[start : start + batch_size], with_units=False)
        for layer in representations.layers:
            frames[layer] += [features.numpy() for features in output.features[layer]]
    return {layer: np.concatenate(chunks)[:max_frames] for layer, chunks in frames.items()}


def fit_kmeans(frames: np.ndarray, num_clusters: int, seed: int):
    """scikit-learn MiniBatchKMeans with `num_clusters` clusters (HuBERT and SpidR's unit recipe)."""
    from sklearn.cluster import MiniBatchKMeans

    if len(frames) < num_clusters:
        raise SpidrError(
            f"k-means needs at least as many training frames as clusters ({num_clusters}), got {len(frames)}: use "
            "more audio or fewer clusters"
        )
    return MiniBatchKMeans(n_clusters=num_clusters, random_state=seed).fit(frames)
