"""
End-to-end speed of `spidr-hf extract` against the reference's own extraction script, side by side on the same files.

    python benchmarks/extract_bench.py AUDIO_DIR [--model MODEL [--reference-checkpoint CKPT]] [--files 60]
        [--layer 6] [--repeats 2] [--config extract=--dtype float32 --config extract-bf16=--dtype bfloat16 ...]
        [--output bench.json]

The reference's `paper/extract_features.py` (facebookresearch/spidr) loops over a manifest one file at a time: decode,
normalise (`F.layer_norm` over the whole waveform), run *every* encoder layer of the reference's model at batch 1
(`get_intermediate_outputs`), `torch.save` the layer asked for, on the main thread. Two re-implementations of it run:

- `reference script`: its loop and its model (`spidr==0.2.0`, the test oracle of `scripts/install.sh dev`), with our
  decoder in place of its `WavDecoder`, which needs a torchcodec newer than torch 2.13 allows. This is what a user of
  the reference runs; the speed-ups are against it.
- `reference loop, our model`: the same loop around our model, so that only the loop differs from `spidr-hf extract`.

Each system runs as its own command, start-up (imports, model load, listing) included, in turn (reference script,
reference loop, ours, ..., then again), so that machine load weighs on all alike; the figure of a system is its median
wall time. The run checks that all wrote the same features (to float tolerance: batch composition and the two models'
kernels round differently).

Without --model, a SpidR base model with random weights (the speed does not depend on the weights) is drawn by the
reference's code, written as its checkpoint, and converted to ours (`spidr_hf.hub.convert`). With --model, the reference
script runs only when --reference-checkpoint names the reference checkpoint the model was converted from. Each
--config is `NAME=ARGS`: extra `spidr-hf extract` arguments, e.g. `--num-workers 1 --dtype bfloat16`.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE_SCRIPT = "reference script"
REFERENCE_LOOP = "reference loop, our model"
# How a system's subprocess is told which loop to run (argv[1]); spidr-hf extract runs as `python -m spidr_hf`
LOOP_COMMANDS = {REFERENCE_SCRIPT: "reference-script", REFERENCE_LOOP: "reference-loop"}


def reference_script(checkpoint: str, files: list[str], output: Path, layer: int, device: str) -> None:
    """The reference's `extract_features.py`: its model and its loop (batch 1, all layers, save on the main thread)."""
    import torch
    import torch.nn.functional as F
    from spidr.models import build_model
    from tqdm import tqdm

    from spidr_hf.data.audio import decode

    model = build_model(model_type="spidr", checkpoint=checkpoint).to(device).eval()  # as its `spidr_base` loads it
    output.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for path in tqdm(files):
            waveform = torch.from_numpy(decode(Path(path)))
            waveform = F.layer_norm(waveform, waveform.shape)
            outputs = model.get_intermediate_outputs(waveform.to(device).unsqueeze(0))
            torch.save(outputs[layer - 1].squeeze().cpu(), output / Path(path).with_suffix(".pt").name)


def reference_loop(model_dir: str, files: list[str], output: Path, layer: int, device: str) -> None:
    """The reference's extraction loop (batch 1, all layers, save on the main thread), with our model and decoder."""
    import torch
    from tqdm import tqdm

    from spidr_hf.data.audio import decode
    from spidr_hf.model.configuration_spidr import SAMPLING_RATE
    from spidr_hf.model.loading import load

    loaded = load(model_dir, "student")
    model = loaded.model.to(device).eval()
    output.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for path in tqdm(files):
            waveform = loaded.feature_extractor(decode(Path(path)), sampling_rate=SAMPLING_RATE, return_tensors="pt")
            outputs = model(waveform["input_values"].to(device), output_layer_results=True).layer_results
            torch.save(outputs[layer - 1].squeeze().cpu(), output / Path(path).with_suffix(".pt").name)


def random_reference_model(folder: Path, reference_overrides: dict | None = None) -> tuple[str, str]:
    """
    A SpidR base (or the reference config with `reference_overrides`, e.g. benchmarks/bench.py's `SIZES`) with random
    weights drawn by the reference's code and written as its checkpoint, and the same weights converted to our folder:
    (checkpoint, model folder). Without the reference installed, our model only (checkpoint "").
    """
    import dataclasses

    import torch

    from spidr_hf import SpidrConfig, SpidrModel
    from spidr_hf.hub.convert import load_original_model
    from spidr_hf.model.feature_extraction_spidr import SpidrFeatureExtractor

    try:
        from spidr.config import SpidRConfig
        from spidr.models import SpidR
    except ImportError:
        if reference_overrides:
            raise
        print("spidr==0.2.0 (the reference) is not installed: timing the reference loop with our model only")
        checkpoint, model = "", SpidrModel(SpidrConfig())
    else:
        torch.manual_seed(0)
        config = SpidRConfig(**(reference_overrides or {}))
        path = folder / "reference" / "spidr.pt"
        path.parent.mkdir()
        torch.save({"model": SpidR(config).state_dict()}, path)
        run_config = {"run": {"model_type": "spidr"}, "model": dataclasses.asdict(config)}
        (path.parent / "config.json").write_text(json.dumps(run_config))
        checkpoint, model = str(path), load_original_model(path)
    model_dir = folder / "model"
    model.save_pretrained(model_dir)
    SpidrFeatureExtractor().save_pretrained(model_dir)
    return checkpoint, str(model_dir)


