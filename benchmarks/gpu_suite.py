"""
One prepared GPU run: what only a GPU answers about spidr-hf, in one command that ends within 8 minutes on one H100,
written as JSON (after every measurement, so that a run cut short keeps what it measured) and printed as a table.

    python benchmarks/gpu_suite.py --output gpu_suite.json [--audio DIR] [--hours 2] [--budget-s 390]
    python benchmarks/gpu_suite.py --smoke --output smoke.json    # the same code on the CPU, small and short

How to run it on a lent GPU machine (what travels, the exact command): docs/speed.md, "The GPU suite".

Sections, in this order:
- extract: `spidr-hf extract` end to end (its own process, start-up included) on >= 2 hours of audio (generated
  speech-like 16 kHz wav, or --audio), layer-6 features and k-means units (centroids fitted first by
  `spidr-hf kmeans`), float32 and bfloat16; then the reference's `extract_features.py` loop (its model and its loop,
  as benchmarks/extract_bench.py runs it) on the same files, or the first --reference-fraction of them. Each command
  runs under torch.profiler in a child process: audio-hours per GPU-hour from its wall time, the GPU's busy fraction
  from the profiler's device events (kernels, copies and fills, merged where they overlap) over the command's wall
  time and over the span from the first to the last device event (the weights' upload to the last batch: what a
  long job approaches), and the peak of torch's CUDA allocator.
- agreement: features and k-means units that the extract runs wrote against our model run on the CPU in float32 (one
  file at a time), bf16 units against float32 units over every file, the pretraining loss on the device (float32,
  bf16 autocast) against the CPU's, and a padded batch against its items alone on the device.
- train: the base recipe's training step (loss, backward, clip, fused AdamW, teacher EMA: benchmarks/bench.py's) for
  ours and the reference on the paper's batch (max_batch_length 3.8M samples per GPU: 15 utterances of 15 s; fewer
  where they do not fit, as the JSON says), eager and torch.compile'd, float32 and bf16 autocast: median step time,
  audio seconds per second, MFU (FLOPs counted by torch.utils.flop_counter on the eager step, over the card's dense
  bf16 peak; float32 rows also over its fp32 peak: bench.GPU_PEAK_TFLOPS), peak memory, compile time (the first
  call, less a step).

A measurement starts only while the run is inside --budget-s; later ones are recorded as skipped. It checks what it
needs before anything else (a CUDA GPU, free GPU memory and disk, the reference `spidr==0.2.0`, scikit-learn and scipy)
and fails in one line. --smoke runs every section on the CPU with a 2-layer model and 12 s of audio (torch.compile with
the "eager" backend and static shapes: dynamo captures the same graphs, without Inductor's code generation or symbolic
shapes, which only the GPU run exercises); tests/test_gpu_suite.py runs it.
"""

import argparse
import dataclasses
import gc
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
SAMPLING_RATE = 16_000
REFERENCE_VERSION = "0.2.0"
PAPER_MAX_BATCH_LENGTH = 3_800_000  # samples per GPU (the reference's DataConfig.max_batch_length)
LIBRI_LIGHT_HOURS = 60_000
EXTRACT_SYSTEM = "spidr-hf extract"
REFERENCE_SYSTEM = "reference extract_features.py"
CHILD = "profiled-child"  # argv[1] of the child process that runs one profiled command
TRAIN_SYSTEMS = ("ours", "reference")
# Training variants, the recipe's bf16 first among the compiled ones: a run that reaches its budget skips the last
TRAIN_VARIANTS = (("float32", False), ("bfloat16", False), ("bfloat16", True), ("float32", True))
# Relative L2 distance (|a - b| / |b|) within which device results count as agreeing with the CPU's float32 ones:
# float32 on CUDA runs its convolutions in TF32 (PyTorch's default for cuDNN), bf16 keeps 8 bits of mantissa
TOLERANCES = {"float32": 1e-2, "bfloat16": 5e-2}
MIN_UNITS_AGREEMENT = {"float32": 0.95, "bfloat16": 0.8}  # random weights: frames near two centroids are many
# The issue's goals for the figures
BUSY_GOAL, SPEEDUP_GOAL, COMPILED_STEP_GOAL = 0.8, 10.0, 0.8


@dataclasses.dataclass(frozen=True)
class Settings:
    smoke: bool
    device: str
    size: str  # a key of bench.SIZES
    layer: int
    hours: float  # generated audio
    file_seconds: tuple[float, float]  # range of the generated files' durations
    num_clusters: int
    kmeans_frames: int
    train_seconds: float  # one utterance of the training batch
    max_batch_length: int  # samples per training batch
    repeats: int
    compile_options: dict[str, Any]  # torch.compile's arguments for the compiled training step
    agreement_files: int
    min_free_gib: float  # GPU memory free at the start


