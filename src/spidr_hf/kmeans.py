"""
`spidr-hf kmeans`: fit k-means units (HuBERT's recipe, scikit-learn's MiniBatchKMeans) on one layer's results and
store the centroids with the model's weights, where the `spidr-units` pipeline (`units="kmeans"`), `spidr-hf extract
--units kmeans` and `spidr-hf push` find them, also through `trust_remote_code` without spidr_hf.
"""

import argparse
import copy
from pathlib import Path

import torch
from transformers.utils import CONFIG_NAME

from .aligned_speech import load_random_audio
from .atomic_files import replace_in_folder
from .audio import draw_folder_audio
from .clustering import fit_kmeans, frames_by_batch, join_batches
from .errors import SpidrError
from .loading import DTYPES, check_device, in_dtype, load, load_config
from .release import save_hub_ready
from .representations import ModelRepresentations
from .sharding import ALONE, Process, process_device, this_process

DEFAULT_FRAMES = 100_000  # 2000 s at 50 Hz: enough for a few hundred centroids
DEFAULT_BATCH_SIZE = 8  # utterances per forward pass


def fit_centroids(
    model,
    feature_extractor,
    layer: int,
    num_clusters: int,
    audios: list,
    max_frames: int,
    seed: int,
    device: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    process: Process = ALONE,
) -> torch.Tensor | None:
    """
    `(num_clusters, hidden)` k-means centroids of the layer results of `layer` on up to `max_frames` frames. Launched
    in several processes (torchrun), each computes the features of its share of the batches, and the first process
    fits the centroids on them all, in the order one process would have them (the others get None).
    """
    representations = ModelRepresentations(model.base_model, feature_extractor, [layer], [], device)
    shard = process.shard
    by_batch = frames_by_batch(representations, audios, batch_size, "Layer features", (shard.index, shard.count))
    if shard.count > 1:
        gathered: list = [None] * shard.count
        torch.distributed.all_gather_object(gathered, by_batch)  # gloo: the frames are numpy arrays on the CPU
        if shard.index != 0:
            return None
        by_batch = {number: frames for part in gathered for number, frames in part.items()}
    frames = join_batches(by_batch, [layer], max_frames)[layer]
    return torch.from_numpy(fit_kmeans(frames, num_clusters, seed).cluster_centers_).float()


def run(args: argparse.Namespace) -> int:
    if args.num_clusters < 2:
        raise SpidrError(f"--num-clusters must be at least 2, got {args.num_clusters}")
    if args.num_clusters > args.kmeans_frames:
        raise SpidrError(
            f"--kmeans-frames ({args.kmeans_frames}) must be at least --num-clusters ({args.num_clusters}): k-means "
            "needs a frame a cluster"
        )
    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise SpidrError(f"{model_dir} is not a saved model folder (no config.json): k-means writes into a folder")
    config = load_config(model_dir).config  # the options are checked before the weights load
    layer = config.default_feature_layer if args.layer is None else args.layer
    if not 1 <= layer <= config.num_hidden_layers:
        raise SpidrError(f"--layer must be in [1, {config.num_hidden_layers}], got {layer}")
    output = Path(args.output) if args.output is not None else model_dir
    if args.output is not None and output.exists() and not output.is_dir():
        raise SpidrError(f"--output {output} is a file: choose a new or empty folder (or leave --output out: in place)")
    if args.output is not None and output.exists() and any(output.iterdir()):
        raise SpidrError(f"{output} is not empty: choose a new or empty folder (or leave --output out: in place)")
    process = this_process()  # torchrun / accelerate launch: the processes share the forward passes
    device = process_device(check_device(args.device), process)
    # The folder's own kind: a pretraining folder keeps its heads, teacher and codebooks, a student-only folder stays
    # student-only. Loaded in float32 whatever --dtype: the weights are written back as they were
    loaded = load(model_dir, "as_saved")
    max_seconds = args.kmeans_frames / config.frame_rate + 1
    if args.dataset is not None:
        audios = load_random_audio(args.dataset, args.split, max_seconds, args.seed)
    else:
        audios = draw_folder_audio(args.audio, max_seconds, args.seed)
    network = loaded.model if args.dtype == "float32" else in_dtype(copy.deepcopy(loaded.model), DTYPES[args.dtype])
    if process.shard.count > 1:
        torch.distributed.init_process_group("gloo")
    try:
        centroids = fit_centroids(
            network,
            loaded.feature_extractor,
            layer,
            args.num_clusters,
            audios,
            args.kmeans_frames,
            args.seed,
            device,
            args.batch_size,
            process,
        )
    finally:
        if process.shard.count > 1:
            torch.distributed.destroy_process_group()
    if centroids is None:  # another process writes them
        return 0
    loaded.model.to("cpu").base_model.set_kmeans_centroids(layer, centroids)
    write_model(loaded.model, loaded.feature_extractor, output)
    print(f"Wrote {args.num_clusters} k-means centroids of layer {layer} into {output}")
    return 0


def write_model(model, feature_extractor, folder: Path) -> None:
    """
    Save into `folder`, beside an existing folder's other files (checkpoints, card): the weights, config and code
    replace the old ones once all are written, config.json last, so that a run interrupted before it leaves the old
    config, which does not know the new weights' centroids and loads the model as it was.
    """
    with replace_in_folder(folder, last=CONFIG_NAME) as staging:
        save_hub_ready(model, feature_extractor, staging)
