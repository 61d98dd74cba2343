"""
`spidr-hf evaluate MODEL_OR_DIR --dataset DIR` (the built-in corpus) or `--item FILE --audio DIR [--alignments PATH]`
(a ZeroSpeech-layout set): ABX and unit quality, with log-mel and random-init baselines.
"""

import argparse
import os
import re
from pathlib import Path

from .evaluator import DTYPES, UNIT_KINDS, check_source, evaluate_model
from .report import RESULTS_FILE, format_comparison, format_table

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def parse_layers(text: str) -> list[int]:
    """Layers from "6", "1-12" or "1-4,6,8-9"."""
    layers = set()
    for part in text.split(","):
        match = _RANGE.fullmatch(part.strip())
        if match is None:
            raise argparse.ArgumentTypeError(f"bad layer list {text!r}: use e.g. 6, 1-12 or 1-4,6")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise argparse.ArgumentTypeError(f"bad layer range {part!r}")
        layers.update(range(first, last + 1))
    return sorted(layers)


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_OR_DIR", help="Hub id or folder of a SpidR model")
    parser.add_argument("--dataset", type=Path, default=None, help="corpus folder (from `spidr-hf corpus`)")
    parser.add_argument(
        "--item", type=Path, default=None, help="ABX item file of a ZeroSpeech-layout set (instead of --dataset)"
    )
    parser.add_argument(
        "--audio", type=Path, default=None, help="folder of the audio files the --item file names (FILE.*, any format)"
    )
    parser.add_argument(
        "--alignments",
        type=Path,
        default=None,
        help="phone alignments of the --item set, for PNMI and unit quality: a folder of TextGrid files with a "
        "'phones' tier (MFA) or a TSV/CSV of `file start end phone`",
    )
    parser.add_argument(
        "--kmeans-audio",
        type=Path,
        default=None,
        help="folder of audio files to fit k-means on for an --item set (default: the set's own audio)",
    )
    parser.add_argument("--layers", type=parse_layers, default=None, help="layers, e.g. 6 or 1-12 (default: all)")
    parser.add_argument(
        "--units",
        nargs="+",
        choices=UNIT_KINDS,
        default=None,
        help="discrete units to evaluate (default: codebook if the checkpoint has trained heads, else kmeans; "
        "kmeans too if the model stores k-means centroids)",
    )
    parser.add_argument("--output", type=Path, default=Path("spidr-eval"), help="report folder (default: spidr-eval)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the report of an earlier run in the --output folder"
    )
    parser.add_argument("--num-clusters", type=int, default=256, help="k-means clusters (default: 256)")
    parser.add_argument("--kmeans-frames", type=int, default=30_000, help="frames to fit k-means on (default: 30000)")
    parser.add_argument(
        "--refit-kmeans",
        action="store_true",
        help="fit k-means on every layer, also on the one whose centroids the model stores (`spidr-hf kmeans`); "
        "by default that layer's units are the stored centroids' units, as the pipeline and extract give them",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass (default: 8)")
    parser.add_argument("--max-utterances", type=int, default=None, help="evaluate a random subset of dev utterances")
    parser.add_argument(
        "--max-size-group",
        type=_optional_int,
        default=10,
        help="ABX: at most this many tokens per (phone, context, speaker); 'none' for all (default: 10)",
    )
    parser.add_argument(
        "--max-x-across",
        type=_optional_int,
        default=5,
        help="ABX across-speaker: at most this many X speakers per cell group; 'none' for all (default: 5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of subsampling, k-means and the random init")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype the model and its random init run in (bfloat16: faster on CUDA and on CPUs with bf16 "
        "instructions; features are cast to float32 for ABX and k-means)",
    )


def check_output(output: Path, overwrite: bool) -> None:
    """Before any work: the report folder can be written and holds no earlier report, unless it may be replaced."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; the report needs a folder")
    if (output / RESULTS_FILE).exists() and not overwrite:
        raise ValueError(
            f"{output} already holds a report ({RESULTS_FILE}); pass --overwrite to replace it, or choose another "
            "folder"
        )
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"Cannot create the report folder {output}: {error.strerror}") from error
    if not os.access(output, os.W_OK):
        raise ValueError(f"Cannot write the report into {output}: permission denied")


def run(args: argparse.Namespace) -> int:
    check_source(args.dataset, args.item, args.audio, args.alignments, args.kmeans_audio)
    check_output(args.output, args.overwrite)
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
    )
    print(format_table(report))
    if any(result.system == "random_init" for result in report.results):
        print(format_comparison(report))
    print(f"Wrote {args.output / RESULTS_FILE} and plots")
    return 0