FULL = Settings(
    smoke=False,
    device="cuda",
    size="base",
    layer=6,
    hours=2.0,
    file_seconds=(2.0, 20.0),
    num_clusters=256,
    kmeans_frames=20_000,
    train_seconds=15.0,
    max_batch_length=PAPER_MAX_BATCH_LENGTH,
    repeats=5,
    compile_options={"dynamic": True},  # bench.COMPILE_OPTIONS: as the reference's training compiles
    agreement_files=4,
    min_free_gib=40,
)
# The smallest model with every part, 12 s of audio, and compilation that captures the same graphs in seconds (the eager
# backend: no Inductor code generation; static shapes: no symbolic shapes), so that the CPU run takes a minute
SMOKE = dataclasses.replace(
    FULL,
    smoke=True,
    device="cpu",
    size="micro",
    layer=2,
    hours=12 / 3600,
    file_seconds=(1.0, 3.0),
    num_clusters=8,
    kmeans_frames=100,
    train_seconds=1.0,
    max_batch_length=2 * SAMPLING_RATE,
    repeats=1,
    compile_options={"backend": "eager", "dynamic": False},
    agreement_files=3,
    min_free_gib=0,
)


# ---- checks before anything else ----
def preflight(settings: Settings, args: argparse.Namespace) -> None:
    """Whatever the run needs, checked first; the first that fails ends the run in one line."""

    def fail(message: str) -> None:
        raise SystemExit(f"gpu_suite: {message}")

    for module, why in (
        ("torch", "PyTorch"),
        ("numpy", "numpy"),
        ("scipy", "generating audio"),
        ("sklearn", "k-means"),
    ):
        if importlib.util.find_spec(module) is None:
            fail(f"{module} is not importable ({why})")
    import torch

    if not settings.smoke:
        if not torch.cuda.is_available():
            fail(f"no CUDA GPU visible to torch {torch.__version__} (--smoke runs the same code on the CPU)")
        free, total = torch.cuda.mem_get_info()
        if free < settings.min_free_gib * 2**30:
            fail(f"{free / 2**30:.1f} GiB of {total / 2**30:.1f} GiB GPU memory free, {settings.min_free_gib:g} needed")
    try:
        from importlib.metadata import version

        import spidr.models  # noqa: F401

        found = version("spidr")
    except Exception as error:  # any failure to import it is the same answer
        fail(
            f"the reference spidr=={REFERENCE_VERSION} is not importable ({type(error).__name__}: {error}): carry its "
            "wheel (benchmarks/gpu_suite_prepare.sh)"
        )
    if found != REFERENCE_VERSION:
        fail(f"the reference is spidr=={found}, not {REFERENCE_VERSION}")
    try:
        import spidr_hf  # noqa: F401
        import spidr_hf_cli  # noqa: F401
    except Exception as error:
        fail(f"spidr_hf is not importable ({type(error).__name__}: {error}): run with PYTHONPATH=src")
    if args.audio is not None:
        from spidr_hf.data.audio import audio_files

        if not args.audio.is_dir() or not audio_files(args.audio):
            fail(f"--audio {args.audio} is not a folder of audio files")
    hours = args.hours if args.hours is not None else settings.hours
    # wav (115 MB an hour), the features of three runs (550 MB an hour each at 768 dimensions) and room to spare
    needed = 2 * hours * (0.115 + 3 * 0.55) * 1e9
    free_disk = shutil.disk_usage(args.workdir or tempfile.gettempdir()).free
    if free_disk < needed:
        fail(f"{free_disk / 1e9:.1f} GB free in {args.workdir or tempfile.gettempdir()}, {needed / 1e9:.1f} needed")


# ---- audio ----
def speech_like(seconds: float, seed: int) -> "np.ndarray":  # noqa: F821
    """
    Deterministic speech-like 16 kHz audio (16-bit samples): syllable-long segments of voiced sound (a sawtooth at a
    gliding pitch through two formant resonators), fricative noise and near-silence, each under a Hann envelope. Not
    speech, but with speech's spectral and temporal structure, and generated anywhere with numpy and scipy: the GPU
    machines have neither flite nor network.
    """
    import numpy as np
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    samples = round(seconds * SAMPLING_RATE)
    lengths = np.round(rng.uniform(0.06, 0.25, size=int(seconds / 0.06) + 2) * SAMPLING_RATE).astype(int)
    bounds = np.minimum(np.concatenate([[0], np.cumsum(lengths)]), samples)
    bounds = bounds[: np.searchsorted(bounds, samples) + 1]
    kinds = rng.choice(3, size=len(bounds) - 1, p=[0.6, 0.25, 0.15])  # voiced, fricative, pause
    pitch = np.interp(
        np.arange(samples), bounds, rng.uniform(90, 220) * np.exp(0.12 * rng.standard_normal(len(bounds)))
    )
    sawtooth = 2 * (np.cumsum(pitch / SAMPLING_RATE) % 1.0) - 1
    noise = rng.standard_normal(samples)
    audio = np.zeros(samples)
    for kind, start, end in zip(kinds, bounds[:-1], bounds[1:], strict=True):
        if end <= start:
            continue
        if kind == 0:
            segment = sawtooth[start:end]
            for low, high, bandwidth in ((300, 900, 90), (900, 2500, 120)):
                radius = np.exp(-np.pi * bandwidth / SAMPLING_RATE)
                angle = 2 * np.pi * rng.uniform(low, high) / SAMPLING_RATE
                segment = lfilter([1 - radius], [1, -2 * radius * np.cos(angle), radius**2], segment)
        elif kind == 1:
            segment = np.diff(noise[start:end], prepend=0.0) * 0.3
        else:
            segment = noise[start:end] * 0.003
        audio[start:end] = segment * np.hanning(end - start) * rng.uniform(0.3, 1.0)
    return np.round(audio / (np.abs(audio).max() + 1e-9) * 0.9 * 32767).astype("<i2")


