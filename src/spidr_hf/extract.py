"""
`spidr-hf extract`: features (one `.pt` per audio file) and/or discrete units (one line per file) of a whole folder or
manifest of audio files, as fastabx, ZeroSpeech tools and unit language models read them.

Files go through the model in padded batches of similar durations (padded batches give the outputs of single files),
each file whole, in one pass. The encoder stops after the layer asked for. A run can be interrupted and started again:
finished files are skipped, a `.pt` appears only once complete (written aside, then renamed) and a units line is one
write, so a cut-off last line is dropped on resume. The settings that shape the outputs are recorded in
OUTPUT/extract.json before any output: a rerun resumes only with the same settings, and touches no output (`.pt` or
units file) that a record does not say it wrote.
"""

import argparse
import functools
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .atomic_files import write_atomically, write_text_atomically
from .audio import AUDIO_SUFFIXES, audio_files, decode, file_seconds, name_some
from .configuration_spidr import SAMPLING_RATE, SpidrConfig
from .errors import AudioError, SpidrError
from .loading import DTYPES, check_device, load
from .modeling_spidr import UNIT_KINDS
from .pipeline_spidr import run_starts

DEFAULT_UNITS_FILE = "units.txt"
DEFAULT_BATCH_SECONDS = 200.0
SETTINGS_FILE = "extract.json"  # OUTPUT's record of the settings its outputs were written with
SETTINGS_WRITER = "spidr-hf extract"


@dataclass(frozen=True)
class AudioFile:
    path: Path
    id: str  # path relative to the input folder (or manifest's folder), without its suffix, with "/" separators
    seconds: float


def run(args: argparse.Namespace) -> int:
    extract(
        args.model,
        args.input,
        args.output,
        layer=args.layer,
        hidden_states=args.hidden_states,
        features=args.features or args.units is None,
        units=args.units,
        units_file=args.units_file,
        deduplicate=args.deduplicate,
        batch_seconds=args.batch_seconds,
        device=args.device,
        dtype=args.dtype,
    )
    return 0


