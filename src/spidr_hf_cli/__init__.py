"""
The `spidr-hf` command line (also `python -m spidr_hf`): the arguments of every sub-command in one vocabulary.

It lives beside the `spidr_hf` package rather than in it because importing `spidr_hf` registers the model with
transformers, which imports torch (seconds): parsing, `--help` and bad-argument errors here import neither, and each
sub-command imports its `spidr_hf` module only when it runs. The defaults and choices the library has too are checked
against the library's by a test (tests/test_cli.py).
"""

import argparse
import importlib
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

UNIT_KINDS = ("codebook", "kmeans")  # spidr_hf.model.modeling_spidr.UNIT_KINDS
DTYPES = ("float32", "bfloat16")  # spidr_hf.model.loading.DTYPES
OBJECTIVES = ("spidr", "dinosr")  # spidr_hf.model.configuration_spidr.OBJECTIVES
# spidr_hf.units.extract.ACCELERATOR_BATCH_SECONDS, CPU_BATCH_SECONDS
ACCELERATOR_BATCH_SECONDS, CPU_BATCH_SECONDS = 200.0, 20.0
DEFAULT_CHUNK_SECONDS = 60.0  # spidr_hf.units.extract.DEFAULT_CHUNK_SECONDS
UNITS_FORMATS = ("txt", "jsonl", "parquet")  # spidr_hf.units.formats.UNITS_FORMATS
DEFAULT_BATCH_SIZE = 8  # spidr_hf.evaluation.evaluate_model, spidr_hf.units.kmeans.fit_centroids
DEFAULT_NUM_CLUSTERS = 256
DEFAULT_EVALUATE_KMEANS_FRAMES = 30_000  # spidr_hf.evaluation.evaluate_model
DEFAULT_KMEANS_FRAMES = 100_000  # spidr_hf.units.kmeans.DEFAULT_FRAMES: 2000 s at 50 Hz, for a few hundred centroids
DEFAULT_KMEANS_MEMORY_FRAMES = 500_000  # spidr_hf.units.kmeans.DEFAULT_MEMORY_FRAMES
DEFAULT_CORPUS_HOURS, DEFAULT_SPEAKERS, DEFAULT_DEV_SPEAKERS = 1.0, 8, 2  # spidr_hf.data.corpus.build_corpus


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option, kept for one release: it sets the new option and warns."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        warnings.warn(
            f"{option_string} is deprecated and will be removed in the next release: use {self.new}",
            FutureWarning,
            stacklevel=2,
        )
        if isinstance(getattr(namespace, self.dest, None), list) and not isinstance(values, list):
            values = [*getattr(namespace, self.dest), values]
        setattr(namespace, self.dest, values)


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    """Accept `old` for one release as a spelling of `new`, hidden from --help."""
    dest = new.lstrip("-").replace("-", "_")
    parser.add_argument(old, action=DeprecatedAlias, dest=dest, new=new, help=argparse.SUPPRESS, **kwargs)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


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


# ---- shared arguments: one name, one meaning ----
def add_model(parser: argparse.ArgumentParser, what: str = "a SpidR/DinoSR model") -> None:
    parser.add_argument("model", metavar="MODEL", help=f"folder or Hub id of {what}")


def add_device_and_dtype(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", help="torch device, e.g. cpu, cuda or cuda:1 (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype the model runs in (bfloat16: faster on CUDA and on CPUs with bf16 instructions); features are "
        "cast to float32 after the forward pass",
    )


def add_batch_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"utterances per forward pass (default: {DEFAULT_BATCH_SIZE})",
    )


def add_kmeans_options(parser: argparse.ArgumentParser, frames: int) -> None:
    parser.add_argument(
        "--num-clusters",
        type=positive_int,
        default=DEFAULT_NUM_CLUSTERS,
        help=f"k-means clusters (default: {DEFAULT_NUM_CLUSTERS})",
    )
    parser.add_argument(
        "--kmeans-frames", type=positive_int, default=frames, help=f"frames to fit k-means on (default: {frames})"
    )


