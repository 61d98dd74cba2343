"""
Unit encoders: the objects that turn speech into unit sequences and know what those units are (their `UnitIdentity`),
the role textlesslib's `SpeechEncoder` plays. `SpidrUnitEncoder` gives the codebook-head or k-means units of a layer of
a SpidR/DinoSR model; the spectral and phone baselines are encoders too (`units.log_mel.LogMelUnitEncoder`,
`units.phones.PhoneUnitEncoder`). `spidr-hf extract` writes an encoder's output to disk, a units folder's record
stores its identity, a unit LM records it, and `spidr-hf slm-score` rebuilds the encoder from the LM and encodes a
benchmark in memory.

`model_outputs` is the one forward pass behind SpidR's units and features: a padded batch, or a long file in chunks.
"""

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..data.audio_batches import AudioFile, check_durations, decoded_batches, default_num_workers, length_batches
from ..defaults import ACCELERATOR_BATCH_SECONDS, CHUNK_SECONDS, CPU_BATCH_SECONDS
from ..errors import SpidrError
from ..io.sharding import ALONE
from ..model.configuration_spidr import SAMPLING_RATE
from ..model.loading import DTYPES, LoadedModel, check_device, load, load_config, weights_hash
from ..model.modeling_spidr import UNIT_KINDS
from ..model.pipeline_spidr import DEFAULT_STRIDE_LENGTH_S, plan_chunks
from .record import UnitIdentity


class UnitEncoder(ABC):
    """Speech to unit sequences, and the identity of those units."""

    @property
    @abstractmethod
    def identity(self) -> UnitIdentity:
        """What the units mean (`deduplicate`: a unit LM merges their runs)."""

    @abstractmethod
    def encode(self, audio: np.ndarray) -> np.ndarray:
        """The frame units `(frames,)` of one 16 kHz mono waveform."""

    @abstractmethod
    def encode_batches(
        self, files: Sequence[AudioFile], done: frozenset[str] = frozenset()
    ) -> Iterator[dict[str, np.ndarray]]:
        """The frame units `(frames,)` of `files`, one batch at a time (id -> units), leaving out the batches whose
        files are all `done`: a batch runs whole, so that a file's units do not depend on what was done before."""

    def encode_files(self, files: Sequence[AudioFile]) -> dict[str, np.ndarray]:
        """The frame units of every file, in memory."""
        return {id: units for batch in self.encode_batches(files) for id, units in batch.items()}


def model_name(source: str | os.PathLike) -> str:
    """A model as records name it: a folder by its resolved path (a rerun from elsewhere matches), a Hub id as is."""
    path = Path(source)
    return str(path.resolve()) if path.is_dir() else str(source)


def batch_seconds_for(device: str, batch_seconds: float | None) -> float:
    """`batch_seconds`, or the default of the device's kind."""
    if batch_seconds is not None:
        return batch_seconds
    return CPU_BATCH_SECONDS if torch.device(device).type == "cpu" else ACCELERATOR_BATCH_SECONDS


def check_chunk_seconds(chunk_seconds: float) -> None:
    if not chunk_seconds > 4 * DEFAULT_STRIDE_LENGTH_S:
        raise SpidrError(
            f"chunk_seconds must be more than {4 * DEFAULT_STRIDE_LENGTH_S:g} (chunks overlap by "
            f"{2 * DEFAULT_STRIDE_LENGTH_S:g} s), got {chunk_seconds}"
        )


