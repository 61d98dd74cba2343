"""
Codebooks initialised by k-means on the initial teacher's targets: the small-batch remedy's first half.

The paper draws random codewords. With its ~10^5 masked frames per codebook update nearly every codeword gets frames
at the first update; with a few hundred or thousand, most never do and die, and the survivors split the targets into
a few coarse classes. Codewords fitted by k-means on the targets of the first batches start where the data is.
"""

from collections.abc import Iterable

import numpy as np
import torch

from ..model.modeling_spidr import SpidrForPreTraining
from ..units.kmeans import fit_kmeans

# k-means is fitted on at most this many target frames per codeword (random frames of the batches), which bounds
# its time (seconds per codebook) while giving every cluster enough frames to be a stable mean
KMEANS_FRAMES_PER_CODEWORD = 128


@torch.no_grad()
def teacher_target_frames(
    model: SpidrForPreTraining, batches: Iterable[dict[str, torch.Tensor]], max_frames: int, seed: int
) -> torch.Tensor:
    """
    Normalized teacher targets of the codebook layers at the valid frames of `batches` (model inputs with
    `input_values` and optionally `attention_mask`), as `(num_codebooks, frames, hidden)` on the CPU: all of them,
    or `max_frames` drawn at random without replacement.
    """
    chunks = []
    for batch in batches:
        if "input_values" not in batch:  # every file of the batch was skipped
            continue
        targets, frame_mask = model.get_teacher_targets(batch["input_values"], batch.get("attention_mask"))
        valid = targets.flatten(1, 2) if frame_mask is None else targets[:, frame_mask]
        chunks.append(valid.cpu())
    if not chunks:
        raise ValueError("No usable batch to initialise the codebooks from.")
    frames = torch.cat(chunks, dim=1)
    if frames.shape[1] > max_frames:
        generator = torch.Generator().manual_seed(seed)
        frames = frames[:, torch.randperm(frames.shape[1], generator=generator)[:max_frames]]
    return frames


def kmeans_codewords(frames: torch.Tensor, codebook_size: int, seed: int) -> torch.Tensor:
    """k-means centroids `(num_codebooks, codebook_size, hidden)` of each codebook's frames `(num_codebooks, n, D)`."""
    if frames.shape[1] < codebook_size:
        raise ValueError(
            f"k-means initialisation of {codebook_size} codewords needs at least as many target frames, the "
            f"initialisation batches gave {frames.shape[1]}: raise `codebook_init_batches`."
        )
    centroids = [
        fit_kmeans(per_codebook.numpy().astype(np.float64), codebook_size, seed).cluster_centers_
        for per_codebook in frames
    ]
    return torch.from_numpy(np.stack(centroids)).float()


@torch.no_grad()
def set_codewords(model: SpidrForPreTraining, codewords: torch.Tensor) -> None:
    """Make `codewords` `(num_codebooks, codebook_size, hidden)` the codebooks, with unit counts and no usage yet."""
    codebooks = model.codebooks
    codebooks.codebook.copy_(codewords.to(codebooks.codebook))
    codebooks.counts.fill_(1.0)
    codebooks.idle_updates.zero_()
    codebooks.ever_assigned.zero_()