def add_seed(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--seed", type=int, default=0, help=f"seed of {what} (default: 0)")


# ---- sub-commands ----
def convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="a checkpoint (.pt of the reference or SpidR-Adapt, fairseq .ckpt): a file, an https:// URL, a Hugging "
        "Face Hub repository ORG/NAME or file ORG/NAME/FILE, or a reference hub name (spidr_base, "
        "dinosr_base_reproduced, dinosr_base_original)",
    )
    parser.add_argument("destination", type=Path, help="new folder for the Hub-ready model")
    parser.add_argument("--model-type", choices=OBJECTIVES, default=None, help="default: config.json, else spidr")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of a Hub repository (default: main)")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="the run's config.json (default: the one beside the checkpoint, in its folder, repository or URL base)",
    )


def corpus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "out_dir", metavar="OUT_DIR", type=Path, help="output folder (re-running resumes and reuses finished wavs)"
    )
    parser.add_argument(
        "--hours",
        type=positive_float,
        default=DEFAULT_CORPUS_HOURS,
        help=f"hours of speech in all (default: {DEFAULT_CORPUS_HOURS:g})",
    )
    parser.add_argument(
        "--speakers",
        type=int,
        default=DEFAULT_SPEAKERS,
        help=f"number of speakers, 2 to the number of flite voices (default: {DEFAULT_SPEAKERS})",
    )
    parser.add_argument(
        "--dev-speakers",
        type=int,
        default=DEFAULT_DEV_SPEAKERS,
        help=f"speakers held out for dev (default: {DEFAULT_DEV_SPEAKERS})",
    )
    add_seed(parser, "the sentence draw")
    parser.add_argument("--num-workers", type=int, default=None, help="parallel flite processes (default: all cores)")


def extract_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
    parser.add_argument(
        "input",
        help="audio folder (searched recursively for audio files), one audio file, or manifest text file (one audio "
        "path per line, relative to the manifest's folder)",
    )
    parser.add_argument(
        "output", help="output folder: OUTPUT/<relative path>.pt per audio file, and the units file if asked for"
    )
    parser.add_argument(
        "--layer",
        type=int,
        help="1-based encoder layer of features and units (default: the model's default feature layer, 6 for "
        "SpidR base; with --units kmeans, the layer of the model's k-means centroids)",
    )
    parser.add_argument(
        "--hidden-states",
        action="store_true",
        help="features from the residual stream after the layer (0: encoder input) instead of its layer result",
    )
    parser.add_argument("--features", action="store_true", help="write features (the default unless --units is given)")
    parser.add_argument(
        "--units", choices=UNIT_KINDS, help="write units: argmax of the layer's codebook head, or k-means"
    )
    parser.add_argument(
        "--units-file",
        help="where the units go (default OUTPUT/units.txt, OUTPUT/units.jsonl, or the folder OUTPUT/units for "
        "parquet)",
    )
    parser.add_argument(
        "--units-format",
        choices=UNITS_FORMATS,
        help='txt: \'id<TAB>u1 u2 ...\' lines; jsonl: {"id": ..., "units": [...]} lines; parquet: a `datasets` '
        "dataset (id, units, num_frames, and durations with --deduplicate) with a dataset card (default: from the "
        "--units-file suffix, else txt)",
    )
    parser.add_argument("--deduplicate", action="store_true", help="merge runs of the same unit into one")
    parser.add_argument(
        "--batch-seconds",
        type=positive_float,
        help=f"padded audio per forward pass, in seconds (default {ACCELERATOR_BATCH_SECONDS:g} on a GPU, "
        f"{CPU_BATCH_SECONDS:g} on CPU); files are batched by duration, and longer files go alone",
    )
    parser.add_argument(
        "--shard",
        metavar="K/N",
        help="do part K (0-based) of N of the job, for independent jobs; 'slurm': the task of a SLURM job array. "
        "Under torchrun or accelerate launch, each process does its part of that",
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        help="processes decoding audio ahead of the model (default: one per spare core, at most 4)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder (pays off on long jobs)")
    parser.add_argument(
        "--chunk-seconds",
        type=positive_float,
        default=DEFAULT_CHUNK_SECONDS,
        help="files longer than this go through in overlapping chunks of this length, stitched as the pipelines do, "
        f"so that memory stays bounded (default: {DEFAULT_CHUNK_SECONDS:g})",
    )
    add_device_and_dtype(parser)


