"""
Speed and memory of spidr-hf against the reference implementation (`spidr==0.2.0`) and transformers' HubertModel.

    python benchmarks/bench.py [--repeats N] [--warmup N] [--output bench.json]
    python benchmarks/bench.py --quick      # tiny models and short audio: a smoke run for CI

Workloads, all with random weights (ours converted from the reference's, so that both compute the same function,
which the run checks), fp32 on CPU with as many threads as cores:
- inference: encoder forward on 10 s of audio at batch 1 and 4 under `torch.inference_mode`: our
  `SpidrModel(...).last_hidden_state`, the reference's student forward, `HubertModel(...).last_hidden_state` (SpidR
  base dimensions, "layer" conv norm, HuBERT's own positional convolution);
- units: codebook units of layer 6 at batch 1: our `get_units(layer=6)`, the argmax of the reference's `get_codebooks`;
- train_step: forward, backward, grad-norm clip at 10, fused AdamW and teacher EMA, as each training loop does it, for
  a small and the base config on 2 x 4 s (transformers has no HuBERT pretraining objective, so ours and the reference).
With CUDA, the inference and training workloads run again under bf16 autocast, eager and with `torch.compile`, with
audio-seconds per second and model FLOP utilisation (FLOPs counted by torch.utils.flop_counter on the eager call;
peak bf16 throughput from a table of GPUs, or --peak-tflops). On CPU, inference runs again with every model cast to
bf16 and fed bf16 audio ("bfloat16 cast" rows: how `--dtype bfloat16` and `dtype=torch.bfloat16` run ours).

Timing: every system lives in this one process and their calls are interleaved (A B C A B C ...), so that machine load
weighs on all of them alike; a system's time is the median over --repeats calls after --warmup calls, and ratios are
ratios of medians.

Memory: after timing, each call runs once more between two readings and the result is the memory the call needs on
top of what exists before it (weights, optimizer states, inputs). On CUDA: torch.cuda.max_memory_allocated after
resetting it, minus the memory allocated before. On CPU (Linux), torch has no allocator statistics and tracemalloc
does not see its buffers, so the process's resident set is read instead: the RSS high-water mark (VmHWM, reset through
/proc/self/clear_refs just before the call) minus the RSS just before it. For the RSS to track live tensors, glibc's
mmap threshold is pinned at 64 KiB before this phase (every larger buffer is mapped on allocation and unmapped when
freed, instead of being kept in malloc's heap) and free heap memory is trimmed before each reading.
"""

import argparse
import copy
import ctypes
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from spidr.config import SpidRConfig
from spidr.models import SpidR
from torch.nn.utils import clip_grad_norm_
from torch.utils.flop_counter import FlopCounterMode
from transformers import HubertConfig, HubertModel

from spidr_hf import SpidrConfig, SpidrForPreTraining, compute_span_mask
from spidr_hf.hub.convert import config_from_reference, convert_reference_state_dict
from spidr_hf.model.configuration_spidr import SAMPLING_RATE

MAX_GRAD_NORM = 10.0
TEACHER_STEP = 1000  # an optimizer step where the SpidR teacher EMA is active
SYSTEMS = ("ours", "reference", "hubert")
# Dense peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets, by the first name contained in the device's: bf16 on
# the tensor cores, and fp32 without them (what float32 matrix products run on under PyTorch's default precision; its
# cuDNN convolutions default to TF32, on tensor cores at half the bf16 rate). "H100" is the SXM card (its name reads
# "NVIDIA H100 80GB HBM3"), "H200" the SXM card ("NVIDIA H200").
GPU_PEAK_TFLOPS = (  # (name, bf16, fp32)
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.5, 60.0),
    ("H100", 989.4, 67.0),
    ("H200 NVL", 835.5, 60.0),
    ("H200", 989.4, 67.0),
    ("A100", 312.0, 19.5),
    ("L40S", 362.1, 91.6),
    ("L4", 121.0, 30.3),
)
# How training steps compile: dynamic shapes, as the reference's training compiles its model (batches vary in length)
COMPILE_OPTIONS: dict[str, Any] = {"dynamic": True}
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
PINNED_MMAP_THRESHOLD = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Size:
    """A model size, as reference config overrides, and the layer whose codebook units are extracted."""

    reference_overrides: dict[str, Any]
    units_layer: int


