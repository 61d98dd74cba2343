"""
The record of a units folder, `FOLDER/extract.json`: the settings that shaped its outputs (`ExtractSettings`) and so
the identity of its units (`UnitIdentity`: the encoder that made them). `spidr-hf extract` writes it before any
output and compares it on a rerun or another shard; the unit encoders without a model (gold phones, log-mel k-means)
write the same record for their folders (`write_units_folder`); unit LMs, `slm-score` and `push-units` read it back
(`read_units`). This module is the one reader and writer of the file.
"""

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..defaults import UNITS_FORMATS
from ..errors import SpidrError
from ..io.atomic_files import write_text_atomically
from ..io.json_records import read_json_record, write_json_record
from .formats import UnitsOutput, units_format_of

RECORD_FILE = "extract.json"  # a units folder's record of the settings its outputs were written with
RECORD_WRITER = "spidr-hf extract"  # the record's `written_by`: what tells the file from another JSON file
WRITTEN_UNITS_FILE = "units.jsonl"  # the units file of `write_units_folder`
LM_CONFIG_KEY = "unit_source"  # the entry of a unit LM's config that holds the identity of its units


@dataclass(frozen=True)
class UnitIdentity:
    """
    What a sequence of units means, as its encoder gives it: units of another identity are another language. The
    weights' hash decides (the model's name only informs; the hash is that of the weights in the `dtype` they ran
    in, which says why two hashes of one model differ); `layer` is None for encoders without layers (phones, log-mel
    k-means); `deduplicate`: runs of a unit merged into one. `dtype` is None where it does not apply, or where it was
    not recorded (unit LMs of spidr-hf 0.2).
    """

    kind: str  # codebook, kmeans, phones or log_mel
    model: str
    weights_sha256: str
    layer: int | None
    num_units: int
    deduplicate: bool
    dtype: str | None = None

    def differences(self, other: "UnitIdentity") -> list[str]:
        """'field: ours -> theirs' for every field but the model's name that differs (the dtype where both say it)."""
        return [
            f"{field.name}: {getattr(self, field.name)} -> {getattr(other, field.name)}"
            for field in dataclasses.fields(self)
            if field.name != "model"
            and getattr(self, field.name) != getattr(other, field.name)
            and not (field.name == "dtype" and None in (self.dtype, other.dtype))
        ]

    def deduplicated(self, deduplicate: bool = True) -> "UnitIdentity":
        """The same units with runs merged (`deduplicate`), or as they are: merged runs cannot be split again."""
        return dataclasses.replace(self, deduplicate=self.deduplicate or deduplicate)

    def to_dict(self) -> dict[str, Any]:
        """As a unit LM's config records it (`LM_CONFIG_KEY`)."""
        return {
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "layer": self.layer,
            "unit_kind": self.kind,
            "num_units": self.num_units,
            "deduplicate": self.deduplicate,
            **({"dtype": self.dtype} if self.dtype is not None else {}),
        }

    @classmethod
    def from_dict(cls, recorded: Mapping[str, Any]) -> "UnitIdentity":
        return cls(
            kind=recorded["unit_kind"],
            model=recorded["model"],
            weights_sha256=recorded["weights_sha256"],
            layer=recorded["layer"],
            num_units=recorded["num_units"],
            deduplicate=recorded["deduplicate"],
            dtype=recorded.get("dtype"),
        )


@dataclass(frozen=True)
class ExtractSettings:
    """
    The settings that shape a units folder's outputs, compared on a rerun and by every shard. Settings that do not
    apply are None (the representation without features, deduplication without units), so that they cannot refuse a
    rerun. The field order is the file's.
    """

    model: str  # a resolved folder path, or a Hub id
    weights_sha256: str
    input: str  # resolved path
    layer: int | None
    representation: str | None
    features: bool
    units: str | None  # the unit kind
    num_units: int | None  # what a unit language model's vocabulary is made of
    deduplicate: bool | None
    dtype: str | None
    batch_seconds: float | None
    chunk_seconds: float | None
    units_format: str | None
    units_file: str | None  # relative to the folder when inside it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], path: Path) -> "ExtractSettings":
        """A recorded settings mapping; keys that earlier versions did not record are None, unknown ones refused."""
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise SpidrError(f"{path} records settings this spidr-hf does not know ({', '.join(unknown)})")
        settings = cls(**{name: values.get(name) for name in names})
        if settings.units_file is not None and settings.units_format not in UNITS_FORMATS:
            # Records of spidr-hf 0.1 have no units_format: the units file's suffix said it
            settings = dataclasses.replace(settings, units_format=units_format_of(settings.units_file, None))
        return settings

    def changes_from(self, recorded: "ExtractSettings") -> str:
        """'key: recorded -> ours' for every setting that differs."""
        return ", ".join(
            f"{field.name}: {json.dumps(getattr(recorded, field.name))} -> {json.dumps(getattr(self, field.name))}"
            for field in dataclasses.fields(self)
            if getattr(recorded, field.name) != getattr(self, field.name)
        )

    def units_output(self, folder: Path) -> UnitsOutput | None:
        """The units these settings write into `folder` (None without units); an absolute units file stays as is."""
        if self.units_file is None or self.units_format is None:
            return None
        return UnitsOutput(folder / self.units_file, self.units_format, bool(self.deduplicate), self.num_units)

    def identity(self) -> UnitIdentity | None:
        """The identity of the folder's units (None without units)."""
        if self.units is None or self.num_units is None:
            return None
        return UnitIdentity(
            kind=self.units,
            model=self.model,
            weights_sha256=self.weights_sha256,
            layer=self.layer,
            num_units=self.num_units,
            deduplicate=bool(self.deduplicate),
            dtype=self.dtype,
        )