def kmeans_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser, "a saved SpidR model (training output, convert or push folder)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", type=Path, help="a `spidr-hf corpus` folder (its --split is used)")
    source.add_argument("--audio", type=Path, help="a folder of audio files (any format FFmpeg reads)")
    parser.add_argument("--split", default="train", help="split of --dataset (default: train)")
    parser.add_argument(
        "--layer", type=int, default=None, help="encoder layer, 1-based (default: 6, or the last of a shallower model)"
    )
    add_kmeans_options(parser, DEFAULT_KMEANS_FRAMES)
    deprecated_alias(parser, "--clusters", "--num-clusters", type=positive_int)
    deprecated_alias(parser, "--frames", "--kmeans-frames", type=positive_int)
    parser.add_argument(
        "--kmeans-memory-frames",
        type=positive_int,
        default=DEFAULT_KMEANS_MEMORY_FRAMES,
        help="frames held in memory at once: beyond them, --kmeans-frames stream through k-means in chunks "
        f"(default: {DEFAULT_KMEANS_MEMORY_FRAMES:,})",
    )
    add_batch_size(parser)
    add_seed(parser, "the audio draw and k-means")
    add_device_and_dtype(parser)
    parser.add_argument("--output", type=Path, help="write the model with its centroids here (default: in place)")


def evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
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
    add_kmeans_options(parser, DEFAULT_EVALUATE_KMEANS_FRAMES)
    parser.add_argument(
        "--refit-kmeans",
        action="store_true",
        help="fit k-means on every layer, also on the one whose centroids the model stores (`spidr-hf kmeans`); "
        "by default that layer's units are the stored centroids' units, as the pipeline and extract give them",
    )
    add_batch_size(parser)
    parser.add_argument(
        "--max-utterances", type=positive_int, default=None, help="evaluate a random subset of dev utterances"
    )
    parser.add_argument(
        "--max-size-group",
        type=optional_int,
        default=10,
        help="ABX: at most this many tokens per (phone, context, speaker); 'none' for all (default: 10)",
    )
    parser.add_argument(
        "--max-x-across",
        type=optional_int,
        default=5,
        help="ABX across-speaker: at most this many X speakers per cell group; 'none' for all (default: 5)",
    )
    add_seed(parser, "subsampling, k-means and the random init")
    add_device_and_dtype(parser)


def push_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser, "a saved SpidrForPreTraining model (spidr-hf convert or training)")
    add_hub_upload(parser, "release")
    parser.add_argument("--evaluation", type=Path, help="spidr-hf evaluate JSON: figures for the card and model-index")
    parser.add_argument(
        "--official",
        help="the model is this converted official checkpoint (e.g. spidr-base): use its card (source, license, "
        "published figures)",
    )
    parser.add_argument("--license", help="Hub license id of the weights (required unless --official)")
    parser.add_argument(
        "--train-dataset", action="append", default=[], help="Hub id of a training dataset, for the card (repeatable)"
    )
    # --dataset names a corpus folder in every other command
    deprecated_alias(parser, "--dataset", "--train-dataset")
    parser.add_argument("--base-model", help="Hub id of the model this one was trained from")


def add_hub_upload(parser: argparse.ArgumentParser, what: str) -> None:
    """The options of an upload to the Hub, the same for every command that uploads."""
    parser.add_argument("--repo-id", required=True, help="Hub repository, ORG/NAME")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to push to (created if needed); default: main")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of pushing directly")
    parser.add_argument(
        "--dry-run", type=Path, metavar="OUT", help=f"write and check the {what} folder at OUT, upload nothing"
    )


