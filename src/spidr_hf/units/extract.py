"""
`spidr-hf extract`: features (one `.pt` per audio file) and/or discrete units (txt, jsonl or a parquet dataset) of a
whole folder or manifest of audio files, as fastabx, ZeroSpeech tools, unit language models and `datasets` read them;
in one process, or split over the processes of torchrun / accelerate launch, SLURM array tasks or any `--shard K/N`
jobs, with the same outputs whatever the split.

The files are grouped once into padded batches of similar durations (the same batches whatever the split, so that a
file's features are bitwise the same), and the batches are split among the shards, balanced by duration. Each
process decodes in DataLoader workers while the model runs, and saves features on a writer thread. A run can be
interrupted (even by SIGKILL) and started again: finished files are skipped, a batch with a missing output runs again
whole, a `.pt` appears only once complete and units are kept per shard until the whole job is done (`units_output`).
The settings that shape the outputs (model and weights hash, input, layer, batching...) are recorded in
OUTPUT/extract.json before any output: a rerun or another shard resumes only with the same settings, and touches no
output that a record does not say it wrote. Locks keep two runs from doing one shard at once.
"""

import argparse
import functools
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.audio import AUDIO_SUFFIXES, audio_files, decode, file_seconds, name_some
from ..errors import AudioError, SpidrError
from ..io.atomic_files import write_atomically, write_text_atomically
from ..io.file_locks import exclusive_lock, is_locked
from ..io.sharding import Process, Shard, balanced_split, parse_shard, process_device, this_process
from ..model.configuration_spidr import SAMPLING_RATE, SpidrConfig
from ..model.loading import DTYPES, check_device, load, weights_hash
from ..model.modeling_spidr import UNIT_KINDS
from ..model.pipeline_spidr import DEFAULT_STRIDE_LENGTH_S, plan_chunks
from .card import write_dataset_card
from .formats import UNITS_FORMATS, UnitsOutput, check_ids, default_units_path, units_format_of

