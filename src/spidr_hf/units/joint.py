"""
Several unit encoders of one SpidR network from one forward pass (`JointUnitEncoder`): the codebook units of some
layers and the k-means units of others (each layer with the centroids that `spidr-hf kmeans` stored in its own model
folder), which `SpidrUnitEncoder`s would give one pass each. The spoken-LM ladder encodes hours of speech once for all
of SpidR's unit sources this way. Each encoder keeps its identity: units folders written from its output are those of
`spidr-hf extract` with that encoder's model, kind and layer, and `slm-score --units-model` rebuilds the same encoder.
"""

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.audio_batches import AudioFile, check_durations, decoded_batches
from ..errors import SpidrError
from ..io.atomic_files import writing
from .encoder import SpidrUnitEncoder, job_batches, model_outputs


class JointUnitEncoder:
    """`SpidrUnitEncoder`s (by name) of one network's weights, encoded together: one forward pass per batch up to the
    deepest layer any of them needs (a file longer than their `chunk_seconds` goes through each encoder alone)."""

    def __init__(self, encoders: Mapping[str, SpidrUnitEncoder]) -> None:
        if not encoders:
            raise SpidrError("A joint encoder needs at least one encoder")
        self.encoders = dict(encoders)
        first = next(iter(self.encoders.values()))
        for name, encoder in self.encoders.items():
            if not same_network(first, encoder):
                raise SpidrError(
                    f"The encoder {name} ({encoder.source}) runs other weights than {first.source}: encode them apart"
                )
            settings = (encoder.device, encoder.dtype, encoder.batch_seconds, encoder.chunk_seconds)
            if settings != (first.device, first.dtype, first.batch_seconds, first.chunk_seconds):
                raise SpidrError(f"The encoder {name} has other device, dtype or batch settings than the first one")
        # The network that runs: one with the codebook heads when any encoder reads them
        codebook = [encoder for encoder in self.encoders.values() if encoder.kind == "codebook"]
        self.runner = (codebook or [first])[0]
        self.codebook_layers = sorted({encoder.layer for encoder in codebook})
        self.kmeans_layers = sorted({encoder.layer for encoder in self.encoders.values() if encoder.kind == "kmeans"})

    def encode_batches(
        self, files: Sequence[AudioFile], done: frozenset[str] = frozenset()
    ) -> Iterator[dict[str, dict[str, np.ndarray]]]:
        """Every encoder's frame units of each batch of `files` (name -> id -> units), in `extract`'s batches,
        leaving out the batches whose files are all `done`."""
        runner = self.runner
        check_durations(files, runner.network.config.receptive_field)
        batches = job_batches(files, runner.batch_seconds, runner.chunk_seconds)
        todo = [batch for batch in batches if any(file.id not in done for file in batch)]
        network = runner.network.to(runner.device).eval()
        for encoder in self.encoders.values():
            encoder.network.to(runner.device).eval()
        decoded = decoded_batches(todo, runner.feature_extractor, network.config, runner.device, runner.num_workers)
        for batch, inputs in decoded:
            if batch[0].seconds > runner.chunk_seconds:
                yield self._each_alone(batch, inputs)
            else:
                yield self._together(network, batch, inputs)

    @torch.no_grad()
    def _together(self, network, batch: Sequence[AudioFile], inputs: dict) -> dict[str, dict[str, np.ndarray]]:
        device = self.runner.device
        output = network.represent(
            inputs["input_values"].to(device, network.dtype),
            inputs["attention_mask"].to(device),
            layers=self.kmeans_layers,
            representation="layer_results",
            units="codebook" if self.codebook_layers else None,
            unit_layers=self.codebook_layers or None,
        )
        units: dict[str, dict[str, np.ndarray]] = {}
        for name, encoder in self.encoders.items():
            if encoder.kind == "codebook":
                values = [item.cpu().numpy() for item in output.units[encoder.layer]]
            else:  # the layer's results, padded again, through this encoder's own centroids (as `represent` does)
                padded = torch.nn.utils.rnn.pad_sequence(output.features[encoder.layer], batch_first=True)
                assigned = encoder.network.base_model.kmeans(padded).cpu().numpy()
                values = [assigned[row, : len(item)] for row, item in enumerate(output.features[encoder.layer])]
            units[name] = {file.id: value for file, value in zip(batch, values, strict=True)}
        return units

    def _each_alone(self, batch: Sequence[AudioFile], inputs: dict) -> dict[str, dict[str, np.ndarray]]:
        units = {}
        for name, encoder in self.encoders.items():
            _, values = model_outputs(
                encoder.network, inputs, batch, encoder.layer, False, encoder.kind, encoder.device,
                encoder.chunk_seconds, encoder.batch_seconds, features=False,
            )  # fmt: skip
            units[name] = {file.id: value for file, value in zip(batch, values, strict=True)}
        return units


def same_network(first: SpidrUnitEncoder, second: SpidrUnitEncoder) -> bool:
    """Whether two encoders' students have the same weights, their k-means centroids aside."""
    ours, theirs = (encoder.network.base_model.state_dict() for encoder in (first, second))
    names = {name for name in ours if not name.startswith("kmeans.")}
    if names != {name for name in theirs if not name.startswith("kmeans.")}:
        return False
    return all(ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]) for name in names)


def cached_joint_units(
    joint: JointUnitEncoder, files: Sequence[AudioFile], cache: Path
) -> dict[str, dict[str, np.ndarray]]:
    """
    Every encoder's units of `files` (name -> id -> units), from the cache folder `cache` as far as it goes (a file
    per encoder: a JSON line of its identity, then one `{"id", "units"}` line per file, as `slm.score.cached_units`
    writes), the others encoded and appended batch by batch: an interrupted run goes on where it stopped. A cache
    file of another identity is started anew; a line cut off by an interruption is dropped.
    """
    units: dict[str, dict[str, np.ndarray]] = {}
    kept: dict[str, bytes] = {}
    for name, encoder in joint.encoders.items():
        header = json.dumps({"identity": encoder.identity.to_dict()})
        path = cache / f"{name}.jsonl"
        lines = path.read_bytes().split(b"\n")[:-1] if path.is_file() else []  # the last, unterminated part: cut off
        units[name] = {}
        if lines and lines[0].decode("utf-8", errors="replace") == header:
            for line in lines[1:]:
                row = json.loads(line)
                units[name][row["id"]] = np.asarray(row["units"], dtype=np.int64)
            kept[name] = b"".join(line + b"\n" for line in lines)
        else:
            kept[name] = (header + "\n").encode()
    done = frozenset(set.intersection(*(set(values) for values in units.values())))
    with writing(cache):
        cache.mkdir(parents=True, exist_ok=True)
        appended = {}
        try:
            for name, content in kept.items():
                (cache / f"{name}.jsonl").write_bytes(content)
                appended[name] = open(cache / f"{name}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            for batch in joint.encode_batches(files, done=done):
                for name, batch_units in batch.items():
                    for id, values in batch_units.items():
                        if id not in units[name]:
                            units[name][id] = values
                            appended[name].write(json.dumps({"id": id, "units": values.tolist()}) + "\n")
                    appended[name].flush()
        finally:
            for file in appended.values():
                file.close()
    return units