def loop_command(system: str, source: str, output: Path, layer: int, device: str, files: list[str]) -> list[str]:
    """The command that runs `system`'s loop (REFERENCE_SCRIPT or REFERENCE_LOOP) on `files` into `output`."""
    return [sys.executable, __file__, LOOP_COMMANDS[system], source, str(output), str(layer), device, *files]


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{completed.stderr[-3000:]}")
    return seconds


def compare_outputs(reference: Path, ours: Path, names: list[str]) -> float:
    import torch

    worst = 0.0
    for name in names:
        expected = torch.load(reference / f"{name}.pt")
        found = torch.load(ours / f"{name}.pt")
        if expected.shape != found.shape:
            raise SystemExit(f"{name}: shapes differ, {tuple(expected.shape)} vs {tuple(found.shape)}")
        worst = max(worst, (expected - found).abs().max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audio", type=Path, help="folder of audio files (searched recursively)")
    parser.add_argument("--model", help="model folder or Hub id (default: SpidR base, random weights)")
    parser.add_argument(
        "--reference-checkpoint", help="with --model: the reference checkpoint (.pt) it was converted from"
    )
    parser.add_argument("--files", type=int, default=60, help="how many files of the folder (sorted paths)")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--config", action="append", default=[], metavar="NAME=ARGS", help="a `spidr-hf extract` run")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.reference_checkpoint and not args.model:
        parser.error("--reference-checkpoint goes with --model (the folder converted from it)")

    from spidr_hf.data.audio import audio_duration, audio_files

    files = audio_files(args.audio)[: args.files]
    if not files:
        raise SystemExit(f"{args.audio} holds no audio file")
    seconds = sum(audio_duration(str(path)) for path in files)
    configs = dict(config.split("=", 1) if "=" in config else (config, "") for config in args.config)
    configs = configs or {"extract": ""}
    env = {**os.environ, "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory(prefix="extract-bench-") as scratch:
        scratch = Path(scratch)
        checkpoint, model = args.reference_checkpoint or "", args.model
        if model is None:
            checkpoint, model = random_reference_model(scratch)
        input_dir = scratch / "input"  # the same files under flat names, for every system
        input_dir.mkdir()
        for index, path in enumerate(files):
            (input_dir / f"{index:05d}{path.suffix}").symlink_to(path.resolve())
        inputs = sorted(str(path) for path in input_dir.iterdir())
        names = [Path(path).stem for path in inputs]
        # name -> (command, the folder it writes)
        systems: dict[str, tuple[list[str], Path]] = {}
        for name, source in ((REFERENCE_SCRIPT, checkpoint), (REFERENCE_LOOP, model)):
            if source:
                out = scratch / LOOP_COMMANDS[name]
                systems[name] = (loop_command(name, source, out, args.layer, args.device, inputs), out)
        for name, extra in configs.items():
            out = scratch / f"extract-{name}"
            command = [
                sys.executable, "-m", "spidr_hf", "extract", model, str(input_dir), str(out),
                "--layer", str(args.layer), "--device", args.device, *shlex.split(extra),
            ]  # fmt: skip
            systems[name] = (command, out)
        times: dict[str, list[float]] = {name: [] for name in systems}
        for repeat in range(args.repeats):
            for name, (command, out) in systems.items():
                subprocess.run(["rm", "-rf", str(out)], check=True)
                times[name].append(timed(command, env))
                print(f"repeat {repeat + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
        baseline = REFERENCE_SCRIPT if REFERENCE_SCRIPT in systems else REFERENCE_LOOP
        differences = {
            name: compare_outputs(systems[baseline][1], out, names)
            for name, (_, out) in systems.items()
            if name != baseline
        }
    reference = statistics.median(times[baseline])
    print(f"\n{len(files)} files, {seconds:.0f} s of audio, layer {args.layer}, {args.device}, {os.cpu_count()} cores")
    print(f"{'system':<26} {'median s':>9} {'audio s/s':>10} {'speed-up':>9} {'max |diff|':>11}")
    results = []
    for name, values in times.items():
        median = statistics.median(values)
        difference = differences.get(name, 0.0)
        print(f"{name:<26} {median:9.1f} {seconds / median:10.1f} {reference / median:8.2f}x {difference:11.2g}")
        results.append({"system": name, "seconds": values, "median_s": median, "speedup": reference / median})
    print(f"(speed-up: over the {baseline}; max |diff|: the largest difference to its features)")
    if args.output:
        machine = {"cpu_count": os.cpu_count(), "processor": platform.processor(), "platform": platform.platform()}
        record = {
            "files": len(files),
            "audio_seconds": seconds,
            "layer": args.layer,
            "baseline": baseline,
            "machine": machine,
        }
        args.output.write_text(json.dumps({**record, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    loops = {LOOP_COMMANDS[REFERENCE_SCRIPT]: reference_script, LOOP_COMMANDS[REFERENCE_LOOP]: reference_loop}
    if len(sys.argv) > 1 and sys.argv[1] in loops:
        source, output, layer, device, *paths = sys.argv[2:]
        loops[sys.argv[1]](source, paths, Path(output), int(layer), device)
    else:
        main()