def recorded_units_file(folder: Path, units_path: Path) -> str:
    """The units file as recorded: relative to `folder` when inside it (so that a moved folder still matches)."""
    resolved = units_path.resolve()
    if resolved.is_relative_to(folder.resolve()):
        return resolved.relative_to(folder.resolve()).as_posix()
    return str(resolved)


def read_record(folder: Path) -> ExtractSettings | None:
    """The settings recorded in `folder` (None when there is no record); a file that is not a record is an error."""
    path = folder / RECORD_FILE
    settings = read_json_record(path, RECORD_WRITER, "settings", "a settings record of spidr-hf extract")
    return None if settings is None else ExtractSettings.from_dict(settings, path)


def write_record(folder: Path, model_as_given: str, settings: ExtractSettings) -> None:
    write_json_record(
        folder / RECORD_FILE, RECORD_WRITER, {"model_as_given": model_as_given, "settings": settings.to_dict()}
    )


def write_units_folder(
    folder: Path, identity: UnitIdentity, units: Mapping[str, Sequence[int] | np.ndarray], input: str
) -> Path:
    """
    A units folder as `spidr-hf extract --units ... --units-format jsonl` writes it, for the units of an encoder that
    extract does not run (gold phones, log-mel k-means): the units of each id, and the record of their `identity`, so
    that `training/train_ulm.py` trains on them and `spidr-hf slm-score --units` checks and scores with them.
    """
    if (folder / RECORD_FILE).exists():
        raise SpidrError(f"{folder} already holds units: choose another folder")
    settings = ExtractSettings(
        model=identity.model,
        weights_sha256=identity.weights_sha256,
        input=input,
        layer=identity.layer,
        representation=None,
        features=False,
        units=identity.kind,
        num_units=identity.num_units,
        deduplicate=identity.deduplicate,
        dtype=identity.dtype,
        batch_seconds=None,
        chunk_seconds=None,
        units_format="jsonl",
        units_file=WRITTEN_UNITS_FILE,
    )
    lines = "".join(
        json.dumps({"id": id, "units": [int(unit) for unit in values]}) + "\n" for id, values in units.items()
    )
    write_text_atomically(folder / WRITTEN_UNITS_FILE, lines)
    write_record(folder, identity.model, settings)
    return folder


def read_units(folder: str | Path, deduplicate: bool = False) -> tuple[UnitIdentity, UnitsOutput]:
    """
    The identity of the units of a finished units folder (`spidr-hf extract --units ...`, or `write_units_folder`),
    deduplicated if asked (units deduplicated when written stay so), and their reader. One line when the folder holds
    no units or its job is not finished.
    """
    folder = Path(folder)
    settings = read_record(folder) if folder.is_dir() else None
    if settings is None or settings.units is None:
        raise SpidrError(
            f"{folder} is not an output folder of `spidr-hf extract --units ...` (no units in {RECORD_FILE})"
        )
    identity, units_out = settings.identity(), settings.units_output(folder)
    if identity is None or units_out is None:
        raise SpidrError(
            f"{folder} was extracted by a spidr-hf that did not record the number of units: extract it again"
        )
    unfinished = unfinished_extraction(folder, units_out)
    if unfinished is not None:
        raise SpidrError(unfinished)
    if units_out.num_rows() == 0:
        raise SpidrError(f"{folder} holds no units yet: run the extraction to the end")
    return identity.deduplicated(deduplicate), units_out


def unfinished_extraction(folder: Path, units_out: UnitsOutput) -> str | None:
    """
    Why the units of `folder` are not known to be those of a finished job, in one line (None when they are): txt/jsonl
    units are assembled into their file, and their parts removed, when every shard is done; the parquet files of each
    shard are in place as it goes, and the dataset card is written when every shard is done.
    """
    rerun = "run it to the end (a rerun of the same command goes on where it stopped)"
    if units_out.format == "parquet":
        from .card import CARD_FILE, read_card_source  # the card module reads this one's records

        if read_card_source(folder) is not None:
            return None
        if (folder / CARD_FILE).exists():
            return (
                f"{folder / CARD_FILE} is not the dataset card that spidr-hf writes once every shard of the "
                "extraction is done, which says it is: move that file away and run the extraction again to write it"
            )
        return f"The extraction into {folder} is not finished (no dataset card yet): {rerun}"
    if units_out.parts_folder.exists():
        return (
            f"The extraction into {folder} is not finished (its shards' units are in {units_out.parts_folder}): {rerun}"
        )
    if not units_out.path.is_file():
        return f"The extraction into {folder} is not finished (no units file {units_out.path}): {rerun}"
    return None


def read_unit_sequences(folder: str | Path, deduplicate: bool = False) -> tuple[UnitIdentity, dict[str, np.ndarray]]:
    """`read_units`, with every file's units in memory, as written (frame units stay frame units: a unit LM's tokens
    merge the runs of a deduplicating identity)."""
    identity, units_out = read_units(folder, deduplicate)
    return identity, dict(units_out.iter_units())
