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

import functools
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.audio import AUDIO_SUFFIXES, audio_files, file_seconds, name_some
from ..data.audio_batches import AudioFile, check_durations, decoded_batches, default_num_workers
from ..defaults import CHUNK_SECONDS
from ..errors import AudioError, SpidrError
from ..io.atomic_files import check_writable, write_atomically, writing
from ..io.file_locks import exclusive_lock, exclusive_locks, is_locked
from ..io.sharding import Shard, balanced_split, parse_shard, process_device, this_process
from ..model.loading import DTYPES, check_device, load, load_config, weights_hash
from ..model.modeling_spidr import UNIT_KINDS
from .card import write_dataset_card
from .encoder import (
    SpidrUnitEncoder,
    batch_seconds_for,
    check_chunk_seconds,
    default_unit_layer,
    job_batches,
    model_name,
    model_outputs,
)
from .formats import UnitsOutput, check_ids, default_units_path, units_format_of
from .record import RECORD_FILE, ExtractSettings, read_record, recorded_units_file, write_record

SHARD_LOCKS = ".extract-shards"  # one lock file per shard, held while the shard runs (OUTPUT itself: the job's lock)
MAX_PENDING_WRITES = 2  # batches whose features may wait for the writer thread


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
    chunk_seconds: float = CHUNK_SECONDS,
) -> None:
    """
    Write the features of `layer` of every audio file of `input` (a folder, an audio file or a manifest) to
    `output`/<id>.pt (float32 `(frames, dim)` at 50 Hz) and/or its `units` (the output of a `SpidrUnitEncoder`) to
    `units_file` (`units_format`: txt, jsonl or parquet; default from the file's suffix, else txt); files already
    written are skipped. `layer=None`: the layer of the model's k-means centroids for k-means units, the default unit
    layer for codebook units, else the model's default feature layer. `batch_seconds=None`: `ACCELERATOR_BATCH_SECONDS`
    on an accelerator, `CPU_BATCH_SECONDS` on CPU. `shard`: "K/N" or "slurm" (this job's part; launched by torchrun
    or accelerate, each process does its part of that). `num_workers`: decoding processes (None: one per spare core,
    at most 4). Files longer than `chunk_seconds` are cut into overlapping chunks of that length
    (`DEFAULT_STRIDE_LENGTH_S` on each side) and stitched, so that memory does not grow with a file's length. The
    settings are recorded in `output`/extract.json (`units.record`); a rerun or another shard into the same `output`
    must ask for the same settings.
    """
    if not features and units is None:
        raise SpidrError("Nothing to extract: ask for features and/or units")
    if units is not None and units not in UNIT_KINDS:
        raise SpidrError(f"Unknown unit kind {units!r}: choose among {list(UNIT_KINDS)}")
    if dtype not in DTYPES:
        raise SpidrError(f"Unknown dtype {dtype!r}: choose among {list(DTYPES)}")
    if batch_seconds is not None and not batch_seconds > 0:
        raise SpidrError(f"batch_seconds must be positive, got {batch_seconds}")
    check_chunk_seconds(chunk_seconds)
    if num_workers is not None and num_workers < 0:
        raise SpidrError(f"num_workers must be 0 or more, got {num_workers}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise SpidrError(f"The output {output} is a file: pass a folder")
    process = this_process(parse_shard(shard))
    if units is not None:
        units_format = units_format_of(units_file, units_format)
        units_path = Path(units_file) if units_file is not None else default_units_path(output, units_format)
        check_units_path(units_path, units_format, output)
    for folder in (output, *([units_path.parent] if units is not None else [])):
        check_writable(folder)  # before the weights load
    device = process_device(check_device(device), process)
    config = load_config(model).config  # the layer is checked before the weights load
    units_out = None
    if units is not None:
        num_units = config.kmeans_num_clusters if units == "kmeans" else config.codebook_size
        units_out = UnitsOutput(units_path, units_format, deduplicate, num_units)
    if layer is None:  # k-means units exist for one layer only: the default follows them, as in the units pipeline
        layer = default_unit_layer(config, units) if units is not None else config.default_feature_layer
    config.check_layer(layer, "hidden_states" if hidden_states else "layer_results", units)
    batch_seconds = batch_seconds_for(device, batch_seconds)
    if num_workers is None:
        num_workers = default_num_workers(process)
    loaded = load(model, "full" if units == "codebook" else "student", dtype=dtype)
    network, feature_extractor = loaded.model, loaded.feature_extractor
    encoder = None
    if units is not None:
        encoder = SpidrUnitEncoder(
            loaded, model, units, layer, deduplicate=deduplicate, device=device, dtype=dtype,
            batch_seconds=batch_seconds, chunk_seconds=chunk_seconds, num_workers=num_workers,
        )  # fmt: skip
    settings = ExtractSettings(
        model=model_name(model),
        weights_sha256=encoder.weights_sha256 if encoder is not None else weights_hash(network),
        input=str(Path(input).resolve()),
        layer=layer,
        representation=("hidden_states" if hidden_states else "layer_results") if features else None,
        features=features,
        units=units,
        num_units=encoder.num_units if encoder is not None else None,
        deduplicate=units_out.deduplicate if units_out is not None else None,
        dtype=dtype,
        batch_seconds=batch_seconds,
        chunk_seconds=chunk_seconds,
        units_format=units_out.format if units_out is not None else None,
        units_file=recorded_units_file(output, units_out.path) if units_out is not None else None,
    )
    # Checked before reading the input (durations take a while on large sets), written only once it is known good
    check_output(output, settings, units_out)
    files = find_audio(Path(input))
    check_durations(files, network.config.receptive_field)
    if units_out is not None:
        check_ids([file.id for file in files], units_out.format)

    # The batches of the whole job, then this shard's share of them: a file is in the same batch whatever the split
    batches = job_batches(files, batch_seconds, chunk_seconds)
    owners = balanced_split([len(batch) * batch[0].seconds for batch in batches], process.shard.count)
    mine = [batch for batch, owner in zip(batches, owners, strict=True) if owner == process.shard.index]
    output.mkdir(parents=True, exist_ok=True)
    # A units file outside OUTPUT may be named by a job into another OUTPUT: its folder is locked too, and the units
    # are claimed with the record, so that of two such jobs started at once the second is refused
    shared_units = units_out is not None and not units_out.path.resolve().is_relative_to(output.resolve())
    if shared_units:
        with writing(units_out.path.parent):
            units_out.path.parent.mkdir(parents=True, exist_ok=True)
    with shard_lock(output, process.shard):
        with exclusive_locks(output, *([units_out.path.parent] if shared_units else [])):
            check_output(output, settings, units_out)  # again, now that no other process can write the record
            if read_record(output) != settings:  # before any output, so that every output is covered by a record
                write_record(output, str(model), settings)
            if shared_units:
                units_out.claim()
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
                    batch_features, batch_units = model_outputs(
                        network, inputs, batch, layer, hidden_states, units, device, chunk_seconds, batch_seconds
                    )
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
    if units_out is not None and encoder is not None:
        finish_units(output, units_out, files, process.shard, encoder.card_facts())


def check_units_path(units_path: Path, units_format: str, output: Path) -> None:
    if units_format == "parquet":
        if units_path.exists() and not units_path.is_dir():
            raise SpidrError(f"The parquet units folder {units_path} is a file: pass a folder")
    elif units_path.is_dir():
        raise SpidrError(f"The units file {units_path} is a folder: pass a file")
    if units_path.resolve() == (output / RECORD_FILE).resolve():
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
            write_dataset_card(output, units_out, read_record(output), facts)


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


def check_output(output: Path, settings: ExtractSettings, units_out: UnitsOutput | None) -> None:
    """
    Refuse an OUTPUT whose outputs were written with other settings, and any output file that no record says that
    extract wrote (a user's file given as --units-file, `.pt` files of another program or of a spidr-hf without
    records): a rerun would keep, extend or truncate them as if they were this run's.
    """
    recorded = read_record(output)
    if recorded == settings:
        return  # a rerun of the same extraction: resume
    if recorded is not None and has_outputs(output, recorded):
        raise SpidrError(
            f"{output} holds outputs of other settings ({settings.changes_from(recorded)}): use another output "
            "folder, or the same settings"
        )
    # No record, or the record of a run that wrote nothing yet (it is replaced): any output there is not ours
    if units_out is not None and units_out.exists() and not units_out.path.exists():  # its parts only
        raise SpidrError(
            f"{units_out.path} is being written by a spidr-hf extract job into another output folder than {output} "
            "(its parts are there): choose another --units-file"
        )
    if units_out is not None and units_out.exists():
        raise SpidrError(
            f"{units_out.path} exists and was not written by spidr-hf extract into {output}: choose another "
            "--units-file"
        )
    if output.is_dir() and holds_features(output):
        raise SpidrError(
            f"{output} holds .pt files but no {RECORD_FILE} settings record of spidr-hf extract: choose another "
            "output folder"
        )


def has_outputs(output: Path, recorded: ExtractSettings) -> bool:
    recorded_units = recorded.units_output(output)
    return (recorded_units is not None and recorded_units.exists()) or holds_features(output)


def holds_features(output: Path) -> bool:
    return next(output.rglob("*.pt"), None) is not None


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