# Padded audio per forward pass: large batches keep an accelerator busy; on CPU the convolutional encoder's first
# activations (512 channels at 3.2 kHz) outgrow the caches, and 20 s ran faster than 200 s (benchmarks/extract_bench.py)
ACCELERATOR_BATCH_SECONDS = 200.0
CPU_BATCH_SECONDS = 20.0
SETTINGS_FILE = "extract.json"  # OUTPUT's record of the settings its outputs were written with
WRITTEN_UNITS_FILE = "units.jsonl"  # the units file of `write_unit_sequences`
SETTINGS_WRITER = "spidr-hf extract"
SHARD_LOCKS = ".extract-shards"  # one lock file per shard, held while the shard runs (OUTPUT itself: the job's lock)
MAX_PENDING_WRITES = 2  # batches whose features may wait for the writer thread
# Files up to this long go through in one pass, as the reference's script does every file (all of LibriSpeech and of
# Libri-Light's cut version); longer ones, whose single pass would need memory growing with their length (attention:
# with its square), are cut into chunks of this length stitched as the `spidr-features` pipeline stitches its own
DEFAULT_CHUNK_SECONDS = 60.0


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
        units_format=args.units_format,
        deduplicate=args.deduplicate,
        batch_seconds=args.batch_seconds,
        device=args.device,
        dtype=args.dtype,
        shard=args.shard,
        num_workers=args.num_workers,
        compile=args.compile,
        chunk_seconds=args.chunk_seconds,
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
    units_format: str | None = None,
    deduplicate: bool = False,
    batch_seconds: float | None = None,
    device: str | None = None,
    dtype: str = "float32",
    shard: str | None = None,
    num_workers: int | None = None,
    compile: bool = False,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
) -> None:
    """
    Write the features of `layer` of every audio file of `input` (a folder, an audio file or a manifest) to
    `output`/<id>.pt (float32 `(frames, dim)` at 50 Hz) and/or its `units` to `units_file` (`units_format`: txt, jsonl
    or parquet; default from the file's suffix, else txt); files already written are skipped. `layer=None`: the layer
    of the model's k-means centroids for k-means units, else the model's default feature layer. `batch_seconds=None`:
    `ACCELERATOR_BATCH_SECONDS` on an accelerator, `CPU_BATCH_SECONDS` on CPU. `shard`: "K/N" or "slurm" (this job's
    part; launched by torchrun or accelerate, each process does its part of that). `num_workers`: decoding processes
    (None: one per spare core, at most 4). Files longer than `chunk_seconds` are cut into overlapping chunks of that
    length (`DEFAULT_STRIDE_LENGTH_S` on each side) and stitched, so that memory does not grow with a file's length.
    The settings are recorded in `output`/extract.json; a rerun or another shard into the same `output` must ask for
    the same settings.
    """
    if not features and units is None:
        raise SpidrError("Nothing to extract: ask for features and/or units")
    if units is not None and units not in UNIT_KINDS:
        raise SpidrError(f"Unknown unit kind {units!r}: choose among {list(UNIT_KINDS)}")
    if dtype not in DTYPES:
        raise SpidrError(f"Unknown dtype {dtype!r}: choose among {list(DTYPES)}")
    if batch_seconds is not None and not batch_seconds > 0:
        raise SpidrError(f"batch_seconds must be positive, got {batch_seconds}")
    if not chunk_seconds > 4 * DEFAULT_STRIDE_LENGTH_S:
        raise SpidrError(
            f"chunk_seconds must be more than {4 * DEFAULT_STRIDE_LENGTH_S:g} (chunks overlap by "
            f"{2 * DEFAULT_STRIDE_LENGTH_S:g} s), got {chunk_seconds}"
        )
    if num_workers is not None and num_workers < 0:
        raise SpidrError(f"num_workers must be 0 or more, got {num_workers}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise SpidrError(f"The output {output} is a file: pass a folder")
    process = this_process(parse_shard(shard))
    units_out = None
    if units is not None:
        units_format = units_format_of(units_file, units_format)
        units_path = Path(units_file) if units_file is not None else default_units_path(output, units_format)
        check_units_path(units_path, units_format, output)
        units_out = UnitsOutput(units_path, units_format, deduplicate)
    device = process_device(check_device(device), process)
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
    if batch_seconds is None:
        batch_seconds = CPU_BATCH_SECONDS if torch.device(device).type == "cpu" else ACCELERATOR_BATCH_SECONDS
    if num_workers is None:
        num_workers = default_num_workers(process)
    facts = units_facts(network, units) if units is not None else None
    settings = output_settings(
        model, input, layer, hidden_states, features, units, units_out, dtype, batch_seconds, weights_hash(network),
        output, facts["num_units"] if facts is not None else None, chunk_seconds,
    )  # fmt: skip
    # Checked before reading the input (durations take a while on large sets), written only once it is known good
    check_output(output, settings, units_out)
    files = find_audio(Path(input))
    check_durations(files, network.config.receptive_field)
    if units_out is not None:
        check_ids([file.id for file in files], units_out.format)

    # The batches of the whole job, then this shard's share of them: a file is in the same batch whatever the split.
    # A file to chunk is a batch of its own (its chunks are batched together)
    to_chunk = sorted((file for file in files if file.seconds > chunk_seconds), key=lambda f: (-f.seconds, f.id))
    batches = list(length_batches([file for file in files if file.seconds <= chunk_seconds], batch_seconds))
    batches += [[file] for file in to_chunk]
    owners = balanced_split([len(batch) * batch[0].seconds for batch in batches], process.shard.count)
    mine = [batch for batch, owner in zip(batches, owners, strict=True) if owner == process.shard.index]
    output.mkdir(parents=True, exist_ok=True)
    with shard_lock(output, process.shard):
        with exclusive_lock(output):
            check_output(output, settings, units_out)  # again, now that no other process can write the record
            if read_settings(output) != settings:  # before any output, so that every output is covered by a record
                write_settings(output, model, settings)
        done_units = units_out.done_ids() if units_out is not None else set()

        def missing(file: AudioFile) -> bool:
            return (features and not feature_path(output, file).is_file()) or (
                units_out is not None and file.id not in done_units
            )

        todo = [batch for batch in mine if any(missing(file) for file in batch)]
        network = network.to(device).eval()
        if compile:
            network.base_model.compile(dynamic=True)
        shard_text = "" if process.shard.count == 1 else f", shard {process.shard}"
        progress = tqdm(
            total=sum(len(batch) for batch in todo),
            desc="Extracting" if process.shard.count == 1 else f"Extracting shard {process.shard}",
            unit="file",
            disable=process.local_rank not in (None, 0),  # one bar a machine
        )
        writer = FeatureWriter()
        if units_out is not None:
            units_out.open(process.shard)
        start, model_seconds = time.perf_counter(), 0.0
        try:
            with progress:
                for batch, inputs in decoded_batches(todo, feature_extractor, network.config, device, num_workers):
                    forward_start = time.perf_counter()
                    # Its outputs are copied to the CPU: on an accelerator too, the time is the model's whole work
                    if batch[0].seconds > chunk_seconds:
                        chunking = (chunk_seconds, batch_seconds)
                        batch_features, batch_units = forward_chunked(
                            network, inputs, layer, hidden_states, units, device, *chunking
                        )
                    else:
                        batch_features, batch_units = forward(network, inputs, layer, hidden_states, units, device)
                    model_seconds += time.perf_counter() - forward_start
                    saves = []
                    for index, file in enumerate(batch):
                        if features and not feature_path(output, file).is_file():
                            saves.append((feature_path(output, file), batch_features[index]))
                        if units_out is not None and file.id not in done_units:
                            units_out.write(file.id, batch_units[index])
                    writer.submit(saves)
                    progress.update(len(batch))
            writer.finish()
            if todo and process.local_rank in (None, 0):
                wall = time.perf_counter() - start
                seconds = sum(file.seconds for batch in todo for file in batch)
                print(
                    f"{seconds / 3600:.2f} h of audio in {wall:.1f} s ({seconds / wall:.0f} audio-s/s{shard_text}); "
                    f"the model was busy {100 * model_seconds / wall:.0f} % of the time"
                )
        finally:
            writer.close()
            if units_out is not None:
                units_out.close()
    if units_out is not None:
        finish_units(output, units_out, files, process.shard, facts)


def check_units_path(units_path: Path, units_format: str, output: Path) -> None:
    if units_format == "parquet":
        if units_path.exists() and not units_path.is_dir():
            raise SpidrError(f"The parquet units folder {units_path} is a file: pass a folder")
    elif units_path.is_dir():
        raise SpidrError(f"The units file {units_path} is a folder: pass a file")
    if units_path.resolve() == (output / SETTINGS_FILE).resolve():
        raise SpidrError(f"The units file cannot be {units_path}, the settings record of the output folder")
    if units_path.suffix == ".pt":  # it could be, or become, a file's features
        raise SpidrError(f"The units file cannot be {units_path}: .pt files are the features' names")


@contextmanager
def shard_lock(output: Path, shard: Shard) -> Iterator[None]:
    """
    Hold this shard's lock for the run: a second run of the same shard (or of a shard of another split, whose files
    would overlap) is refused while this one runs.
    """
    folder = output / SHARD_LOCKS
    busy = f"Another spidr-hf extract is running shard {shard} into {output}: wait for it to finish"
    try:
        with exclusive_lock(folder / shard.name, wait=False, busy_message=busy, remove_after=True):
            others = [path for path in folder.iterdir() if not path.name.endswith(f"-of-{shard.count:05d}")]
            running = [path.name for path in others if is_locked(path)]
            if running:
                index, count = running[0].split("-of-")
                raise SpidrError(
                    f"A spidr-hf extract of another split (shard {int(index)}/{int(count)}) is running into {output}: "
                    f"its files overlap this shard's ({shard}); run every shard of a job with the same N"
                )
            yield
    except BlockingIOError as error:
        raise SpidrError(str(error)) from None


def finish_units(output: Path, units_out: UnitsOutput, files: Sequence[AudioFile], shard: Shard, facts: dict) -> None:
    """The last process to finish assembles the job's units (txt/jsonl) and the dataset card (parquet)."""
    with exclusive_lock(output):
        done = units_out.done_ids()
        remaining = sum(file.id not in done for file in files)
        if remaining:
            print(f"Shard {shard} is done; {remaining} files' units remain for the other shards of {output}")
            return
        units_out.assemble([file.id for file in files])
        if units_out.format == "parquet":
            write_dataset_card(output, units_out, read_settings(output), facts)


def units_facts(model, units: str) -> dict:
    """What a units dataset's card says of its units beyond the settings: how many there are, their frame rate and,
    for k-means units, which centroids."""
    config = model.config
    if units == "kmeans":
        return {
            "num_units": config.kmeans_num_clusters,
            "centroids_sha256": weights_hash(model.base_model.kmeans),
            "frame_rate": config.frame_rate,
        }
    return {"num_units": config.codebook_size, "frame_rate": config.frame_rate}


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
    input: str | os.PathLike,
    layer: int,
    hidden_states: bool,
    features: bool,
    units: str | None,
    units_out: UnitsOutput | None,
    dtype: str,
    batch_seconds: float,
    weights_sha256: str,
    output: Path,
    num_units: int | None,
    chunk_seconds: float,
) -> dict:
    """
    The settings that shape the outputs, as recorded in OUTPUT/extract.json and compared on a rerun and by every
    shard. Settings that do not apply are None (the representation without features, deduplication without units), so
    that they cannot refuse a rerun; the model folder and the input are resolved paths and a units file inside OUTPUT
    is relative to it, so that a rerun from another working folder, or of a moved OUTPUT, still matches. The weights'
    hash tells a model re-fitted or retrained in place from the one the outputs came from; the batching decides which
    files share a forward pass (and so the last bits of their features) and which shard does which file.
    """
    model_path = Path(model)
    return {
        "model": str(model_path.resolve()) if model_path.is_dir() else str(model),
        "weights_sha256": weights_sha256,
        "input": str(Path(input).resolve()),
        "layer": layer,
        "representation": ("hidden_states" if hidden_states else "layer_results") if features else None,
        "features": features,
        "units": units,
        "num_units": num_units,  # what a unit language model's vocabulary is made of
        "deduplicate": units_out.deduplicate if units_out is not None else None,
        "dtype": dtype,
        "batch_seconds": batch_seconds,
        "chunk_seconds": chunk_seconds,
        "units_format": units_out.format if units_out is not None else None,
        "units_file": recorded_units_file(output, units_out.path) if units_out is not None else None,
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


def write_unit_sequences(output: Path, units: Mapping[str, Sequence[int]], source: dict) -> Path:
    """
    `output` as `spidr-hf extract --units ... --units-format jsonl` writes it, for units that another quantizer
    made (gold phones, log-mel k-means): `units` per id, and `source`, the settings fields that name the quantizer
    (`model`, `weights_sha256`, `input`, `units`, `num_units`, `deduplicate`), so that `training/train_ulm.py` trains
    on them and `spidr-hf slm-score --units` checks and scores with them.
    """
    if (output / SETTINGS_FILE).exists():
        raise SpidrError(f"{output} already holds units: choose another folder")
    settings = {
        "layer": 0,
        "representation": None,
        "features": False,
        "dtype": None,
        "batch_seconds": None,
        **source,
        "units_format": "jsonl",
        "units_file": WRITTEN_UNITS_FILE,
    }
    lines = "".join(
        json.dumps({"id": id, "units": [int(unit) for unit in values]}) + "\n" for id, values in units.items()
    )
    write_text_atomically(output / WRITTEN_UNITS_FILE, lines)
    write_settings(output, source["model"], settings)
    return output


def check_output(output: Path, settings: dict, units_out: UnitsOutput | None) -> None:
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
    if units_out is not None and units_out.exists():
        raise SpidrError(
            f"{units_out.path} exists and was not written by spidr-hf extract into {output}: choose another "
            "--units-file"
        )
    if output.is_dir() and holds_features(output):
        raise SpidrError(
            f"{output} holds .pt files but no {SETTINGS_FILE} settings record of spidr-hf extract: choose another "
            "output folder"
        )


def has_outputs(output: Path, recorded: dict) -> bool:
    units_file, units_format = recorded.get("units_file"), recorded.get("units_format")
    if isinstance(units_file, str):  # records of spidr-hf 0.1 have no units_format: the suffix said it
        units_format = units_format if units_format in UNITS_FORMATS else units_format_of(units_file, None)
        # `/` keeps an absolute path as is
        if UnitsOutput(output / units_file, units_format, bool(recorded.get("deduplicate"))).exists():
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


@torch.no_grad()
def forward(
    model, inputs: dict[str, torch.Tensor], layer: int, hidden_states: bool, units: str | None, device: str
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
    features = [values.float().cpu().clone() for values in output.features[layer]]
    unit_values = [values.cpu().numpy() for values in output.units[layer]] if units is not None else []
    return features, unit_values


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


class FeatureWriter:
    """
    Saves features on one thread beside the model, at most `MAX_PENDING_WRITES` batches behind it. After a failed
    save nothing more is written, and the error is raised in the caller's thread at its next `submit` or `finish`.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract-writer")
        self._pending: list[Future] = []
        self._failed = False

    def submit(self, saves: Sequence[tuple[Path, torch.Tensor]]) -> None:
        self._pending.append(self._executor.submit(self._save_all, saves))
        while len(self._pending) > MAX_PENDING_WRITES or (self._pending and self._pending[0].done()):
            self._pending.pop(0).result()

    def _save_all(self, saves: Sequence[tuple[Path, torch.Tensor]]) -> None:
        if self._failed:
            return
        try:
            for path, tensor in saves:
                write_atomically(path, functools.partial(torch.save, tensor))
        except BaseException:
            self._failed = True
            raise

    def finish(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def close(self) -> None:
        """Wait for the save under way (a partial file is removed by its own cleanup) and drop the rest."""
        self._failed = True
        self._executor.shutdown(wait=True, cancel_futures=True)


def feature_path(output: Path, file: AudioFile) -> Path:
    return output / f"{file.id}.pt"
