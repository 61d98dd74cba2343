"""
Throughput of the pretraining data pipeline alone: decode, resample, standardize, crop and mask, as
spidr_hf.pretraining.data does it for the Trainer, on the built-in corpus (synthesized with flite on first use).

    python benchmarks/bench_loader.py [--corpus DIR] [--hours 0.2] [--epochs 2] [--output loader.json]

Two sources: the corpus as synthesized (16 kHz wav), and a copy re-encoded once as 48 kHz FLAC, which the pipeline
resamples to 16 kHz while decoding (as for most corpora not recorded for ASR). Batches follow the paper recipe's data
settings (training/configs/spidr_base_librispeech.yaml). The loop runs in this process with one torch thread, as a
DataLoader worker does, so the rates are per worker; workers scale them up to the cores available.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from spidr_hf import SpidrConfig
from spidr_hf.data.corpus import build_corpus
from spidr_hf.model.configuration_spidr import SAMPLING_RATE
from spidr_hf.pretraining.data import (
    BucketBatchSampler,
    DecodedSpeech,
    SpeechCollator,
    audio_lengths,
    load_audio_dataset,
)

# The paper recipe's data settings (training/configs/spidr_base_librispeech.yaml)
MAX_BATCH_SAMPLES = 3_800_000
MIN_SAMPLES = 2_000
MAX_SAMPLES = 320_000
NUM_BUCKETS = 1000
RESAMPLED_RATE = 48_000
# What one GPU consumes in the paper's run (400k steps of at most 3.8M samples in 15 h on H100s), shared by the
# recipe's 10 workers: the rate each worker must sustain, at most
PAPER_AUDIO_HOURS_PER_HOUR_PER_GPU = 400_000 * MAX_BATCH_SAMPLES / SAMPLING_RATE / 3600 / 15
RECIPE_WORKERS_PER_GPU = 10


def resampled_copy(corpus_dir: Path, dataset, rate: int) -> Path:
    """The train split's audio re-encoded as FLAC at `rate` Hz in `corpus_dir/flac_<rate>` (reused when present)."""
    from datasets import Audio
    from torchcodec.decoders import AudioDecoder
    from torchcodec.encoders import AudioEncoder

    folder = corpus_dir / f"flac_{rate}"
    paths = [audio["path"] for audio in dataset.cast_column("audio", Audio(decode=False))["audio"]]
    folder.mkdir(exist_ok=True)
    for path in paths:
        target = folder / f"{Path(path).stem}.flac"
        if not target.exists():
            samples = AudioDecoder(path).get_all_samples()
            AudioEncoder(samples.data, sample_rate=samples.sample_rate).to_file(target, sample_rate=rate)
    return folder


def measure(dataset, epochs: int) -> dict[str, Any]:
    """Run the Trainer's loader over `epochs` epochs and report audio-hours per hour."""
    lengths = audio_lengths(dataset)
    sampler = BucketBatchSampler(lengths, MAX_BATCH_SAMPLES, MIN_SAMPLES, MAX_SAMPLES, num_buckets=NUM_BUCKETS)
    loader = DataLoader(
        DecodedSpeech(dataset),
        batch_sampler=sampler,
        collate_fn=SpeechCollator(SpidrConfig(), MIN_SAMPLES, MAX_SAMPLES),
        num_workers=0,  # this process is the worker
    )
    kept = lengths[sampler.kept]
    decoded_seconds = epochs * float(kept.sum()) / SAMPLING_RATE
    model_input_seconds = 0.0
    next(iter(loader))  # untimed: the first batch pays for opening the files and loading the decoder libraries
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            model_input_seconds += batch["input_values"].numel() / SAMPLING_RATE
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    return {
        "utterances": len(kept) * epochs,
        "batches": len(sampler) * epochs,
        "decoded_audio_hours": decoded_seconds / 3600,
        "model_input_audio_hours": model_input_seconds / 3600,
        "wall_s": wall,
        "cpu_s": cpu,
        "decoded_audio_hours_per_hour": decoded_seconds / wall,
        "model_input_audio_hours_per_hour": model_input_seconds / wall,
    }


def run(corpus_dir: Path, hours: float, epochs: int) -> dict[str, Any]:
    torch.set_num_threads(1)  # as in a DataLoader worker
    corpus = build_corpus(corpus_dir, hours=hours, seed=0)
    sources = {
        "wav_16khz": load_audio_dataset(str(corpus_dir), split="train"),
        f"flac_{RESAMPLED_RATE // 1000}khz_resampled": load_audio_dataset(
            str(resampled_copy(corpus_dir, corpus["train"], RESAMPLED_RATE))
        ),
    }
    needed = PAPER_AUDIO_HOURS_PER_HOUR_PER_GPU / RECIPE_WORKERS_PER_GPU
    report: dict[str, Any] = {
        "corpus_hours": hours,
        "epochs": epochs,
        "paper_recipe_model_input_hours_per_hour_needed_per_worker": needed,
        "sources": {},
    }
    for name, dataset in sources.items():
        result = measure(dataset, epochs)
        report["sources"][name] = result
        print(
            f"{name}: {result['decoded_audio_hours_per_hour']:.0f} decoded audio-h/h, "
            f"{result['model_input_audio_hours_per_hour']:.0f} model-input audio-h/h per worker "
            f"({result['utterances']} utterances, {result['batches']} batches in {result['wall_s']:.1f} s)",
            flush=True,
        )
    print(f"The paper's recipe needs at most {needed:.0f} model-input audio-h/h per worker (10 workers per GPU).")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus", type=Path, default=None, help="corpus folder, built there if missing (default: temp)"
    )
    parser.add_argument("--hours", type=float, default=0.2, help="hours of audio in the corpus (default: 0.2)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the corpus per source (default: 2)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.hours <= 0 or args.epochs < 1:
        parser.error("--hours must be positive and --epochs at least 1")
    with tempfile.TemporaryDirectory() as temporary:
        report = run(args.corpus or Path(temporary), args.hours, args.epochs)
    report["load_average"] = os.getloadavg()
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2))
        print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
