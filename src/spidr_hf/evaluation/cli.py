"""
`spidr-hf evaluate MODEL --dataset DIR` (the built-in corpus) or `--item FILE --audio DIR [--alignments PATH]`
(a ZeroSpeech-layout set): ABX and unit quality, with log-mel and random-init baselines.
"""

import argparse

from .evaluator import evaluate_model
from .report import RESULTS_FILE, format_comparison, format_table


def run(args: argparse.Namespace) -> int:
    report = evaluate_model(
        args.model,
        args.dataset,
        item_file=args.item,
        audio_dir=args.audio,
        alignments=args.alignments,
        kmeans_audio_dir=args.kmeans_audio,
        layers=args.layers,
        units=args.units,
        num_clusters=args.num_clusters,
        kmeans_frames=args.kmeans_frames,
        batch_size=args.batch_size,
        max_utterances=args.max_utterances,
        max_size_group=args.max_size_group,
        max_x_across=args.max_x_across,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        refit_kmeans=args.refit_kmeans,
        output_dir=args.output,
        overwrite=args.overwrite,
    )
    print(format_table(report))
    if any(result.system == "random_init" for result in report.results):
        print(format_comparison(report))
    print(f"Wrote {args.output / RESULTS_FILE} and plots")
    return 0