SIZES = {
    "base": Size({}, units_layer=6),
    "small": Size(
        {
            "extractor_conv_layer_config": [(256, 10, 5)] + [(256, 3, 2)] * 4 + [(256, 2, 2)] * 2,
            "encoder_embed_dim": 256,
            "encoder_num_layers": 4,
            "encoder_num_heads": 4,
            "encoder_ff_interm_features": 1024,
            "num_codebooks": 2,
        },
        units_layer=3,
    ),
    "tiny": Size(
        {
            "extractor_conv_layer_config": [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
            "encoder_embed_dim": 64,
            "encoder_num_layers": 4,
            "encoder_num_heads": 4,
            "encoder_ff_interm_features": 128,
            "encoder_pos_conv_groups": 4,
            "num_codebooks": 2,
            "codebook_size": 16,
        },
        units_layer=3,
    ),
    # benchmarks/gpu_suite.py --smoke: the smallest model with every part, so that compiling its step takes seconds
    "micro": Size(
        {
            "extractor_conv_layer_config": [(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2,
            "encoder_embed_dim": 32,
            "encoder_num_layers": 2,
            "encoder_num_heads": 2,
            "encoder_ff_interm_features": 64,
            "encoder_pos_conv_groups": 4,
            "num_codebooks": 1,
            "codebook_size": 16,
        },
        units_layer=2,
    ),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    inference_size: str
    inference_seconds: float
    inference_batches: tuple[int, ...]
    train_sizes: tuple[str, ...]
    train_batch: int
    train_seconds: float


FULL_PLAN = Plan("base", 10.0, (1, 4), ("small", "base"), 2, 4.0)
QUICK_PLAN = Plan("tiny", 1.0, (1, 4), ("tiny",), 2, 1.0)


@dataclasses.dataclass
class Workload:
    """One measured task: a callable per system doing the same work, plus what describes and checks it."""

    task: str  # "inference", "units" or "train_step"
    size: str
    batch: int
    seconds: float  # audio per utterance
    runs: dict[str, Callable[[], object]]
    dtype: str = "float32"
    compiled: bool = False
    cast: bool = False  # the models themselves in `dtype` (not autocast)
    checks: dict[str, float] = dataclasses.field(default_factory=dict)
    # For each system, the call whose FLOPs are counted as its model FLOPs (for MFU, bf16 workloads)
    flop_calls: dict[str, Callable[[], object]] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        suffix = "" if self.dtype == "float32" else f" {self.dtype}{' cast' * self.cast}{' compiled' * self.compiled}"
        return f"{self.task} {self.size} {self.batch}x{self.seconds:g}s{suffix}"


@dataclasses.dataclass
class Models:
    reference: SpidR
    ours: SpidrForPreTraining
    hubert: HubertModel | None


def build_models(size: Size, device: torch.device, with_hubert: bool) -> Models:
    """The reference model, ours with the same weights, and (optionally) a HubertModel of the same dimensions."""
    torch.manual_seed(0)
    reference_config = SpidRConfig(**size.reference_overrides)
    reference = SpidR(reference_config)
    ours = SpidrForPreTraining(config_from_reference({"model": dataclasses.asdict(reference_config)}, "spidr"))
    ours.load_state_dict(convert_reference_state_dict(reference.state_dict()))
    hubert = HubertModel(hubert_config(ours.config)) if with_hubert else None
    return Models(
        reference.to(device).eval(), ours.to(device).eval(), None if hubert is None else hubert.to(device).eval()
    )


def hubert_config(config: SpidrConfig) -> HubertConfig:
    """HuBERT with the SpidR model's dimensions and conv feature encoder; HuBERT keeps its positional convolution."""
    return HubertConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        conv_dim=config.conv_dim,
        conv_kernel=config.conv_kernel,
        conv_stride=config.conv_stride,
        conv_bias=config.conv_bias,
        feat_extract_norm=config.feat_extract_norm,
        num_conv_pos_embedding_groups=config.num_conv_pos_embedding_groups,
        do_stable_layer_norm=config.do_stable_layer_norm,
    )


def random_audio(batch: int, seconds: float, device: torch.device) -> torch.Tensor:
    """Standardized-like audio: what the feature extractor hands the models."""
    generator = torch.Generator().manual_seed(batch)
    return torch.randn(batch, round(seconds * SAMPLING_RATE), generator=generator).to(device)


def without_grad(
    run: Callable[[], object], dtype: torch.dtype, device: torch.device, mode: Callable = torch.inference_mode
) -> Callable[[], object]:
    def wrapped() -> object:
        with mode(), autocast(dtype, device):
            return run()

    return wrapped


def autocast(dtype: torch.dtype, device: torch.device):
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype)


def encoder_forwards(models: Models) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Audio to the last hidden state, for each system."""
    ours, reference, hubert = models.ours.spidr, models.reference, models.hubert
    return {
        "ours": lambda audio: ours(audio).last_hidden_state,
        "reference": lambda audio: reference.student(reference.feature_projection(reference.feature_extractor(audio))),
        "hubert": lambda audio: hubert(audio).last_hidden_state,
    }


def cast_models(models: Models, dtype: torch.dtype) -> Models:
    """Copies of the models in `dtype` (the fp32 ones stay for the fp32 workloads)."""
    return Models(*(None if model is None else copy.deepcopy(model).to(dtype) for model in dataclasses.astuple(models)))


def inference_workloads(
    models: Models, plan: Plan, device: torch.device, dtype: torch.dtype, compiled: bool, cast: bool = False
):
    """
    Encoder forward at each batch size, and (fp32 eager only) unit extraction at batch 1. With `cast`, the models are
    already in `dtype` and get `dtype` audio; otherwise a non-fp32 `dtype` is autocast.
    """
    forwards = encoder_forwards(models)
    if compiled:
        forwards = {name: torch.compile(forward, dynamic=True) for name, forward in forwards.items()}
    for batch in plan.inference_batches:
        audio = random_audio(batch, plan.inference_seconds, device).to(dtype if cast else torch.float32)
        calls = {name: (lambda forward=forward, audio=audio: forward(audio)) for name, forward in forwards.items()}
        autocast_dtype = torch.float32 if cast else dtype
        runs = {name: without_grad(call, autocast_dtype, device) for name, call in calls.items()}
        workload = Workload(
            "inference", plan.inference_size, batch, plan.inference_seconds, runs, dtype_name(dtype), compiled, cast
        )
        # FlopCounterMode's module tracker fails under inference_mode on modules fed with parameters (HuBERT's
        # weight-norm parametrization), so FLOPs are counted under no_grad
        workload.flop_calls = {
            name: without_grad(call, autocast_dtype, device, torch.no_grad) for name, call in calls.items()
        }
        if dtype == torch.float32:
            workload.checks["max_abs_diff_ours_vs_reference"] = max_abs_diff(runs["ours"](), runs["reference"]())
        yield workload
    if dtype == torch.float32 and not compiled:
        yield units_workload(models, plan, device)


def units_workload(models: Models, plan: Plan, device: torch.device) -> Workload:
    layer = SIZES[plan.inference_size].units_layer
    audio = random_audio(1, plan.inference_seconds, device)
    runs = {
        "ours": lambda: models.ours.get_units(audio, layer=layer),
        "reference": lambda: models.reference.get_codebooks(audio)[layer - 1].argmax(-1),
    }
    runs = {name: without_grad(run, torch.float32, device) for name, run in runs.items()}
    agreement = (runs["ours"]().flatten() == runs["reference"]().flatten()).float().mean().item()
    return Workload(
        "units", plan.inference_size, 1, plan.inference_seconds, runs, checks={"units_agreement": agreement}
    )


def train_workload(
    size_name: str,
    plan: Plan,
    device: torch.device,
    dtype: torch.dtype,
    compiled: bool,
    compile_options: dict[str, Any] | None = None,
) -> Workload:
    """
    A training step of fresh models (and optimizers) of one size; compiled with `compile_options` (torch.compile's
    arguments; default `COMPILE_OPTIONS`).
    """
    models = build_models(SIZES[size_name], device, with_hubert=False)
    audio = random_audio(plan.train_batch, plan.train_seconds, device)
    mask = training_mask(models.ours, audio)
    options = (COMPILE_OPTIONS if compile_options is None else compile_options) if compiled else None
    runs = {
        "ours": ours_train_step(models.ours.train(), audio, mask, dtype, options),
        "reference": reference_train_step(models.reference.train(), audio, mask, dtype, options),
    }
    # FlopCounterMode's module tracker fails on the reference teacher's no_grad forward; both train the same model,
    # so ours stands for its FLOPs too
    return Workload(
        "train_step",
        size_name,
        plan.train_batch,
        plan.train_seconds,
        runs,
        dtype_name(dtype),
        compiled,
        flop_calls={"ours": runs["ours"], "reference": runs["ours"]},
    )


def training_mask(model: SpidrForPreTraining, audio: torch.Tensor) -> torch.Tensor:
    config = model.config
    frames = int(model._get_feat_extract_output_lengths(audio.shape[1]))
    generator = torch.Generator().manual_seed(0)
    mask = compute_span_mask(
        [frames] * audio.shape[0],
        frames,
        config.mask_time_prob,
        config.mask_time_length,
        config.mask_time_min_masks,
        generator=generator,
    )
    return mask.to(audio.device)


def fused_adamw(params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
    """The paper's AdamW, fused as the reference's training and transformers' Trainer use it."""
    return torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.01, fused=True)


def compiled_or_eager(model: torch.nn.Module, compile_options: dict[str, Any] | None) -> Callable:
    """`model` under torch.compile with `compile_options`, or as is (None)."""
    return model if compile_options is None else torch.compile(model, **compile_options)


def ours_train_step(
    model: SpidrForPreTraining,
    audio: torch.Tensor,
    mask: torch.Tensor,
    dtype: torch.dtype,
    compile_options: dict[str, Any] | None,
) -> Callable[[], object]:
    """Our training loop body; `compile_options`: torch.compile's arguments (None: eager)."""
    params = [p for p in model.parameters() if p.requires_grad]
    forward = compiled_or_eager(model, compile_options)
    return train_step(
        params,
        lambda: forward(audio, mask_time_indices=mask).loss,
        lambda: model.update_teacher(TEACHER_STEP),
        audio.device,
        dtype,
    )


def reference_train_step(
    model: SpidR,
    audio: torch.Tensor,
    mask: torch.Tensor,
    dtype: torch.dtype,
    compile_options: dict[str, Any] | None,
) -> Callable[[], object]:
    """The reference's training loop body: per-frame losses averaged, clip, AdamW (teacher excluded), EMA."""
    params = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("teacher.")]
    forward = compiled_or_eager(model, compile_options)
    mask_indices = torch.stack([row.nonzero().squeeze(1) for row in mask])
    return train_step(
        params,
        lambda: forward(audio, mask_indices=mask_indices)[0].mean(),
        lambda: model.update_ema(TEACHER_STEP),
        audio.device,
        dtype,
    )


