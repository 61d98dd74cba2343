"""
End-to-end speed of `spidr-hf extract` against the reference's own extraction loop, side by side on the same files.

    python benchmarks/extract_bench.py AUDIO_DIR [--model MODEL] [--files 60] [--layer 6] [--repeats 2]
        [--config extract=--dtype float32 --config extract-bf16=--dtype bfloat16 ...] [--output bench.json]

The reference's `paper/extract_features.py` (facebookresearch/spidr) loops over a manifest one file at a time: decode,
normalise, run *every* encoder layer at batch 1, `torch.save` the layer asked for, on the main thread. This
re-implements that behaviour with our model and decoder (its own `WavDecoder` needs a torchcodec newer than torch 2.13
allows), so that both sides compute the same function and only the loop differs. Each system runs as its own command,
start-up (imports, model load, listing) included, in the order reference, ours, reference, ours... so that machine
load weighs on both alike; the figure of a system is its median wall time, and the ratio is reference / ours. The run
checks that both wrote the same features (to float tolerance: batch composition changes the rounding).

Without --model, a SpidR base model with random weights is saved to a scratch folder (the speed does not depend on the
weights). Each --config is `NAME=ARGS`: extra `spidr-hf extract` arguments, e.g. `--num-workers 1 --dtype bfloat16`.
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

REFERENCE_LOOP = "reference-loop"


def reference_loop(model_dir: str, files: list[str], output: Path, layer: int, device: str) -> None:
    """The reference's extraction loop (batch 1, all layers, save on the main thread), with our model and decoder."""
    import torch
    from tqdm import tqdm

    from spidr_hf.audio import decode
    from spidr_hf.configuration_spidr import SAMPLING_RATE
    from spidr_hf.loading import load

    loaded = load(model_dir, "student")
    model = loaded.model.to(device).eval()
    output.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        for path in tqdm(files):
            waveform = loaded.feature_extractor(decode(Path(path)), sampling_rate=SAMPLING_RATE, return_tensors="pt")
            outputs = model(waveform["input_values"].to(device), output_layer_results=True).layer_results
            torch.save(outputs[layer - 1].squeeze().cpu(), output / Path(path).with_suffix(".pt").name)


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
    parser.add_argument("--files", type=int, default=60, help="how many files of the folder (sorted paths)")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--config", action="append", default=[], metavar="NAME=ARGS", help="a `spidr-hf extract` run")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    from spidr_hf.audio import audio_duration, audio_files

    files = audio_files(args.audio)[: args.files]
    if not files:
        raise SystemExit(f"{args.audio} holds no audio file")
    seconds = sum(audio_duration(str(path)) for path in files)
    configs = dict(config.split("=", 1) if "=" in config else (config, "") for config in args.config)
    configs = configs or {"extract": ""}
    env = {**os.environ, "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory(prefix="extract-bench-") as scratch:
        scratch = Path(scratch)
        model = args.model
        if model is None:
            from spidr_hf import SpidrConfig, SpidrModel
            from spidr_hf.feature_extraction_spidr import SpidrFeatureExtractor

            model = str(scratch / "model")
            SpidrModel(SpidrConfig()).save_pretrained(model)
            SpidrFeatureExtractor().save_pretrained(model)
        input_dir = scratch / "input"  # the same files under flat names, for both loops
        input_dir.mkdir()
        for index, path in enumerate(files):
            (input_dir / f"{index:05d}{path.suffix}").symlink_to(path.resolve())
        inputs = sorted(str(path) for path in input_dir.iterdir())
        names = [Path(path).stem for path in inputs]
        reference_command = [sys.executable, __file__, REFERENCE_LOOP, model, str(scratch / "reference")]
        systems: dict[str, list[str]] = {"reference loop": [*reference_command, str(args.layer), args.device, *inputs]}
        for name, extra in configs.items():
            systems[name] = [
                sys.executable, "-m", "spidr_hf", "extract", model, str(input_dir), str(scratch / name),
                "--layer", str(args.layer), "--device", args.device, *shlex.split(extra),
            ]  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in systems}
        for repeat in range(args.repeats):
            for name, command in systems.items():
                out = Path(command[4]) if name == "reference loop" else Path(command[6])
                subprocess.run(["rm", "-rf", str(out)], check=True)
                times[name].append(timed(command, env))
                print(f"repeat {repeat + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
        differences = {name: compare_outputs(scratch / "reference", scratch / name, names) for name in configs}
    reference = statistics.median(times["reference loop"])
    print(f"\n{len(files)} files, {seconds:.0f} s of audio, layer {args.layer}, {args.device}, {os.cpu_count()} cores")
    print(f"{'system':<24} {'median s':>9} {'audio s/s':>10} {'vs reference':>13} {'max |diff|':>11}")
    results = []
    for name, values in times.items():
        median = statistics.median(values)
        difference = differences.get(name, 0.0)
        print(f"{name:<24} {median:9.1f} {seconds / median:10.1f} {reference / median:12.2f}x {difference:11.2g}")
        results.append({"system": name, "seconds": values, "median_s": median, "speedup": reference / median})
    if args.output:
        machine = {"cpu_count": os.cpu_count(), "processor": platform.processor(), "platform": platform.platform()}
        record = {"files": len(files), "audio_seconds": seconds, "layer": args.layer, "machine": machine}
        args.output.write_text(json.dumps({**record, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == REFERENCE_LOOP:
        model_dir, output, layer, device, *paths = sys.argv[2:]
        reference_loop(model_dir, paths, Path(output), int(layer), device)
    else:
        main()
