"""
`spidr-hf kmeans`: fit k-means units (HuBERT's recipe, scikit-learn's MiniBatchKMeans) on one layer's results and
store the centroids with the model's weights, where the `spidr-units` pipeline (`units="kmeans"`), `spidr-hf extract
--units kmeans` and `spidr-hf push` find them, also through `trust_remote_code` without spidr_hf.
"""

import argparse
import os
import tempfile
from pathlib import Path

import torch
from transformers.utils import CONFIG_NAME

from .evaluation.evaluator import check_device
from .evaluation.features import ModelRepresentations, fit_kmeans, kmeans_training_frames, load_random_audio
from .evaluation.standard import draw_folder_audio
from .release import save_hub_ready

DEFAULT_FRAMES = 100_000  # 2000 s at 50 Hz: enough for a few hundred centroids


def fit_centroids(
    model,
    feature_extractor,
    layer: int,
    num_clusters: int,
    audios: list,
    max_frames: int,
    seed: int,
    device: str,
    batch_size: int = 8,
) -> torch.Tensor:
    """`(num_clusters, hidden)` k-means centroids of the layer results of `layer` on up to `max_frames` frames."""
    representations = ModelRepresentations(model.base_model, feature_extractor, [layer], [], device)
    frames = kmeans_training_frames(representations, audios, max_frames, batch_size, desc="Layer features")[layer]
    return torch.from_numpy(fit_kmeans(frames, num_clusters, seed).cluster_centers_).float()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, help="saved SpidR folder (training output, convert or push folder)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", type=Path, help="a `spidr-hf corpus` folder (its --split is used)")
    source.add_argument("--audio", type=Path, help="a folder of audio files (any format FFmpeg reads)")
    parser.add_argument("--split", default="train", help="split of --dataset (default: train)")
    parser.add_argument("--layer", type=int, default=6, help="encoder layer, 1-based (default: 6)")
    parser.add_argument("--clusters", type=int, default=256, help="number of centroids (default: 256)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames to fit on (default: 100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--output", type=Path, help="write the model with its centroids here (default: in place)")


def run(args: argparse.Namespace) -> int:
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForPreTraining

    for name in ("clusters", "frames"):
        if getattr(args, name) < 2:
            raise ValueError(f"--{name} must be at least 2, got {getattr(args, name)}")
    if not (args.model_dir / "config.json").is_file():
        raise ValueError(f"{args.model_dir} is not a saved model folder (no config.json)")
    output = args.output or args.model_dir
    if args.output is not None and output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file: choose a new or empty folder (or leave --output out: in place)")
    if args.output is not None and output.exists() and any(output.iterdir()):
        raise ValueError(f"{output} is not empty: choose a new or empty folder (or leave --output out: in place)")
    if args.clusters > args.frames:
        raise ValueError(
            f"--frames ({args.frames}) must be at least --clusters ({args.clusters}): k-means needs a frame a cluster"
        )
    device = check_device(args.device)
    config = AutoConfig.from_pretrained(args.model_dir)
    if getattr(config, "model_type", None) != "spidr":
        raise ValueError(f"{args.model_dir} holds a {getattr(config, 'model_type', 'unknown')} model, not SpidR")
    if not 1 <= args.layer <= config.num_hidden_layers:
        raise ValueError(f"--layer must be in [1, {config.num_hidden_layers}], got {args.layer}")
    # The folder's own class: a pretraining folder keeps its heads, teacher and codebooks; a student-only folder's
    # weights load into the pretraining model's student, which is what it holds
    model, info = AutoModelForPreTraining.from_pretrained(args.model_dir, output_loading_info=True)
    if any(key.startswith(("heads.", "teacher.")) for key in info["missing_keys"]):
        model = model.spidr
    feature_extractor = AutoFeatureExtractor.from_pretrained(args.model_dir)
    max_seconds = args.frames / config.frame_rate + 1
    if args.dataset is not None:
        audios = load_random_audio(args.dataset, args.split, max_seconds, args.seed)
    else:
        audios = draw_folder_audio(args.audio, max_seconds, args.seed)
    centroids = fit_centroids(
        model, feature_extractor, args.layer, args.clusters, audios, args.frames, args.seed, device
    )
    model.to("cpu").base_model.set_kmeans_centroids(args.layer, centroids)
    write_model(model, feature_extractor, output)
    print(f"Wrote {args.clusters} k-means centroids of layer {args.layer} into {output}")
    return 0


def write_model(model, feature_extractor, folder: Path) -> None:
    """
    Save into `folder`: beside an existing folder's other files (checkpoints, card), the weights, config and code
    are replaced file by file with os.replace once all are written, config.json last: a run interrupted before it
    leaves the old config, which does not know the new weights' centroids and loads the model as it was.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as scratch:
        save_hub_ready(model, feature_extractor, scratch)
        for path in sorted(Path(scratch).iterdir(), key=lambda path: path.name == CONFIG_NAME):
            os.replace(path, folder / path.name)