def write_wav(path: Path, samples: "np.ndarray") -> None:  # noqa: F821
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLING_RATE)
        writer.writeframes(samples.tobytes())


def generate_audio(folder: Path, hours: float, file_seconds: tuple[float, float]) -> None:
    """Files of `speech_like` audio, of durations drawn in `file_seconds`, until they add up to `hours`."""
    import numpy as np

    folder.mkdir(parents=True)
    durations = np.random.default_rng(0).uniform(*file_seconds, size=int(hours * 3600 / file_seconds[0]) + 1)
    total = 0.0
    for index, seconds in enumerate(durations):
        write_wav(folder / f"{index:05d}.wav", speech_like(float(seconds), seed=index + 1))
        total += seconds
        if total >= hours * 3600:
            break


def flat_inputs(source: Path, folder: Path) -> None:
    """The audio files of `source` under flat names (symbolic links), so that every system names outputs alike."""
    from spidr_hf.data.audio import audio_files

    folder.mkdir(parents=True)
    for index, path in enumerate(audio_files(source)):
        (folder / f"{index:05d}{path.suffix}").symlink_to(path.resolve())


# ---- the profiled child process ----
def device_activity(profiler, cuda: bool) -> dict[str, Any]:
    """
    Seconds the device was busy (its events merged where they overlap: CUDA kernels, copies and fills; on the CPU,
    operators), the span from the first event's start to the last one's end, and seconds by activity type.
    """
    from torch.autograd import DeviceType

    device_type = DeviceType.CUDA if cuda else DeviceType.CPU
    # Annotations (record_function ranges, on the host or the device) and host waits: not the device's work
    ignored = ("user_annotation", "gpu_user_annotation", "cuda_sync", "cuda_profiler_range")
    intervals, by_type = [], {}
    for event in profiler.profiler.kineto_results.events():
        if event.device_type() != device_type or event.activity_type() in ignored or event.name() == "Context Sync":
            continue
        start, end = event.start_ns(), event.start_ns() + event.duration_ns()
        intervals.append((start, end))
        by_type[event.activity_type()] = by_type.get(event.activity_type(), 0.0) + event.duration_ns() / 1e9
    busy, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            busy += end - start
            reach = end
        elif end > reach:
            busy += end - reach
            reach = end
    span = (max(end for _, end in intervals) - min(start for start, _ in intervals)) if intervals else 0
    return {"busy_s": busy / 1e9, "span_s": span / 1e9, "events": len(intervals), "seconds_by_type": by_type}


def child_main(result_path: str, device: str, kind: str, arguments: list[str]) -> None:
    """
    Run one command in this process under torch.profiler (CUDA activity only on a GPU: kernel tracing costs little) and
    write its wall time (from this function's first line, imports included, to the command's end; the profiler's own
    trace processing after it left out), device activity and peak memory to `result_path`.
    """
    started = time.perf_counter()
    import resource

    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    if kind == "extract":
        from spidr_hf_cli import main as spidr_hf

        def work() -> None:
            if spidr_hf(["extract", *arguments]):
                raise SystemExit("spidr-hf extract failed")
    else:
        import extract_bench

        checkpoint, output, layer, *files = arguments

        def work() -> None:
            extract_bench.reference_script(checkpoint, files, Path(output), int(layer), device)

    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as profiler:
        work()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # this process's resident set (KiB on Linux); the decoding workers are not counted
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"wall_s": wall, "peak_memory_mib": peak, "activity": device_activity(profiler, cuda)}
    Path(result_path).write_text(json.dumps(result))


def run_profiled(
    kind: str, arguments: list[str], device: str, scratch: Path, env: dict[str, str]
) -> tuple[dict[str, Any] | None, str]:
    """`child_main` in a new process: (its result, or None if it failed; the last lines of its output)."""
    result_path = scratch / f"result-{time.monotonic_ns()}.json"
    command = [sys.executable, str(Path(__file__).resolve()), CHILD, str(result_path), device, kind, *arguments]
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    output = "\n".join((completed.stdout + completed.stderr).strip().splitlines()[-3:])
    if completed.returncode != 0 or not result_path.is_file():
        return None, output
    return json.loads(result_path.read_text()), output


