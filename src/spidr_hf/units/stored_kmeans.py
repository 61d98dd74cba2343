"""
k-means centroids stored with a model (`spidr-hf kmeans`): fitted on one layer's results (`units.kmeans`, HuBERT's
recipe) and stored with the weights, where the `spidr-units` pipeline (`units="kmeans"`), `spidr-hf extract --units
kmeans`, `spidr-hf evaluate` (`StoredKMeans`) and `spidr-hf push` find them, also through `trust_remote_code` without
spidr_hf.
"""

import copy
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm
from transformers.utils import CONFIG_NAME

from ..data.aligned_speech import split_audio
from ..data.audio import AudioCollection, folder_audio, name_some
from ..defaults import BATCH_SIZE, KMEANS_FRAMES, KMEANS_MEMORY_FRAMES, NUM_CLUSTERS
from ..errors import SpidrError
from ..hub.folder import save_hub_ready
from ..io.atomic_files import check_writable, new_folder, replace_in_folder
from ..io.sharding import ALONE, Process, Shard, process_device, this_process
from ..model.loading import DTYPES, check_device, finetuned_head, in_dtype, load, load_config
from ..model.representations import ModelRepresentations
from .kmeans import StreamingKMeans


class StoredKMeans:
    """
    A model's stored k-means centroids (`SpidrKMeans`) behind scikit-learn's `predict`: the units of
    `SpidrModel.get_kmeans_units`, the `spidr-units` pipeline and `spidr-hf extract --units kmeans`.
    """

    def __init__(self, kmeans: torch.nn.Module) -> None:
        self.module = copy.deepcopy(kmeans).cpu()

    @property
    def num_clusters(self) -> int:
        return len(self.module.centroids)

    @torch.no_grad()
    def predict(self, frames: np.ndarray) -> np.ndarray:
        """`(frames, hidden)` float32 layer results to `(frames,)` centroid indices."""
        return self.module(torch.from_numpy(frames)).numpy()


class FittedKMeans(NamedTuple):
    folder: Path  # the model folder that stores the centroids
    layer: int  # the layer whose results they quantize


def fit_centroids(
    model,
    feature_extractor,
    layer: int,
    num_clusters: int,
    audio: AudioCollection,
    max_frames: int,
    seed: int,
    device: str,
    batch_size: int = BATCH_SIZE,
    memory_frames: int = KMEANS_MEMORY_FRAMES,
    process: Process = ALONE,
) -> torch.Tensor | None:
    """
    `(num_clusters, hidden)` k-means centroids of the layer results of `layer` on the first `max_frames` frames of the
    audio in a random order (`seed`), decoded batch by batch as the fit needs it: a folder of any size costs its
    listing, and memory holds at most `memory_frames` frames (`StreamingKMeans`). Launched in several processes
    (torchrun), each computes one batch of every round of as many batches as processes, the first gathers the round's
    frames and fits them in batch order, as one process would, and returns the centroids (the others None).
    """
    representations = ModelRepresentations(model.base_model, feature_extractor, [layer], [], device)
    order = np.random.default_rng(seed).permutation(audio.count).tolist()
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    shard, min_samples = process.shard, feature_extractor.min_samples
    kmeans = None  # only the first process fits
    if shard.index == 0:
        kmeans = StreamingKMeans(num_clusters, seed, max_frames, min(memory_frames, max_frames))
    too_short: list[str] = []
    seen = 0  # frames used so far, by every process: the fit stops at max_frames
    with tqdm(total=max_frames, desc="Layer features", unit="frame", disable=shard.index != 0) as progress:
        for first in range(0, len(batches), shard.count):
            number = first + shard.index
            frames: list[np.ndarray] = []
            short: list[str] = []
            failure: Exception | None = None
            try:
                if number < len(batches):
                    audios = [(index, audio.load(index)) for index in batches[number]]
                    short = [audio.name(index) for index, samples in audios if len(samples) < min_samples]
                    audios = [samples for _, samples in audios if len(samples) >= min_samples]
                    if audios:
                        frames = [item.numpy() for item in representations(audios, with_units=False).features[layer]]
            except Exception as error:
                if shard.count == 1:
                    raise
                failure = error  # raised once every process knows, so that none waits for it forever
            lengths = [len(item) for item in frames]
            if shard.count > 1:
                frames, lengths, short = gather_round(frames, short, failure, shard)
            too_short += short
            for position, length in enumerate(lengths):
                used = min(length, max_frames - seen)
                seen += used
                progress.update(used)
                if kmeans is not None:
                    kmeans.add(frames[position])
            if seen >= max_frames:
                break
    if too_short and shard.index == 0:
        files = "a file" if len(too_short) == 1 else f"{len(too_short)} files"
        print(f"Skipped {files} shorter than {min_samples} samples (no frame): {name_some(too_short)}")
    if seen < max_frames and shard.index == 0:
        print(f"The audio has {seen} frames, fewer than the {max_frames} asked for: k-means was fitted on all {seen}")
    return torch.from_numpy(kmeans.centroids()).float() if kmeans is not None else None