def train_step(
    params: list[torch.nn.Parameter],
    compute_loss: Callable[[], torch.Tensor],
    update_teacher: Callable[[], object],
    device: torch.device,
    dtype: torch.dtype,
) -> Callable[[], torch.Tensor]:
    """One training loop body, the same for every system: loss, backward, clip, fused AdamW, teacher EMA."""
    optimizer = fused_adamw(params)

    def step() -> torch.Tensor:
        with autocast(dtype, device):
            loss = compute_loss()
        loss.backward()
        clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_teacher()
        return loss.detach()

    return step


def max_abs_diff(a: object, b: object) -> float:
    return (a.float() - b.float()).abs().max().item()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- measuring ----
def time_interleaved(
    runs: dict[str, Callable[[], object]], repeats: int, warmup: int, synchronize: Callable[[], None]
) -> dict[str, list[float]]:
    """Wall-clock seconds of each call, the systems taking turns call by call."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize()
            start = time.perf_counter()
            run()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return times


class MemoryMeter:
    """Peak memory of one call above the memory in use before it, in MiB (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.libc = None
        if device.type == "cpu":
            if not Path("/proc/self/clear_refs").exists():
                raise RuntimeError("Measuring CPU memory needs Linux (/proc/self/clear_refs).")
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallopt(M_MMAP_THRESHOLD, PINNED_MMAP_THRESHOLD)

    def measure(self, run: Callable[[], object]) -> dict[str, float]:
        """`memory_mib`: the peak during `run` minus the memory in use before it; `peak_mib`: the peak itself."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            self.libc.malloc_trim(0)
            before = _proc_status_bytes("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            run()
            peak = _proc_status_bytes("VmHWM")
        return {"memory_mib": (peak - before) / 2**20, "peak_mib": peak / 2**20}


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"No {field} in /proc/self/status")


def count_flops(run: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def gpu_peak_tflops(device: torch.device, override: float | None, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """The card's dense peak for `dtype` (bf16 or fp32) from `GPU_PEAK_TFLOPS`; `override` wins; None if unknown."""
    if override is not None or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device)
    column = 2 if dtype == torch.float32 else 1
    return next((row[column] for row in GPU_PEAK_TFLOPS if row[0] in name), None)