# ---- the report ----
class Report:
    """The JSON record, rewritten whole after every measurement."""

    def __init__(self, path: Path, started: float, budget_s: float):
        self.path, self.started, self.budget_s = path, started, budget_s
        self.data: dict[str, Any] = {"failures": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def within_budget(self) -> bool:
        return self.elapsed() < self.budget_s

    def fail(self, what: str, error: str) -> None:
        self.data["failures"].append({"what": what, "error": error})
        print(f"FAILED {what}: {error}", flush=True)

    def save(self) -> None:
        self.data["elapsed_s"] = self.elapsed()
        staging = self.path.with_name(self.path.name + ".partial")
        staging.write_text(json.dumps(self.data, indent=2) + "\n")
        staging.replace(self.path)


def environment(settings: Settings) -> dict[str, Any]:
    from importlib.metadata import version

    import bench
    import torch

    cuda = settings.device == "cuda"
    try:  # the device machines get a copy of the working tree, maybe without git or .git
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCHMARKS, capture_output=True, text=True)
    except OSError:
        commit = None
    return {
        "device": torch.cuda.get_device_name() if cuda else bench.cpu_name(),
        "device_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": version("transformers"),
        "reference": version("spidr"),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "spidr_hf_commit": commit.stdout.strip() if commit is not None and commit.returncode == 0 else None,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


# ---- extract ----
@dataclasses.dataclass
class Corpus:
    folder: Path  # flat names: <index>.wav
    files: list[Path]
    seconds: dict[str, float]  # by name (file stem)
    source: str


def prepare_corpus(args: argparse.Namespace, settings: Settings, scratch: Path) -> Corpus:
    from spidr_hf.data.audio import audio_duration, audio_files

    folder = scratch / "audio"
    if args.audio is None:
        hours = settings.hours if args.hours is None else args.hours
        generate_audio(folder, hours, settings.file_seconds)
        source = f"generated (speech_like), {settings.file_seconds[0]:g}-{settings.file_seconds[1]:g} s files"
    else:
        flat_inputs(args.audio, folder)
        source = str(args.audio)
    files = audio_files(folder)
    return Corpus(folder, files, {path.stem: audio_duration(str(path)) for path in files}, source)


def model_with_kmeans(settings: Settings, scratch: Path, corpus: Corpus) -> tuple[str, str]:
    """A random model drawn by the reference and converted (extract_bench), with k-means centroids fitted by
    `spidr-hf kmeans` on the corpus: (the reference checkpoint, our model folder)."""
    import bench
    import extract_bench

    from spidr_hf_cli import main as spidr_hf

    folder = scratch / "models"
    folder.mkdir()
    checkpoint, model = extract_bench.random_reference_model(folder, bench.SIZES[settings.size].reference_overrides)
    command = ["kmeans", model, "--audio", str(corpus.folder), "--layer", str(settings.layer)]
    command += ["--num-clusters", str(settings.num_clusters), "--kmeans-frames", str(settings.kmeans_frames)]
    if spidr_hf([*command, "--device", settings.device]):
        raise SystemExit("gpu_suite: spidr-hf kmeans failed")
    return checkpoint, model


def extract_row(
    system: str, dtype: str, names: list[str], corpus: Corpus, result: dict | None, output: str, settings: Settings
) -> dict[str, Any]:
    audio_s = sum(corpus.seconds[name] for name in names)
    row: dict[str, Any] = {"system": system, "dtype": dtype, "files": len(names), "audio_s": audio_s}
    if result is None:
        return {**row, "status": "failed", "error": output}
    wall, activity = result["wall_s"], result["activity"]
    return {
        **row,
        "status": "ok",
        "wall_s": wall,
        "audio_s_per_s": audio_s / wall,
        "audio_hours_per_gpu_hour": audio_s / wall,  # hours of audio per hour of the one GPU
        # Libri-Light's 60k hours on one node of 8 such GPUs, each extracting its shard (--shard K/8) at this rate
        "libri_light_60k_h_on_8_gpus_hours": LIBRI_LIGHT_HOURS / (8 * audio_s / wall),
        "gpu_busy_command": activity["busy_s"] / wall,
        "gpu_busy_active_span": activity["busy_s"] / activity["span_s"] if activity["span_s"] else None,
        "device_busy_s": activity["busy_s"],
        "device_seconds_by_type": activity["seconds_by_type"],
        "peak_memory_mib": result["peak_memory_mib"],
        "peak_memory_of": "torch.cuda.max_memory_allocated" if settings.device == "cuda" else "main process RSS",
        "last_output": output,
    }


def extract_section(
    report: Report, settings: Settings, args: argparse.Namespace, scratch: Path, corpus: Corpus, models: tuple[str, str]
) -> dict[str, Path]:
    """The extract rows; returns the output folder of each dtype that ran."""
    import extract_bench

    checkpoint, model = models
    env = child_environment()
    names = [path.stem for path in corpus.files]
    section = report.data["extract"] = {
        "audio": {"files": len(names), "hours": sum(corpus.seconds.values()) / 3600, "source": corpus.source},
        "layer": settings.layer,
        "units": f"k-means, {settings.num_clusters} clusters (spidr-hf kmeans, {settings.kmeans_frames} frames)",
        "model": f"{settings.size}, random weights drawn by the reference",
        "rows": [],
    }
    outputs: dict[str, Path] = {}
    for dtype in ("float32", "bfloat16"):
        if not report.within_budget():
            section["rows"].append({"system": EXTRACT_SYSTEM, "dtype": dtype, "status": "skipped: time budget"})
            continue
        output = scratch / f"extract-{dtype}"
        arguments = [model, str(corpus.folder), str(output), "--layer", str(settings.layer), "--features"]
        arguments += ["--units", "kmeans", "--device", settings.device, "--dtype", dtype]
        result, text = run_profiled("extract", arguments, settings.device, scratch, env)
        row = extract_row(EXTRACT_SYSTEM, dtype, names, corpus, result, text, settings)
        section["rows"].append(row)
        if result is None:
            report.fail(f"{EXTRACT_SYSTEM} {dtype}", text)
        else:
            outputs[dtype] = output
            print(
                f"extract {dtype}: {row['wall_s']:.1f} s, {row['audio_hours_per_gpu_hour']:.0f} audio-h/GPU-h, busy "
                f"{row['gpu_busy_command']:.0%} of the command, {row['gpu_busy_active_span']:.0%} once active",
                flush=True,
            )
        report.save()
    subset = names[: max(1, round(len(names) * args.reference_fraction))]
    section["reference_files"] = "all" if len(subset) == len(names) else f"the first {len(subset)} of {len(names)}"
    if not report.within_budget():
        section["rows"].append({"system": REFERENCE_SYSTEM, "dtype": "float32", "status": "skipped: time budget"})
        report.save()
        return outputs
    reference_out = scratch / "reference"
    files = [str(corpus.folder / f"{name}.wav") for name in subset]
    result, text = run_profiled(
        "reference", [checkpoint, str(reference_out), str(settings.layer), *files], settings.device, scratch, env
    )
    reference = extract_row(REFERENCE_SYSTEM, "float32", subset, corpus, result, text, settings)
    section["rows"].append(reference)
    if result is None:
        report.fail(REFERENCE_SYSTEM, text)
    for row in section["rows"]:
        if row["system"] == EXTRACT_SYSTEM and row["status"] == "ok" and reference["status"] == "ok":
            row["speedup_over_reference"] = row["audio_s_per_s"] / reference["audio_s_per_s"]
            try:
                difference = extract_bench.compare_outputs(reference_out, outputs[row["dtype"]], subset)
            except SystemExit as error:  # different shapes
                difference, row["comparison_error"] = None, str(error)
            row["max_abs_diff_to_reference"] = difference
    report.save()
    return outputs


def child_environment() -> dict[str, str]:
    """The children import the same spidr_hf as this process, and print no progress bars."""
    source = str(Path(importlib.util.find_spec("spidr_hf").origin).parents[1])
    paths = [source, str(BENCHMARKS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}


# ---- agreement ----
def read_units(path: Path) -> dict[str, "np.ndarray"]:  # noqa: F821
    """The units of a txt units file (`id<TAB>u1 u2 ...` lines)."""
    import numpy as np

    units = {}
    for line in path.read_text().splitlines():
        name, _, values = line.partition("\t")
        units[name] = np.array(values.split(), dtype=np.int64)
    return units


def distances(found: list, expected: list) -> dict[str, float]:
    """Max |difference| and relative L2 distance of float tensors, all items together."""
    import torch

    found, expected = (
        torch.cat([item.float().flatten() for item in found]),
        torch.cat([e.float().flatten() for e in expected]),
    )
    return {
        "max_abs_diff": (found - expected).abs().max().item(),
        "relative_l2": ((found - expected).norm() / expected.norm()).item(),
    }


def units_agreement(found: list, expected: list) -> float:
    import numpy as np

    found, expected = np.concatenate(found), np.concatenate(expected)
    return float((found == expected).mean()) if found.shape == expected.shape else 0.0


def agreement_files(corpus: Corpus, count: int) -> list[str]:
    """`count` files spread over the range of durations (shortest to longest)."""
    ordered = sorted(corpus.seconds, key=lambda name: (corpus.seconds[name], name))
    step = (len(ordered) - 1) / max(1, count - 1)
    return sorted({ordered[round(index * step)] for index in range(min(count, len(ordered)))})


def agreement_section(report: Report, settings: Settings, corpus: Corpus, model: str, outputs: dict[str, Path]) -> None:
    import torch

    from spidr_hf.data.audio import decode
    from spidr_hf.model.loading import load

    section = report.data["agreement"] = {
        "tolerances_relative_l2": TOLERANCES,
        "min_units_agreement": MIN_UNITS_AGREEMENT,
    }
    layer, device = settings.layer, settings.device
    names = agreement_files(corpus, settings.agreement_files)
    section["files"] = names
    loaded = load(model, "student")  # float32, CPU
    extractor = loaded.feature_extractor
    audio = {name: decode(corpus.folder / f"{name}.wav") for name in names}

    def represent(network, items: list, dtype: torch.dtype = torch.float32):
        inputs = extractor(items, sampling_rate=SAMPLING_RATE, return_tensors="pt")
        with torch.inference_mode():
            output = network.represent(
                inputs["input_values"].to(network.device, dtype),
                inputs["attention_mask"].to(network.device),
                layers=[layer],
                units="kmeans",
            )
        return [item.float().cpu() for item in output.features[layer]], [
            item.cpu().numpy() for item in output.units[layer]
        ]

    cpu = {name: represent(loaded.model.eval(), [audio[name]]) for name in names}
    cpu_features = [cpu[name][0][0] for name in names]
    cpu_units = [cpu[name][1][0] for name in names]
    # What the extract runs on the device wrote, against the CPU's float32
    for dtype, output in outputs.items():
        features = [torch.load(output / f"{name}.pt") for name in names]
        written = read_units(output / "units.txt")
        check = distances(features, cpu_features)
        check["units_agreement"] = units_agreement([written[name] for name in names], cpu_units)
        check["ok"] = (
            check["relative_l2"] <= TOLERANCES[dtype] and check["units_agreement"] >= MIN_UNITS_AGREEMENT[dtype]
        )
        section[f"extract_{dtype}_vs_cpu_float32"] = check
    if {"float32", "bfloat16"} <= outputs.keys():
        full, half = (read_units(outputs[dtype] / "units.txt") for dtype in ("float32", "bfloat16"))
        agreement = units_agreement([half[name] for name in sorted(full)], [full[name] for name in sorted(full)])
        section["extract_units_bfloat16_vs_float32"] = {
            "files": len(full),
            "units_agreement": agreement,
            "ok": agreement >= MIN_UNITS_AGREEMENT["bfloat16"],
        }
    report.save()
    # A padded batch against its items alone, on the device, in float32
    network = loaded.model.to(device)
    batch_features, batch_units = represent(network, [audio[name] for name in names])
    alone = [represent(network, [audio[name]]) for name in names]
    check = distances(batch_features, [features[0] for features, _ in alone])
    check["units_agreement"] = units_agreement(batch_units, [units[0] for _, units in alone])
    check["ok"] = check["relative_l2"] <= 1e-4 and check["units_agreement"] >= 0.99
    section["padded_batch_vs_items_alone"] = {"items": len(names), **check}
    del network, loaded
    section["loss"] = loss_agreement(settings)
    report.save()


def loss_agreement(settings: Settings) -> dict[str, Any]:
    """
    The pretraining loss of one batch (eval mode: no dropout, no codebook update) on the device in float32 and under
    bf16 autocast, against the CPU in float32: bench.py's model (ours, converted from the reference's random weights).
    """
    import bench
    import torch

    cpu = torch.device("cpu")
    model = bench.build_models(bench.SIZES[settings.size], cpu, with_hubert=False).ours.eval()
    audio = bench.random_audio(2, min(4.0, settings.train_seconds * 4), cpu)
    mask = bench.training_mask(model, audio)
    with torch.no_grad():
        expected = model(audio, mask_time_indices=mask).loss.item()
        model, audio, mask = model.to(settings.device), audio.to(settings.device), mask.to(settings.device)
        found = {"float32": model(audio, mask_time_indices=mask).loss.item()}
        with torch.autocast(torch.device(settings.device).type, torch.bfloat16):
            found["bfloat16"] = model(audio, mask_time_indices=mask).loss.item()
    result: dict[str, Any] = {"cpu_float32": expected}
    for dtype, loss in found.items():
        difference = abs(loss - expected)
        result[dtype] = {"loss": loss, "abs_diff": difference, "ok": difference <= TOLERANCES[dtype] * abs(expected)}
    return result


# ---- train ----
def train_section(report: Report, settings: Settings, args: argparse.Namespace) -> None:
    import bench
    import torch

    device = torch.device(settings.device)
    bench.configure_inductor(device)
    utterance = round(settings.train_seconds * SAMPLING_RATE)
    paper_batch = max(1, settings.max_batch_length // utterance)
    peaks = {
        "bfloat16": bench.gpu_peak_tflops(device, args.peak_tflops),
        "float32": bench.gpu_peak_tflops(device, args.peak_fp32_tflops, torch.float32),
    }
    section = report.data["train"] = {
        "model": f"{settings.size} (bench.SIZES), random weights",
        "utterance_seconds": settings.train_seconds,
        "max_batch_length": settings.max_batch_length,
        "paper_batch": paper_batch,
        "peak_tflops": peaks,
        "compile": f"torch.compile({', '.join(f'{key}={value!r}' for key, value in settings.compile_options.items())})",
        "rows": [],
    }
    meter = bench.MemoryMeter(device)
    flops: dict[int, int] = {}  # by batch size: the step's FLOPs, counted once on an eager step
    for dtype_name, compiled in TRAIN_VARIANTS:
        mode = "compiled" if compiled else "eager"
        if not report.within_budget():
            section["rows"] += [
                {"system": system, "dtype": dtype_name, "mode": mode, "status": "skipped: time budget"}
                for system in TRAIN_SYSTEMS
            ]
            report.save()
            continue
        try:
            rows = measure_train_step(
                settings, device, getattr(torch, dtype_name), compiled, paper_batch, meter, flops, peaks
            )
        except Exception as error:  # a compiler failure, say: report it and go on
            message = f"{type(error).__name__}: {str(error).strip()[:300]}"
            report.fail(f"train {dtype_name} {mode}", message)
            rows = [
                {"system": s, "dtype": dtype_name, "mode": mode, "status": "failed", "error": message}
                for s in TRAIN_SYSTEMS
            ]
        if compiled:
            torch._dynamo.reset()  # its caches would keep the compiled models (and their memory) alive
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        section["rows"] += rows
        report.save()


def measure_train_step(
    settings: Settings,
    device,
    dtype,
    compiled: bool,
    batch: int,
    meter,
    flops: dict[int, int],
    peaks: dict[str, float | None],
) -> list[dict[str, Any]]:
    """Both systems' step at `batch` utterances, or the largest batch that fits (3/4 at a time)."""
    import bench
    import torch

    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype_name = bench.dtype_name(dtype)
    while True:
        plan = bench.Plan(settings.size, settings.train_seconds, (1,), (settings.size,), batch, settings.train_seconds)
        workload = None
        try:
            workload = bench.train_workload(settings.size, plan, device, dtype, compiled, settings.compile_options)
            first = {name: timed_call(run, synchronize) for name, run in workload.runs.items()}
            break
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
        # Freed outside the `except` block, whose traceback would keep the failed step's tensors alive
        workload = None
        gc.collect()
        torch.cuda.empty_cache()
        batch = max(1, batch * 3 // 4)
    if compiled:  # one more call each before timing: the first ones compiled the forward and the backward
        for run in workload.runs.values():
            run()
    times = bench.time_interleaved(workload.runs, settings.repeats, 0, synchronize)
    if batch not in flops:
        counted = workload if not compiled else bench.train_workload(settings.size, plan, device, dtype, False)
        flops[batch] = bench.count_flops(counted.flop_calls["ours"])
        del counted
    memory = {name: meter.measure(run) for name, run in workload.runs.items()}
    audio_seconds = batch * settings.train_seconds
    rows = []
    for name in TRAIN_SYSTEMS:
        step = statistics.median(times[name])
        achieved = flops[batch] / step / 1e12
        rows.append(
            {
                "system": name,
                "dtype": dtype_name,
                "mode": "compiled" if compiled else "eager",
                "status": "ok",
                "batch": batch,
                "samples_per_batch": batch * round(settings.train_seconds * SAMPLING_RATE),
                "fits_max_batch_length": batch
                == max(1, settings.max_batch_length // round(settings.train_seconds * SAMPLING_RATE)),
                "step_s": step,
                "step_times_s": times[name],
                "audio_s_per_s": audio_seconds / step,
                "tflop_per_step": flops[batch] / 1e12,
                "achieved_tflops": achieved,
                "mfu": achieved / peaks["bfloat16"] if peaks["bfloat16"] else None,
                "mfu_own_dtype": achieved / peaks[dtype_name] if peaks[dtype_name] else None,
                "peak_memory_mib": memory[name]["peak_mib"],
                "step_memory_mib": memory[name]["memory_mib"],
                "first_call_s": first[name],
                "compile_s": first[name] - step if compiled else None,
            }
        )
    rows[0]["time_vs_reference"] = rows[0]["step_s"] / rows[1]["step_s"]
    print(
        f"train {dtype_name} {rows[0]['mode']} x{batch}: ours {rows[0]['step_s'] * 1e3:.0f} ms, reference "
        f"{rows[1]['step_s'] * 1e3:.0f} ms",
        flush=True,
    )
    return rows


def timed_call(run: Callable[[], object], synchronize: Callable[[], None]) -> float:
    synchronize()
    start = time.perf_counter()
    run()
    synchronize()
    return time.perf_counter() - start


# ---- goals and the table ----
def goals(data: dict[str, Any]) -> dict[str, Any]:
    """Each goal of the issue: the figure it is judged on, and whether it is reached (None: not measured)."""
    extract = [row for row in data.get("extract", {}).get("rows", []) if row.get("status") == "ok"]
    ours = [row for row in extract if row["system"] == EXTRACT_SYSTEM]
    busy = max((row["gpu_busy_active_span"] or 0 for row in ours), default=None)
    speedup = max((row.get("speedup_over_reference", 0) for row in ours), default=None)
    train = [row for row in data.get("train", {}).get("rows", []) if row.get("status") == "ok"]
    compiled = next(
        (row for row in train if row["system"] == "ours" and row["dtype"] == "bfloat16" and row["mode"] == "compiled"),
        None,
    )
    ratio = compiled["time_vs_reference"] if compiled else None
    every_row = data.get("train", {}).get("rows", [])
    figures = {
        "extract GPU busy >= 80 %": (busy, busy is not None and busy >= BUSY_GOAL),
        "extract >= 10x the reference's loop": (speedup, speedup is not None and speedup >= SPEEDUP_GOAL),
        "compiled bf16 step ours/reference <= 0.8": (ratio, ratio is not None and ratio <= COMPILED_STEP_GOAL),
        "MFU printed for every row": (None, bool(every_row) and all(row.get("mfu") is not None for row in every_row)),
    }
    return {goal: {"figure": figure, "reached": reached} for goal, (figure, reached) in figures.items()}


def number(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)


def print_table(data: dict[str, Any]) -> None:
    environment = data["environment"]
    print(f"\nGPU suite on {environment['device']} (torch {environment['torch']}, CUDA {environment['cuda']})")
    extract = data.get("extract")
    if extract:
        audio = extract["audio"]
        print(
            f"\nextract: {audio['hours']:.2f} h in {audio['files']} files ({audio['source']}), layer "
            f"{extract['layer']} features + {extract['units']}; the reference on {extract.get('reference_files')} files"
        )
        print(
            f"{'system':<30} {'dtype':<9} {'wall s':>7} {'audio-h/GPU-h':>14} {'busy cmd':>9} {'busy active':>12} "
            f"{'peak MiB':>9} {'x ref':>6} {'max|diff| ref':>14} {'60k h, 8 GPUs':>14}"
        )
        for row in extract["rows"]:
            if row["status"] != "ok":
                print(f"{row['system']:<30} {row['dtype']:<9} {row['status']}")
                continue
            print(
                f"{row['system']:<30} {row['dtype']:<9} {row['wall_s']:7.1f} {row['audio_hours_per_gpu_hour']:14.0f} "
                f"{row['gpu_busy_command']:9.0%} {number(row['gpu_busy_active_span'], '{:.0%}'):>12} "
                f"{row['peak_memory_mib']:9.0f} {number(row.get('speedup_over_reference'), '{:.2f}'):>6} "
                f"{number(row.get('max_abs_diff_to_reference'), '{:.2g}'):>14} "
                f"{row['libri_light_60k_h_on_8_gpus_hours']:12.1f} h"
            )
    agreement = data.get("agreement")
    if agreement:
        print("\nagreement (relative L2 / max |diff| / units equal):")
        for name, check in agreement.items():
            if isinstance(check, dict) and "ok" in check:
                figures = [
                    number(check.get(key), template)
                    for key, template in (
                        ("relative_l2", "{:.2e}"),
                        ("max_abs_diff", "{:.2e}"),
                        ("units_agreement", "{:.2%}"),
                    )
                ]
                print(f"  {name:<36} {' / '.join(figures)}  {'ok' if check['ok'] else 'OUT OF TOLERANCE'}")
        for dtype in ("float32", "bfloat16"):
            loss = agreement.get("loss", {}).get(dtype)
            if loss:
                print(
                    f"  loss {dtype:<31} {loss['loss']:.6f} vs CPU {agreement['loss']['cpu_float32']:.6f}: "
                    f"|diff| {loss['abs_diff']:.2e}  {'ok' if loss['ok'] else 'OUT OF TOLERANCE'}"
                )
    train = data.get("train")
    if train:
        print(
            f"\ntrain step: {train['model']}, {train['paper_batch']} x {train['utterance_seconds']:g} s "
            f"(max_batch_length {train['max_batch_length']:,} samples), {train['compile']}"
        )
        print(
            f"{'system':<10} {'dtype':<9} {'mode':<9} {'batch':>5} {'step ms':>8} {'audio-s/s':>10} {'MFU':>6} "
            f"{'MFU dtype':>9} {'peak MiB':>9} {'compile s':>9} {'ours/ref':>8}"
        )
        for row in train["rows"]:
            if row["status"] != "ok":
                print(f"{row['system']:<10} {row['dtype']:<9} {row['mode']:<9} {row['status']}")
                continue
            print(
                f"{row['system']:<10} {row['dtype']:<9} {row['mode']:<9} {row['batch']:5d} {row['step_s'] * 1e3:8.1f} "
                f"{row['audio_s_per_s']:10.1f} {number(row['mfu'], '{:.1%}'):>6} "
                f"{number(row['mfu_own_dtype'], '{:.1%}'):>9} {row['peak_memory_mib']:9.0f} "
                f"{number(row['compile_s'], '{:.1f}'):>9} {number(row.get('time_vs_reference'), '{:.2f}'):>8}"
            )
        print("(MFU: over the card's dense bf16 peak; MFU dtype: over the peak of the row's dtype)")
    print("\ngoals:")
    for goal, verdict in data["goals"].items():
        reached = "reached" if verdict["reached"] else "NOT reached"
        print(f"  {goal}: {number(verdict['figure'], '{:.3g}')} ({reached})")
    print(f"\n{data['elapsed_s']:.0f} s in all; {len(data['failures'])} failure(s)", flush=True)


# ---- driver ----
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU: a 2-layer model, 12 s of audio")
    parser.add_argument("--output", type=Path, default=Path("gpu_suite.json"), help="the JSON record")
    parser.add_argument("--audio", type=Path, help="a folder of audio to extract (default: generated audio)")
    parser.add_argument("--hours", type=float, help="hours of generated audio (default: 2; smoke: 12 s)")
    parser.add_argument(
        "--reference-fraction", type=float, default=1.0, help="the share of the files the reference's loop runs on"
    )
    parser.add_argument("--sections", default="extract,agreement,train", help="comma-separated, in this order")
    parser.add_argument("--budget-s", type=float, default=390.0, help="no measurement starts after this many seconds")
    parser.add_argument("--workdir", type=Path, help="where audio and features go (default: the temporary folder)")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, if not in bench.GPU_PEAK_TFLOPS")
    parser.add_argument("--peak-fp32-tflops", type=float, help="the card's fp32 peak, likewise")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    if not sections <= {"extract", "agreement", "train"}:
        parser.error(f"--sections: choose among extract, agreement, train, got {args.sections}")
    if not 0 < args.reference_fraction <= 1:
        parser.error("--reference-fraction must be in (0, 1]")
    args.sections = sections
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    preflight(settings, args)
    sys.path.insert(0, str(BENCHMARKS))  # bench.py and extract_bench.py, whether run as a script or imported
    report = Report(args.output, started, args.budget_s)
    report.data.update(
        {"smoke": args.smoke, "environment": environment(settings), "settings": dataclasses.asdict(settings)}
    )
    report.save()
    with tempfile.TemporaryDirectory(prefix="gpu-suite-", dir=args.workdir) as scratch:
        scratch = Path(scratch)
        outputs: dict[str, Path] = {}
        if args.sections & {"extract", "agreement"}:
            corpus = prepare_corpus(args, settings, scratch)
            checkpoint, model = model_with_kmeans(settings, scratch, corpus)
            print(
                f"{len(corpus.files)} files, {sum(corpus.seconds.values()) / 3600:.2f} h of audio; model and k-means "
                f"ready after {report.elapsed():.0f} s",
                flush=True,
            )
            if "extract" in args.sections:
                outputs = extract_section(report, settings, args, scratch, corpus, (checkpoint, model))
            if "agreement" in args.sections:
                try:
                    agreement_section(report, settings, corpus, model, outputs)
                except Exception as error:
                    report.fail("agreement", f"{type(error).__name__}: {error}")
        if "train" in args.sections:
            train_section(report, settings, args)
    report.data["goals"] = goals(report.data)
    report.save()
    print_table(report.data)
    print(f"Wrote {args.output}")
    return 1 if report.data["failures"] else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        result_path, device, kind, *arguments = sys.argv[2:]
        child_main(result_path, device, kind, arguments)
    else:
        sys.exit(main())
