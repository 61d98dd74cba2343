"""
Audio files in padded batches for a model: each file with its id and duration from its header (`AudioFile`), files
grouped into batches of similar durations (`length_batches`: the same batches whatever the split of a job, so that a
file's outputs are bitwise the same), and the batches decoded ahead of the model by DataLoader workers
(`decoded_batches`). `spidr-hf extract` and the unit encoders (`units.encoder`) read audio this way.
"""

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import AudioError, SpidrError
from ..io.sharding import Process
from ..model.configuration_spidr import SAMPLING_RATE, SpidrConfig
from .audio import decode, name_some


@dataclass(frozen=True)
class AudioFile:
    path: Path
    id: str  # path relative to the input folder (or manifest's folder), without its suffix, with "/" separators
    seconds: float


def check_durations(files: Sequence[AudioFile], receptive_field: int) -> None:
    """Refuse files too short for one output frame now, not at their batch after longer files are written."""
    # From the header, so possibly a sample off: a file at the limit is still checked once decoded
    too_short = [file for file in files if round(file.seconds * SAMPLING_RATE) < receptive_field]
    if too_short:
        named = name_some([f"{file.path} ({file.seconds:.4f} s)" for file in too_short])
        raise SpidrError(
            f"{len(too_short)} file(s) are shorter than the model's receptive field of {receptive_field} samples "
            f"({receptive_field / SAMPLING_RATE:g} s): {named}; leave them out of the input"
        )


def decode_checked(file: AudioFile, min_samples: int) -> np.ndarray:
    audio = decode(file.path)
    if len(audio) < min_samples:
        raise AudioError(
            f"{file.path} has {len(audio)} samples at {SAMPLING_RATE} Hz, fewer than the model's receptive field of "
            f"{min_samples} samples"
        )
    return audio


def length_batches(files: Sequence[AudioFile], batch_seconds: float) -> Iterator[list[AudioFile]]:
    """Files longest first, grouped while the padded batch (size x longest) stays within `batch_seconds`."""
    batch: list[AudioFile] = []
    for file in sorted(files, key=lambda f: (-f.seconds, f.id)):
        if batch and (len(batch) + 1) * batch[0].seconds > batch_seconds:
            yield batch
            batch = []
        batch.append(file)
    if batch:
        yield batch


class DecodedBatches(torch.utils.data.Dataset):
    """Batches of files, decoded and padded by the feature extractor (in DataLoader workers)."""

    def __init__(self, batches: Sequence[list[AudioFile]], feature_extractor, min_samples: int):
        self.batches = batches
        self.feature_extractor = feature_extractor
        self.min_samples = min_samples

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[int, dict[str, torch.Tensor] | str]:
        try:
            audios = [decode_checked(file, self.min_samples) for file in self.batches[index]]
        except AudioError as error:  # returned, not raised: a worker's exception would arrive with its traceback
            return index, str(error)
        inputs = self.feature_extractor(audios, sampling_rate=SAMPLING_RATE, return_tensors="pt")
        return index, {"input_values": inputs["input_values"], "attention_mask": inputs["attention_mask"]}


def default_num_workers(process: Process) -> int:
    """One decoding process per spare core of this process's share of the machine, at most 4 (0 on one core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if process.local_rank is not None else 1
    return max(0, min(4, cores // processes - 1))


def decoded_batches(
    batches: Sequence[list[AudioFile]], feature_extractor, config: SpidrConfig, device: str, num_workers: int
) -> Iterator[tuple[list[AudioFile], dict[str, torch.Tensor]]]:
    """`batches` in order, decoded ahead of the model by `num_workers` processes, in pinned memory for CUDA."""
    loader = torch.utils.data.DataLoader(
        DecodedBatches(batches, feature_extractor, config.receptive_field),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        prefetch_factor=2 if num_workers else None,
    )
    for index, inputs in loader:
        if isinstance(inputs, str):
            raise AudioError(inputs)
        yield batches[index], inputs