def gather_round(
    frames: list[np.ndarray], too_short: list[str], failure: Exception | None, shard: Shard
) -> tuple[list[np.ndarray], list[int], list[str]]:
    """
    One round of every process (gloo, on the CPU), in process order: the frames of all processes (on the first
    process; the others, which count frames but do not fit, get none), their lengths and every process's too-short
    files. A process that failed raises its error and the others one line naming it, all in the same round, so that
    none waits for the failed one.
    """
    summary = ([len(item) for item in frames], too_short, None if failure is None else str(failure))
    summaries: list = [None] * shard.count
    torch.distributed.all_gather_object(summaries, summary)
    if failure is not None:
        raise failure
    failed = [(rank, message) for rank, (_, _, message) in enumerate(summaries) if message is not None]
    if failed:
        rank, message = failed[0]
        raise SpidrError(f"k-means stopped: process {rank} failed: {message}")
    parts: list | None = [None] * shard.count if shard.index == 0 else None
    torch.distributed.gather_object(frames, parts, dst=0)
    lengths = [length for part_lengths, _, _ in summaries for length in part_lengths]
    all_too_short = [name for _, names, _ in summaries for name in names]
    return [item for part in parts or [] for item in part], lengths, all_too_short


def fit_model_kmeans(
    model: str | os.PathLike,
    *,
    dataset: str | os.PathLike | None = None,
    audio: str | os.PathLike | None = None,
    split: str = "train",
    layer: int | None = None,
    num_clusters: int = NUM_CLUSTERS,
    kmeans_frames: int = KMEANS_FRAMES,
    memory_frames: int = KMEANS_MEMORY_FRAMES,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    device: str | None = None,
    dtype: str = "float32",
    output: str | os.PathLike | None = None,
) -> FittedKMeans | None:
    """
    Fit `num_clusters` k-means centroids on `kmeans_frames` frames of the layer results of `layer` (None: the default
    feature layer) of the model folder `model`, for the audio of a corpus `dataset` (its `split`) or of an `audio`
    folder, and store them with the model: in place, or in the new folder `output`. The model runs in `dtype`; its
    weights are written back as they were. Launched in several processes (torchrun), they share the forward passes
    and the first one writes. Everything is checked before the weights load. Returns the folder written and the layer
    (None in the other processes).
    """
    if (dataset is None) == (audio is None):
        raise SpidrError("Give the audio to fit k-means on: a corpus folder (dataset) or an audio folder, one of them")
    if dtype not in DTYPES:
        raise SpidrError(f"Unknown dtype {dtype!r}: choose among {list(DTYPES)}")
    for name, value in (("batch_size", batch_size), ("kmeans_frames", kmeans_frames), ("memory_frames", memory_frames)):
        if value < 1:
            raise SpidrError(f"{name} must be positive, got {value}")
    if num_clusters < 2:
        raise SpidrError(f"--num-clusters must be at least 2, got {num_clusters}")
    if seed < 0:
        raise SpidrError(f"--seed must be 0 or more, got {seed}")
    if num_clusters > memory_frames:
        raise SpidrError(
            f"--kmeans-memory-frames ({memory_frames}) must be at least --num-clusters ({num_clusters}): the first "
            "chunk of frames in memory is fitted on its own"
        )
    if num_clusters > kmeans_frames:
        raise SpidrError(
            f"--kmeans-frames ({kmeans_frames}) must be at least --num-clusters ({num_clusters}): k-means needs a "
            "frame a cluster"
        )
    model_dir = Path(model)
    if not model_dir.is_dir():
        raise SpidrError(f"{model_dir} is not a saved model folder (no config.json): k-means writes into a folder")
    config = load_config(model_dir).config  # the options are checked before the weights load
    head = finetuned_head(config)
    if head is not None:  # written back as the student it would lose its head
        raise SpidrError(
            f"{model_dir} is a fine-tuned {head.__name__} folder: fit k-means units on the pretrained SpidR model it "
            "was fine-tuned from"
        )
    layer = config.check_layer(config.default_feature_layer if layer is None else layer)
    destination = Path(output) if output is not None else model_dir
    if output is not None and destination.exists() and not destination.is_dir():
        raise SpidrError(
            f"--output {destination} is a file: choose a new or empty folder (or leave --output out: in place)"
        )
    if output is not None and destination.exists() and any(destination.iterdir()):
        raise SpidrError(f"{destination} is not empty: choose a new or empty folder (or leave --output out: in place)")
    # The staging folder goes beside the destination: both must be writable, known before the fit
    for folder in (destination, destination.parent):
        check_writable(folder)
    process = this_process()  # torchrun / accelerate launch: the processes share the forward passes
    device = process_device(check_device(device), process)
    # The folder's own kind: a pretraining folder keeps its heads, teacher and codebooks, a student-only folder stays
    # student-only. Loaded in float32 whatever `dtype`: the weights are written back as they were
    # Its stored centroids, if any, are replaced: left out, so that a folder that an interrupted run left out of step
    # with its config loads too, and is repaired by this run
    loaded = load(model_dir, "as_saved", without_kmeans=True)
    speech = split_audio(dataset, split) if dataset is not None else folder_audio(audio)
    network = loaded.model if dtype == "float32" else in_dtype(copy.deepcopy(loaded.model), DTYPES[dtype])
    if process.shard.count > 1:
        torch.distributed.init_process_group("gloo")
    try:
        centroids = fit_centroids(
            network, loaded.feature_extractor, layer, num_clusters, speech, kmeans_frames, seed, device, batch_size,
            memory_frames, process,
        )  # fmt: skip
    finally:
        if process.shard.count > 1:
            torch.distributed.destroy_process_group()
    if centroids is None:  # another process writes them
        return None
    loaded.model.to("cpu").base_model.set_kmeans_centroids(layer, centroids)
    write_model(loaded.model, loaded.feature_extractor, destination, in_place=output is None)
    return FittedKMeans(destination, layer)


def write_model(model, feature_extractor, folder: Path, in_place: bool) -> None:
    """
    In place, save into `folder`, beside an existing folder's other files (checkpoints, card): the weights, config and
    code replace the old ones once all are written, config.json last. A run cut before that leaves the old config,
    with which the model loads as it was (the new centroids are ignored) or, if it had centroids, refuses to load
    (their hash differs) until the same command is run again. A new folder (`--output`) appears whole or not at all.
    """
    with replace_in_folder(folder, last=CONFIG_NAME) if in_place else new_folder(folder) as staging:
        save_hub_ready(model, staging, feature_extractor)