class SpidrUnitEncoder(UnitEncoder):
    """The codebook-head (`kind="codebook"`) or k-means (`"kmeans"`) units of one layer of a SpidR/DinoSR model."""

    def __init__(
        self,
        loaded: LoadedModel,
        source: str | os.PathLike,
        kind: str,
        layer: int,
        *,
        deduplicate: bool = False,
        device: str = "cpu",
        dtype: str = "float32",
        batch_seconds: float | None = None,
        chunk_seconds: float = CHUNK_SECONDS,
        num_workers: int | None = None,
    ) -> None:
        """`loaded` in `dtype` (see `from_pretrained`, which loads and checks it); `batch_seconds`: padded audio per
        forward pass (None: the device's default); files longer than `chunk_seconds` go in stitched chunks."""
        if kind not in UNIT_KINDS:
            raise SpidrError(f"Unknown unit kind {kind!r}: choose among {list(UNIT_KINDS)}")
        loaded.config.check_layer(layer, units=kind)
        check_chunk_seconds(chunk_seconds)
        self.network, self.feature_extractor = loaded.model, loaded.feature_extractor
        self.source, self.kind, self.layer, self.dtype = source, kind, layer, dtype
        self.deduplicate = deduplicate
        self.device = device
        self.batch_seconds = batch_seconds_for(device, batch_seconds)
        self.chunk_seconds = chunk_seconds
        self.num_workers = default_num_workers(ALONE) if num_workers is None else num_workers

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        kind: str,
        layer: int | None = None,
        *,
        deduplicate: bool = False,
        device: str | None = None,
        dtype: str = "float32",
        batch_seconds: float | None = None,
        chunk_seconds: float = CHUNK_SECONDS,
        num_workers: int | None = None,
    ) -> "SpidrUnitEncoder":
        """The encoder of a model folder or Hub id; `layer` None: the k-means centroids' layer, or the default unit
        layer for codebook units. The options are checked on the config before the weights load."""
        if kind not in UNIT_KINDS:
            raise SpidrError(f"Unknown unit kind {kind!r}: choose among {list(UNIT_KINDS)}")
        if dtype not in DTYPES:
            raise SpidrError(f"Unknown dtype {dtype!r}: choose among {list(DTYPES)}")
        config = load_config(source).config
        layer = default_unit_layer(config, kind) if layer is None else layer
        config.check_layer(layer, units=kind)
        loaded = load(source, "full" if kind == "codebook" else "student", dtype=dtype)
        return cls(
            loaded, source, kind, layer, deduplicate=deduplicate, device=check_device(device), dtype=dtype,
            batch_seconds=batch_seconds, chunk_seconds=chunk_seconds, num_workers=num_workers,
        )  # fmt: skip

    @property
    def num_units(self) -> int:
        config = self.network.config
        return config.kmeans_num_clusters if self.kind == "kmeans" else config.codebook_size

    @cached_property
    def weights_sha256(self) -> str:
        """The hash of the weights as they run (in their dtype), as extract's records name them."""
        return weights_hash(self.network)

    @property
    def identity(self) -> UnitIdentity:
        return UnitIdentity(
            kind=self.kind,
            model=model_name(self.source),
            weights_sha256=self.weights_sha256,
            layer=self.layer,
            num_units=self.num_units,
            deduplicate=self.deduplicate,
            dtype=self.dtype,
        )

    def card_facts(self) -> dict:
        """What a units dataset's card says of the units beyond the settings: how many there are, their frame rate
        and, for k-means units, which centroids."""
        config = self.network.config
        if self.kind == "kmeans":
            return {
                "num_units": config.kmeans_num_clusters,
                "centroids_sha256": weights_hash(self.network.base_model.kmeans),
                "frame_rate": config.frame_rate,
            }
        return {"num_units": config.codebook_size, "frame_rate": config.frame_rate}

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """One waveform alone (a long one in stitched chunks, as `extract` does)."""
        inputs = self.feature_extractor([audio], sampling_rate=SAMPLING_RATE, return_tensors="pt")
        network = self.network.to(self.device).eval()
        alone = [AudioFile(Path("<array>"), "", len(audio) / SAMPLING_RATE)]
        _, units = model_outputs(
            network, inputs, alone, self.layer, False, self.kind, self.device, self.chunk_seconds, self.batch_seconds,
            features=False,
        )  # fmt: skip
        return units[0]

    def encode_batches(
        self, files: Sequence[AudioFile], done: frozenset[str] = frozenset()
    ) -> Iterator[dict[str, np.ndarray]]:
        """In `spidr-hf extract`'s batches (a file longer than `chunk_seconds` alone, in chunks)."""
        check_durations(files, self.network.config.receptive_field)
        batches = job_batches(files, self.batch_seconds, self.chunk_seconds)
        todo = [batch for batch in batches if any(file.id not in done for file in batch)]
        network = self.network.to(self.device).eval()
        decoded = decoded_batches(todo, self.feature_extractor, network.config, self.device, self.num_workers)
        for batch, inputs in decoded:
            _, units = model_outputs(
                network, inputs, batch, self.layer, False, self.kind, self.device, self.chunk_seconds,
                self.batch_seconds, features=False,
            )  # fmt: skip
            yield {file.id: file_units for file, file_units in zip(batch, units, strict=True)}