def push_units_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "output", type=Path, help="the OUTPUT folder of a finished `spidr-hf extract --units-format parquet`"
    )
    add_hub_upload(parser, "dataset")


def slm_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="a new or empty folder for the benchmark")
    parser.add_argument("--words", type=positive_int, default=100, help="word / pseudo-word pairs (default: 100)")
    parser.add_argument("--sentences", type=positive_int, default=100, help="sentence pairs (default: 100)")
    parser.add_argument("--voices", type=positive_int, default=4, help="flite voices speaking each item (default: 4)")
    add_seed(parser, "the words, pseudo-words and sentences drawn")
    parser.add_argument("--num-workers", type=int, default=None, help="parallel flite processes (default: all cores)")


def slm_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ulm", metavar="ULM", help="folder or Hub id of a unit LM (training/train_ulm.py)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--units-model", help="folder or Hub id of the SpidR model whose units the ULM was trained on")
    source.add_argument(
        "--units",
        type=Path,
        help="the benchmark's units already made: UNITS/lexical and UNITS/syntactic in spidr-hf extract's format "
        "(e.g. gold phones: spidr_hf.units.phones)",
    )
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        help="a benchmark in the ZeroSpeech 2021 sLM21 layout (lexical/dev, syntactic/dev)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("slm-score"),
        help="units, submission folder and scores.json (default: slm-score)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the scores of an earlier run in the --output folder"
    )
    parser.add_argument(
        "--mean-per-unit",
        action="store_true",
        help="score a file by its mean log-probability per unit instead of the sum (the ZeroSpeech 2021 baselines')",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=16, help="sequences per LM forward pass (default: 16)"
    )
    add_device_and_dtype(parser)


# sub-command -> (module whose `run(args)` does the work, one-line help, arguments)
SUBCOMMANDS: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = {
    "convert": (
        "spidr_hf.hub.convert",
        "convert an official SpidR/DinoSR checkpoint to a Hub-ready folder",
        convert_arguments,
    ),
    "push": (
        "spidr_hf.hub.push",
        "assemble, check and upload a model to the Hugging Face Hub, with its model card",
        push_arguments,
    ),
    "corpus": (
        "spidr_hf.data.corpus",
        "synthesize the built-in phone-aligned speech corpus with flite",
        corpus_arguments,
    ),
    "extract": (
        "spidr_hf.units.extract",
        "write a model's features (.pt per file) and/or units for an audio folder, in one or many processes",
        extract_arguments,
    ),
    "slm-benchmark": (
        "spidr_hf.slm.benchmark",
        "speak a spoken-LM benchmark (words vs pseudo-words, grammatical vs not) with flite, in the sLM21 layout",
        slm_benchmark_arguments,
    ),
    "slm-score": (
        "spidr_hf.slm.score",
        "score a unit LM zero-shot on an sLM21-layout benchmark (sWUGGY, sBLIMP), with a ZeroSpeech submission",
        slm_score_arguments,
    ),
    "push-units": (
        "spidr_hf.units.card",
        "upload the parquet units of `spidr-hf extract` to the Hub as a dataset, with its card",
        push_units_arguments,
    ),
    "kmeans": (
        "spidr_hf.units.kmeans",
        "fit k-means units on a layer and store the centroids with the model",
        kmeans_arguments,
    ),
    "evaluate": (
        "spidr_hf.evaluation.cli",
        "ABX and unit-quality evaluation of a model on a phone-aligned corpus",
        evaluate_arguments,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spidr-hf", description="SpidR / DinoSR for Hugging Face Transformers")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text, add_arguments) in SUBCOMMANDS.items():
        add_arguments(subparsers.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return module.run(args)
    except ValueError as error:
        from spidr_hf.errors import is_user_error

        if not is_user_error(error):  # a bug, not the input: its traceback
            raise
        parser.exit(2, f"spidr-hf {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
