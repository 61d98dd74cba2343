"""
How many codewords an online codebook keeps in use, by masked frames per update: the paper's random codewords against
the small-batch remedy (k-means codewords, restarts), fed the initial teacher's targets of a config's model.

    python benchmarks/codebook_frames.py --corpus data/spidr-corpus            # the quickstart model
    python benchmarks/codebook_frames.py --corpus data/spidr-corpus --frames 300 3000 --updates 20

The teacher stays at its initialisation (no training), so this isolates the codebook updates: each update assigns
`frames` target frames drawn at random from the train split to the nearest codeword and applies the EMA step.
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import set_seed

from spidr_hf.data.aligned_speech import load_split
from spidr_hf.model.feature_extraction_spidr import SpidrFeatureExtractor
from spidr_hf.pretraining.codebook_init import (
    KMEANS_FRAMES_PER_CODEWORD,
    kmeans_codewords,
    set_codewords,
    teacher_target_frames,
)
from spidr_hf.pretraining.setup import build_model, parse_pretraining_config

ROOT = Path(__file__).resolve().parents[1]


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="a `spidr-hf corpus` folder")
    parser.add_argument("--config", type=Path, default=ROOT / "training" / "configs" / "quickstart_cpu.yaml")
    parser.add_argument("--frames", type=positive, nargs="+", default=[300, 3000, 30000], help="frames per update")
    parser.add_argument("--updates", type=positive, default=60, help="codebook updates (default: 60)")
    parser.add_argument("--utterances", type=positive, default=150, help="train utterances to draw frames from")
    parser.add_argument("--restart-after", type=positive, default=5, help="the remedy's restart setting")
    args = parser.parse_args(argv)

    model_args, _, training_args = parse_pretraining_config([str(args.config)])
    try:  # a missing or unreadable corpus is a one-line error, before the model is built
        utterances = load_split(args.corpus, "train", args.utterances, training_args.seed)
    except ValueError as error:
        parser.error(str(error))
    set_seed(training_args.seed)
    model = build_model(model_args).eval()
    extractor = SpidrFeatureExtractor()
    batches = (
        {"input_values": extractor(u.audio, sampling_rate=extractor.sampling_rate, return_tensors="pt").input_values}
        for u in utterances
    )
    with torch.no_grad():
        pool = teacher_target_frames(model, batches, max_frames=10**9, seed=0)
    size = model.config.codebook_size
    random_codebooks = {name: value.clone() for name, value in model.codebooks.state_dict().items()}
    rows = []
    print(f"{pool.shape[1]} target frames of {len(utterances)} utterances, {size} codewords per codebook")
    print("codewords          restarts  frames/update  perplexity  never assigned (mean over codebooks)")
    for init, restart_after in (("random", 0), ("random", args.restart_after), ("k-means", 0), ("k-means", 5)):
        for frames in args.frames:
            model.codebooks.load_state_dict(random_codebooks)
            model.codebooks.restart_after = restart_after
            generator = torch.Generator().manual_seed(0)
            if init == "k-means":
                sample = torch.randperm(pool.shape[1], generator=generator)[: KMEANS_FRAMES_PER_CODEWORD * size]
                set_codewords(model, kmeans_codewords(pool[:, sample], size, seed=0))
            for _ in tqdm(range(args.updates), desc=f"{init}, restarts {restart_after}, {frames} frames", leave=False):
                targets = pool[:, torch.randint(pool.shape[1], (frames,), generator=generator)]
                onehot = F.one_hot(model.codebooks.assign(targets), size).float()
                health = model.codebooks.update(targets, onehot)
            row = {
                "codewords": init,
                "restart_after": restart_after,
                "frames_per_update": frames,
                "perplexity": health.target_perplexity.mean().item(),
                "never_assigned": health.never_assigned.float().mean().item(),
            }
            rows.append(row)
            print(
                f"{init:17s}  {restart_after or 'off':>8}  {frames:13d}  {row['perplexity']:7.1f} of {size}"
                f"  {row['never_assigned']:5.1f}"
            )
    return rows


if __name__ == "__main__":
    main()