# ---- reporting ----
def summarize(
    workload: Workload,
    times: dict[str, list[float]],
    memory: dict[str, dict],
    flops: dict[str, int],
    peak: float | None,
) -> dict[str, Any]:
    audio_seconds = workload.batch * workload.seconds
    systems = {}
    for name, samples in times.items():
        median = statistics.median(samples)
        entry = {
            "median_s": median,
            "min_s": min(samples),
            "times_s": samples,
            "audio_s_per_s": audio_seconds / median,
            **memory.get(name, {}),
        }
        if name in flops:
            entry["tflops"] = flops[name] / 1e12
            entry["mfu"] = None if peak is None else flops[name] / median / (peak * 1e12)
        systems[name] = entry
    ratios = {
        f"ours/{other}": {
            "time": systems["ours"]["median_s"] / systems[other]["median_s"],
            "memory": _ratio(systems["ours"].get("memory_mib"), systems[other].get("memory_mib")),
        }
        for other in systems
        if other != "ours"
    }
    return {
        "name": workload.name,
        "task": workload.task,
        "size": workload.size,
        "batch": workload.batch,
        "audio_seconds": workload.seconds,
        "dtype": workload.dtype,
        "compiled": workload.compiled,
        "cast": workload.cast,
        "systems": systems,
        "ratios": ratios,
        "goals": goals(workload.task, ratios),
        "checks": workload.checks,
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def goals(task: str, ratios: dict[str, dict[str, float | None]]) -> dict[str, bool]:
    """The issue's goals: inference <= 0.9x the others' time, a training step <= 1.0x, memory <= the reference's."""
    limit = 1.0 if task == "train_step" else 0.9
    met = {f"time {pair} <= {limit}": ratio["time"] <= limit for pair, ratio in ratios.items()}
    memory = ratios["ours/reference"]["memory"]
    if memory is not None:
        met["memory ours/reference <= 1.0"] = memory <= 1.0
    return met


def print_result(result: dict[str, Any]) -> None:
    cells = []
    for name, entry in result["systems"].items():
        memory = f", {entry['memory_mib']:.0f} MiB" if "memory_mib" in entry else ""
        mfu = f", MFU {entry['mfu']:.1%}" if entry.get("mfu") is not None else ""
        cells.append(f"{name} {entry['median_s'] * 1e3:.1f} ms ({entry['audio_s_per_s']:.1f} audio-s/s{memory}{mfu})")
    ratios = [
        f"{pair}: time {r['time']:.2f}x" + ("" if r["memory"] is None else f", memory {r['memory']:.2f}x")
        for pair, r in result["ratios"].items()
    ]
    missed = [goal for goal, met in result["goals"].items() if not met]
    print(f"{result['name']}\n  " + " | ".join(cells) + "\n  " + " | ".join(ratios))
    print("  goals met" if not missed else f"  goals MISSED: {', '.join(missed)}", flush=True)


def environment(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "spidr_hf": version("spidr-hf"),
        "reference": version("spidr"),
        "python": platform.python_version(),
        "quick": args.quick,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "load_average_at_start": os.getloadavg(),
    }


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


# ---- driver ----
def all_workloads(plan: Plan, device: torch.device) -> Iterator[Workload]:
    """fp32 eager everywhere; on CUDA also bf16 autocast, eager and compiled; on CPU also bf16-cast inference."""
    variants = [(torch.float32, False)]
    if device.type == "cuda":
        variants += [(torch.bfloat16, False), (torch.bfloat16, True)]
    models = build_models(SIZES[plan.inference_size], device, with_hubert=True)
    for dtype, compiled in variants:
        yield from inference_workloads(models, plan, device, dtype, compiled)
    if device.type == "cpu":  # CPU autocast is not how bf16 inference runs there: the weights are cast
        yield from inference_workloads(cast_models(models, torch.bfloat16), plan, device, torch.bfloat16, False, True)
    for size_name in plan.train_sizes:
        for dtype, compiled in variants:
            yield train_workload(size_name, plan, device, dtype, compiled)


def configure_inductor(device: torch.device) -> None:
    if device.type == "cuda":
        # Inductor's memory-coalescing analysis fails an internal assertion on the dynamic-shape training graphs
        # (seen with torch 2.11, CUDA); the kernels it would retile are generated without it
        torch._inductor.config.triton.coalesce_tiling_analysis = False


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Time every workload, then measure memory (pinning glibc's mmap threshold would slow the timed calls), then
    count FLOPs."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    report: dict[str, Any] = {"environment": environment(device, args), "results": [], "failures": []}
    workloads = list(all_workloads(plan, device))
    configure_inductor(device)
    timed, times = [], []
    for workload in workloads:
        warmup = max(args.warmup, 1) if workload.compiled else args.warmup  # compilation stays out of the times
        try:
            workload_times = time_interleaved(workload.runs, args.repeats, warmup, synchronize)
        except Exception as error:  # e.g. a compiler failure: report it and go on with the other workloads
            report["failures"].append({"name": workload.name, "error": f"{type(error).__name__}: {error}"})
            print(f"FAILED {workload.name}: {type(error).__name__}: {str(error)[:500]}", flush=True)
            continue
        timed.append(workload)
        times.append(workload_times)
        # Medians now, so that a run cut short still shows what it measured
        medians = ", ".join(f"{name} {statistics.median(t) * 1e3:.1f} ms" for name, t in workload_times.items())
        print(f"timed {workload.name}: {medians}", flush=True)
    workloads = timed
    meter = MemoryMeter(device)
    memory = [{name: meter.measure(run) for name, run in workload.runs.items()} for workload in workloads]
    peak = gpu_peak_tflops(device, args.peak_tflops)
    flops: dict[tuple, dict[str, int]] = {}  # bf16 only, counted on eager calls and reused for compiled ones
    for workload, workload_times, workload_memory in zip(workloads, times, memory, strict=True):
        key = (workload.task, workload.size, workload.batch, workload.dtype)
        if workload.dtype != "float32" and not workload.compiled:
            flops[key] = {name: count_flops(call) for name, call in workload.flop_calls.items()}
        result = summarize(workload, workload_times, workload_memory, flops.get(key, {}), peak)
        report["results"].append(result)
        print_result(result)
    report["environment"]["load_average_at_end"] = os.getloadavg()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny models and 1 s of audio: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per system (default: 7; quick: 2)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed calls per system first (default: 2; quick: 1)"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU bf16 peak for MFU, if not in the table")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 7
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_benchmark(args)
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2))
        print(f"Wrote {args.output}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