def default_unit_layer(config, kind: str) -> int:
    """The layer of a kind's units when none is asked for: the k-means centroids' (the only one they exist for), or
    the default unit layer of the codebook heads."""
    if kind == "kmeans":
        return config.kmeans_layer if config.kmeans_layer is not None else config.default_feature_layer
    return config.default_unit_layer


def job_batches(files: Sequence[AudioFile], batch_seconds: float, chunk_seconds: float) -> list[list[AudioFile]]:
    """
    The batches of a whole job, whatever its split into shards: files of similar durations padded together up to
    `batch_seconds`, longest first; a file longer than `chunk_seconds` is a batch of its own (its chunks are batched
    together), after the others.
    """
    to_chunk = sorted((file for file in files if file.seconds > chunk_seconds), key=lambda f: (-f.seconds, f.id))
    batches = list(length_batches([file for file in files if file.seconds <= chunk_seconds], batch_seconds))
    return batches + [[file] for file in to_chunk]


def model_outputs(
    model,
    inputs: dict[str, torch.Tensor],
    batch: Sequence[AudioFile],
    layer: int,
    hidden_states: bool,
    units: str | None,
    device: str,
    chunk_seconds: float,
    batch_seconds: float,
    features: bool = True,
) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """Per-file features `(frames, dim)` (float32, on CPU; none unless `features`) and units of one batch of
    `job_batches`, in one pass: a long file in chunks."""
    if batch[0].seconds > chunk_seconds:
        return forward_chunked(model, inputs, layer, hidden_states, units, device, chunk_seconds, batch_seconds)
    return forward(model, inputs, layer, hidden_states, units, device, features)


@torch.no_grad()
def forward(
    model,
    inputs: dict[str, torch.Tensor],
    layer: int,
    hidden_states: bool,
    units: str | None,
    device: str,
    features: bool = True,
) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """Per-file features `(frames, dim)` (float32, on CPU) and units of one padded batch, in one pass."""
    output = model.represent(
        inputs["input_values"].to(device, model.dtype, non_blocking=True),
        inputs["attention_mask"].to(device, non_blocking=True),
        layers=[layer],
        representation="hidden_states" if hidden_states else "layer_results",
        units=units,
        unit_layers=[layer],
    )
    # `.clone()`: a slice saved as is would drag the whole batch's storage into its file
    feature_values = [values.float().cpu().clone() for values in output.features[layer]] if features else []
    unit_values = [values.cpu().numpy() for values in output.units[layer]] if units is not None else []
    return feature_values, unit_values


def forward_chunked(
    model,
    inputs: dict[str, torch.Tensor],
    layer: int,
    hidden_states: bool,
    units: str | None,
    device: str,
    chunk_seconds: float,
    batch_seconds: float,
) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """
    `forward` of one long file, standardized whole by the feature extractor, in chunks of `chunk_seconds` on frame
    boundaries, batched up to `batch_seconds`; each chunk keeps its frames away from its cut edges (`plan_chunks`).
    """
    values = inputs["input_values"][0]
    hop = model.config.inputs_to_logits_ratio
    chunk_samples = round(chunk_seconds * SAMPLING_RATE / hop) * hop
    stride_samples = round(DEFAULT_STRIDE_LENGTH_S * SAMPLING_RATE / hop) * hop
    chunks = plan_chunks(len(values), chunk_samples, stride_samples, hop, model.config.receptive_field)
    per_pass = max(1, int(batch_seconds * SAMPLING_RATE // chunk_samples))
    kept_features, kept_units = [], []
    for first in range(0, len(chunks), per_pass):
        group = chunks[first : first + per_pass]
        pieces = [values[start:end] for start, end, _, _ in group]
        padded = torch.nn.utils.rnn.pad_sequence(pieces, batch_first=True)
        mask = torch.zeros(padded.shape, dtype=torch.long)
        for row, piece in enumerate(pieces):
            mask[row, : len(piece)] = 1
        features, unit_values = forward(
            model, {"input_values": padded, "attention_mask": mask}, layer, hidden_states, units, device
        )
        for index, (_, _, keep_from, keep_to) in enumerate(group):
            kept_features.append(features[index][keep_from:keep_to])
            if units is not None:
                kept_units.append(unit_values[index][keep_from:keep_to])
    return [torch.cat(kept_features)], [np.concatenate(kept_units)] if units is not None else []