def extract(
    model: str | os.PathLike,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    layer: int | None = None,
    hidden_states: bool = False,
    features: bool = True,
    units: str | None = None,
    units_file: str | os.PathLike | None = None,
    deduplicate: bool = False,
    batch_seconds: float = DEFAULT_BATCH_SECONDS,
    device: str | None = None,
    dtype: str = "float32",
) -> None:
    """
    Write the features of `layer` of every audio file of `input` (a folder, an audio file or a manifest) to
    `output`/<id>.pt (float32 `(frames, dim)` at 50 Hz) and/or its `units` to `units_file`; files already written are
    skipped. `layer=None`: the layer of the model's k-means centroids for k-means units, else `DEFAULT_LAYER`. The
    settings are recorded in `output`/extract.json; a rerun into the same `output` must ask for the same settings.
    """
    if not features and units is None:
        raise SpidrError("Nothing to extract: ask for features and/or units")
    if units is not None and units not in UNIT_KINDS:
        raise SpidrError(f"Unknown unit kind {units!r}: choose among {list(UNIT_KINDS)}")
    if dtype not in DTYPES:
        raise SpidrError(f"Unknown dtype {dtype!r}: choose among {list(DTYPES)}")
    if not batch_seconds > 0:
        raise SpidrError(f"batch_seconds must be positive, got {batch_seconds}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise SpidrError(f"The output {output} is a file: pass a folder")
    units_path = None
    if units is not None:
        units_path = Path(units_file) if units_file is not None else output / DEFAULT_UNITS_FILE
        if units_path.is_dir():
            raise SpidrError(f"The units file {units_path} is a folder: pass a file")
        if units_path.resolve() == (output / SETTINGS_FILE).resolve():
            raise SpidrError(f"The units file cannot be {units_path}, the settings record of the output folder")
    device = check_device(device)
    loaded = load(model, "full" if units == "codebook" else "student", dtype=dtype)
    network, feature_extractor = loaded.model, loaded.feature_extractor
    if units == "kmeans" and network.base_model.kmeans is None:
        raise SpidrError(f"{model} has no k-means centroids: fit them with `spidr-hf kmeans`")
    if layer is None:  # k-means units exist for one layer only: the default follows them, as in the units pipeline
        layer = network.config.kmeans_layer if units == "kmeans" else network.config.default_feature_layer
    check_layer(network.config, layer, hidden_states, units == "codebook")
    if units == "kmeans" and layer != network.config.kmeans_layer:
        kmeans_layer = network.config.kmeans_layer
        raise SpidrError(f"The k-means centroids of {model} are of layer {kmeans_layer}, not {layer}")
    settings = output_settings(model, layer, hidden_states, features, units, deduplicate, dtype, output, units_path)
    # Checked before reading the input (durations take a while on large sets), written only once it is known good
    check_output(output, settings, units_path)
    files = find_audio(Path(input))
    check_durations(files, network.config.receptive_field)

    done_units: set[str] = set()
    complete_bytes = 0
    if units_path is not None:
        done_units, complete_bytes = read_unit_ids(units_path)
    todo = [
        file
        for file in files
        if (features and not feature_path(output, file).is_file()) or (units_path and file.id not in done_units)
    ]
    network = network.to(device).eval()
    output.mkdir(parents=True, exist_ok=True)
    if read_settings(output) != settings:  # before any output, so that every output is covered by a record
        write_settings(output, model, settings)
    if units_path is not None:
        units_path.parent.mkdir(parents=True, exist_ok=True)
        drop_cut_off_line(units_path, complete_bytes)
    progress = tqdm(total=len(todo), desc="Extracting", unit="file")
    with progress, open(units_path, "a", encoding="utf-8") if units_path else nullcontext() as units_out:
        for batch in length_batches(todo, batch_seconds):
            audios = [decode_checked(file, network.config.receptive_field) for file in batch]
            batch_features, batch_units = forward(
                network, feature_extractor, audios, layer, hidden_states, units, device
            )
            for index, file in enumerate(batch):
                if features and not feature_path(output, file).is_file():
                    write_atomically(feature_path(output, file), functools.partial(torch.save, batch_features[index]))
                if units_out is not None and file.id not in done_units:
                    values = batch_units[index]
                    if deduplicate:
                        values = values[run_starts(values)]
                    units_out.write(format_units(file.id, values, units_path))
                    units_out.flush()
            progress.update(len(batch))


def check_layer(config: SpidrConfig, layer: int, hidden_states: bool, codebook: bool) -> None:
    """Check `layer` for what is asked, before any work."""
    first = 0 if hidden_states else 1
    if not first <= layer <= config.num_hidden_layers:
        raise SpidrError(f"layer must be in [{first}, {config.num_hidden_layers}], got {layer}")
    if codebook and layer not in config.codebook_layers:
        raise SpidrError(f"Layer {layer} has no codebook head; layers with one: {list(config.codebook_layers)}")


def find_audio(input: Path) -> list[AudioFile]:
    """
    The audio files of a folder (recursively), one audio file or a manifest, with ids and durations; all checked before
    any work.
    """
    if input.is_dir():
        root = input
        paths = audio_files(input)
        if not paths:
            raise SpidrError(f"{input} holds no audio file ({' '.join(AUDIO_SUFFIXES)})")
        relative = [p.relative_to(root) for p in paths]
    elif input.is_file() and input.suffix.lower() in AUDIO_SUFFIXES:
        root = input.parent
        relative = [Path(input.name)]
    elif input.is_file():
        root = input.parent
        try:  # utf-8-sig: a byte order mark (some Windows editors write one) is not part of the first path
            text = input.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:
            raise SpidrError(
                f"{input} is neither an audio file ({' '.join(AUDIO_SUFFIXES)}) nor a UTF-8 manifest text file"
            ) from error
        lines = [line.strip() for line in text.splitlines()]
        relative = [Path(line) for line in lines if line and not line.startswith("#")]
        if not relative:
            raise SpidrError(f"The manifest {input} names no audio file")
        outside = [str(p) for p in relative if p.is_absolute() or ".." in p.parts]
        if outside:
            raise SpidrError(f"Manifest paths must be relative and inside its folder {root}, got {outside[0]}")
        missing = [str(p) for p in relative if not (root / p).is_file()]
        if missing:
            raise AudioError(f"{len(missing)} file(s) of {input} do not exist: {name_some(missing)}")
        repeated = next((path for index, path in enumerate(relative) if path in relative[:index]), None)
        if repeated is not None:  # Path equality: "a.wav" and "./a.wav" are one file
            raise SpidrError(f"{repeated} is listed twice in {input}")
    else:
        raise SpidrError(f"{input} is neither an audio folder nor a manifest file")
    ids = [p.with_suffix("").as_posix() for p in relative]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if duplicates:
        raise SpidrError(f"Several audio files share the id {duplicates[0]} (same path but for the extension)")
    return [
        AudioFile(root / path, id, file_seconds(root / path))
        for path, id in tqdm(zip(relative, ids, strict=True), total=len(ids), desc="Reading durations", unit="file")
    ]


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


def output_settings(
    model: str | os.PathLike,
    layer: int,
    hidden_states: bool,
    features: bool,
    units: str | None,
    deduplicate: bool,
    dtype: str,
    output: Path,
    units_path: Path | None,
) -> dict:
    """
    The settings that shape the outputs, as recorded in OUTPUT/extract.json and compared on a rerun. Settings that
    do not apply are None (the representation without features, deduplication without units), so that they cannot
    refuse a rerun; a model folder is its resolved path and a units file inside OUTPUT is relative to it, so that a
    rerun from another working folder, or of a moved OUTPUT, still matches.
    """
    model_path = Path(model)
    return {
        "model": str(model_path.resolve()) if model_path.is_dir() else str(model),
        "layer": layer,
        "representation": ("hidden_states" if hidden_states else "layer_results") if features else None,
        "features": features,
        "units": units,
        "deduplicate": deduplicate if units is not None else None,
        "dtype": dtype,
        "units_file": recorded_units_file(output, units_path) if units_path is not None else None,
    }


def recorded_units_file(output: Path, units_path: Path) -> str:
    resolved = units_path.resolve()
    if resolved.is_relative_to(output.resolve()):
        return resolved.relative_to(output.resolve()).as_posix()
    return str(resolved)


def read_settings(output: Path) -> dict | None:
    """The settings recorded in OUTPUT (None when there is no record); a file that is not a record is an error."""
    path = output / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None
    is_record = isinstance(record, dict) and record.get("written_by") == SETTINGS_WRITER
    if not (is_record and isinstance(record.get("settings"), dict)):
        raise SpidrError(f"{path} is not a settings record of spidr-hf extract: choose another output folder")
    return record["settings"]


def write_settings(output: Path, model: str | os.PathLike, settings: dict) -> None:
    """Written aside, then renamed: the record is never cut off."""
    record = {"written_by": SETTINGS_WRITER, "model_as_given": str(model), "settings": settings}
    text = json.dumps(record, indent=2) + "\n"
    write_text_atomically(output / SETTINGS_FILE, text)


def check_output(output: Path, settings: dict, units_path: Path | None) -> None:
    """
    Refuse an OUTPUT whose outputs were written with other settings, and any output file that no record says that
    extract wrote (a user's file given as --units-file, `.pt` files of another program or of a spidr-hf without
    records): a rerun would keep, extend or truncate them as if they were this run's.
    """
    recorded = read_settings(output)
    if recorded == settings:
        return  # a rerun of the same extraction: resume
    if recorded is not None and has_outputs(output, recorded):
        changes = ", ".join(
            f"{key}: {json.dumps(recorded.get(key))} -> {json.dumps(value)}"
            for key, value in settings.items()
            if recorded.get(key) != value
        )
        raise SpidrError(
            f"{output} holds outputs of other settings ({changes}): use another output folder, or the same settings"
        )
    # No record, or the record of a run that wrote nothing yet (it is replaced): any output there is not ours
    if units_path is not None and units_path.exists():
        raise SpidrError(
            f"{units_path} exists and was not written by spidr-hf extract into {output}: choose another --units-file"
        )
    if output.is_dir() and holds_features(output):
        raise SpidrError(
            f"{output} holds .pt files but no {SETTINGS_FILE} settings record of spidr-hf extract: choose another "
            "output folder"
        )


def has_outputs(output: Path, recorded: dict) -> bool:
    units_file = recorded.get("units_file")
    if isinstance(units_file, str) and (output / units_file).exists():  # `/` keeps an absolute path as is
        return True
    return holds_features(output)


def holds_features(output: Path) -> bool:
    return next(output.rglob("*.pt"), None) is not None


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


@torch.no_grad()
def forward(
    model,
    feature_extractor,
    audios: Sequence[np.ndarray],
    layer: int,
    hidden_states: bool,
    units: str | None,
    device: str,
) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    """Per-file features `(frames, dim)` (float32, on CPU) and units of one padded batch, in one pass."""
    inputs = feature_extractor(list(audios), sampling_rate=SAMPLING_RATE, return_tensors="pt")
    output = model.represent(
        inputs["input_values"].to(device, model.dtype),
        inputs["attention_mask"].to(device),
        layers=[layer],
        representation="hidden_states" if hidden_states else "layer_results",
        units=units,
        unit_layers=[layer],
    )
    # `.clone()`: a slice saved as is would drag the whole batch's storage into its file
    features = [values.float().cpu().clone() for values in output.features[layer]]
    unit_values = [values.cpu().numpy() for values in output.units[layer]] if units is not None else []
    return features, unit_values


def feature_path(output: Path, file: AudioFile) -> Path:
    return output / f"{file.id}.pt"


def read_unit_ids(path: Path) -> tuple[set[str], int]:
    """
    Ids of the complete lines of a units file, and their length in bytes: a last line cut off by an interrupted run
    is not counted (`drop_cut_off_line` removes it before the file is appended to). Read only, and only when the
    settings record says extract wrote the file; a line it cannot have written is an error naming the line.
    """
    if not path.is_file():
        return set(), 0
    content = path.read_bytes()
    complete = content[: content.rfind(b"\n") + 1]
    try:
        lines = complete.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise SpidrError(f"{path} is not UTF-8 text: {error}") from error
    ids = set()
    for number, line in enumerate(lines, start=1):
        if line:
            ids.add(unit_line_id(line, path, number))
    return ids, len(complete)


def unit_line_id(line: str, path: Path, number: int) -> str:
    if path.suffix == ".jsonl":
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("id"), str) and isinstance(row.get("units"), list)):
            raise SpidrError(f'{path}, line {number}: not a {{"id", "units"}} JSON line of spidr-hf extract')
        return row["id"]
    id, tab, _ = line.partition("\t")
    if not id or not tab:
        raise SpidrError(f"{path}, line {number}: not an 'id<TAB>units' line of spidr-hf extract")
    return id


def drop_cut_off_line(path: Path, complete_bytes: int) -> None:
    """Remove what follows the last complete line (a line cut off by an interrupted run: it is written again)."""
    if path.is_file() and path.stat().st_size > complete_bytes:
        with open(path, "r+b") as file:
            file.truncate(complete_bytes)


def format_units(id: str, units: np.ndarray, path: Path) -> str:
    values = [int(unit) for unit in units]
    if path.suffix == ".jsonl":
        return json.dumps({"id": id, "units": values}) + "\n"
    return f"{id}\t{' '.join(map(str, values))}\n"
