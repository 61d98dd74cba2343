"""
benchmarks/gpu_suite.py, which runs only when a GPU is lent, kept from rotting: its --smoke run (the same code on the
CPU, a tiny model, 12 s of audio) as the GPU machines' image would run it (no torchcodec, no datasets), with every
row and field of its JSON, and its one-line refusal when something it needs is missing. No timing assertions.
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
GPU_IMAGE = Path(__file__).parent / "without_torchcodec"  # a sitecustomize that hides torchcodec and datasets
EXTRACT_FIELDS = {
    "files", "audio_s", "wall_s", "audio_s_per_s", "audio_hours_per_gpu_hour", "gpu_busy_command",
    "gpu_busy_active_span", "device_busy_s", "device_seconds_by_type", "peak_memory_mib",
    "libri_light_60k_h_on_8_gpus_hours",
}  # fmt: skip
TRAIN_FIELDS = {
    "batch", "samples_per_batch", "fits_max_batch_length", "step_s", "step_times_s", "audio_s_per_s",
    "tflop_per_step", "achieved_tflops", "mfu", "mfu_own_dtype", "peak_memory_mib", "step_memory_mib",
    "first_call_s", "compile_s",
}  # fmt: skip


def run_suite(tmp_path: Path, *arguments: str, hidden: str = "") -> tuple[subprocess.CompletedProcess, Path]:
    output = tmp_path / "suite.json"
    pythonpath = os.pathsep.join([str(GPU_IMAGE), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath, "SPIDR_HF_HIDDEN_PACKAGES": hidden, "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, str(SUITE), "--output", str(output), "--workdir", str(tmp_path), *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900), output


@pytest.mark.slow
def test_smoke_run_writes_every_row_and_field_and_runs_the_agreement_checks(tmp_path):
    # A peak rate given, so that MFU is computed as on a GPU of the table (a CPU has no entry)
    completed, output = run_suite(tmp_path, "--smoke", "--peak-tflops", "2", "--peak-fp32-tflops", "1")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["smoke"] is True and report["failures"] == []
    assert {"device", "torch", "transformers", "reference", "python"} <= set(report["environment"])
    assert report["environment"]["reference"] == "0.2.0"

    extract = report["extract"]
    files = extract["audio"]["files"]
    assert files >= 3 and 10 <= extract["audio"]["hours"] * 3600 <= 16
    assert [(row["system"], row["dtype"]) for row in extract["rows"]] == [
        ("spidr-hf extract", "float32"),
        ("spidr-hf extract", "bfloat16"),
        ("reference extract_features.py", "float32"),
    ]
    assert extract["reference_files"] == "all"
    for row in extract["rows"]:
        assert row["status"] == "ok" and set(row) >= EXTRACT_FIELDS, row
        assert row["files"] == files and row["audio_s"] == pytest.approx(extract["audio"]["hours"] * 3600)
        # Busy time is the union of the profiler's intervals: within the command, and at most the sum of the events
        assert 0 < row["device_busy_s"] <= min(row["wall_s"], sum(row["device_seconds_by_type"].values()) + 1e-6)
        assert 0 < row["gpu_busy_command"] <= row["gpu_busy_active_span"] <= 1
        assert row["peak_memory_mib"] > 0
    ours_float32, ours_bfloat16, _ = extract["rows"]
    assert ours_float32["max_abs_diff_to_reference"] <= 1e-4  # the same function, on the same CPU
    assert 0 < ours_bfloat16["max_abs_diff_to_reference"] <= 0.1
    assert ours_float32["speedup_over_reference"] > 0 and ours_bfloat16["speedup_over_reference"] > 0

    agreement = report["agreement"]
    assert len(agreement["files"]) == 3
    # On the CPU the "device" is the CPU: float32 agrees to rounding, bf16 within its tolerance
    assert agreement["extract_float32_vs_cpu_float32"]["relative_l2"] <= 1e-5
    assert agreement["extract_float32_vs_cpu_float32"]["units_agreement"] == 1.0
    assert 0 < agreement["extract_bfloat16_vs_cpu_float32"]["relative_l2"] <= 0.05
    assert agreement["extract_units_bfloat16_vs_float32"]["files"] == files
    assert agreement["padded_batch_vs_items_alone"]["relative_l2"] <= 1e-5
    assert agreement["padded_batch_vs_items_alone"]["units_agreement"] == 1.0
    loss = agreement["loss"]
    assert math.isfinite(loss["cpu_float32"]) and loss["float32"]["abs_diff"] <= 1e-5
    assert 0 < loss["bfloat16"]["abs_diff"] <= 0.05 * abs(loss["cpu_float32"])
    checks = [value for value in agreement.values() if isinstance(value, dict) and "ok" in value]
    assert len(checks) == 4 and all(check["ok"] for check in checks)

    train = report["train"]
    assert train["paper_batch"] == 2 and train["peak_tflops"] == {"bfloat16": 2.0, "float32": 1.0}
    variants = [(row["system"], row["dtype"], row["mode"]) for row in train["rows"]]
    assert variants == [
        (system, dtype, mode)
        for dtype, mode in (
            ("float32", "eager"),
            ("bfloat16", "eager"),
            ("bfloat16", "compiled"),
            ("float32", "compiled"),
        )
        for system in ("ours", "reference")
    ]
    for row in train["rows"]:
        assert row["status"] == "ok" and set(row) >= TRAIN_FIELDS, row
        assert row["batch"] == 2 and row["fits_max_batch_length"] and row["samples_per_batch"] == 32_000
        assert row["step_s"] > 0 and row["audio_s_per_s"] == pytest.approx(2.0 / row["step_s"])
        # FLOPs counted on the step: the same model for both systems, so the same count
        assert row["tflop_per_step"] == train["rows"][0]["tflop_per_step"] > 0
        assert row["mfu"] == pytest.approx(row["achieved_tflops"] / 2.0)
        own_peak = 1.0 if row["dtype"] == "float32" else 2.0
        assert row["mfu_own_dtype"] == pytest.approx(row["achieved_tflops"] / own_peak)
        assert row["peak_memory_mib"] > 0
        assert (row["compile_s"] is not None) == (row["mode"] == "compiled")
        if row["system"] == "ours":
            assert row["time_vs_reference"] > 0
    assert set(report["goals"]) == {
        "extract GPU busy >= 80 %",
        "extract >= 10x the reference's loop",
        "compiled bf16 step ours/reference <= 0.8",
        "MFU printed for every row",
    }
    assert report["goals"]["MFU printed for every row"]["reached"] is True
    assert "goals:" in completed.stdout and "train step" in completed.stdout and "agreement" in completed.stdout


@pytest.mark.slow
def test_a_missing_requirement_stops_the_run_in_one_line_before_any_work(tmp_path):
    completed, output = run_suite(tmp_path, "--smoke", hidden="spidr")  # the reference, hidden
    assert completed.returncode == 1
    assert completed.stderr.strip().startswith("gpu_suite: the reference spidr==0.2.0 is not importable")
    assert len(completed.stderr.strip().splitlines()) == 1
    assert not output.exists()
    completed, output = run_suite(tmp_path)  # the full run, with no GPU visible
    assert completed.returncode == 1
    assert completed.stderr.strip().startswith("gpu_suite: no CUDA GPU visible")
    assert len(completed.stderr.strip().splitlines()) == 1
    assert not output.exists()


@pytest.mark.slow
def test_busy_time_merges_nested_operators_and_leaves_out_idle_gaps():
    """The busy fraction's arithmetic, on a real profile: nested operators count once, and a pause not at all."""
    import torch
    from conftest import load_script
    from torch.profiler import ProfilerActivity, profile

    suite = load_script(SUITE, "gpu_suite")
    matrix = torch.randn(300, 300)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(3):
            torch.matmul(matrix, matrix)  # aten::matmul around aten::mm
        time.sleep(0.2)
        torch.matmul(matrix, matrix)
    activity = suite.device_activity(profiler, cuda=False)
    events = [event for event in profiler.profiler.kineto_results.events() if event.activity_type() == "cpu_op"]
    longest = max(event.duration_ns() for event in events) / 1e9
    assert activity["events"] == len(events) >= 8
    assert longest <= activity["busy_s"] < sum(activity["seconds_by_type"].values())  # nested: counted once
    assert activity["busy_s"] + 0.2 <= activity["span_s"]  # the pause is in the span, not in the busy time
