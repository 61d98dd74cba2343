"""
The arguments of every `spidr-hf` sub-command, in one vocabulary: one name and one meaning for an option across
sub-commands, defaults and choices read from the library's `spidr_hf/defaults.py` (without importing `spidr_hf`,
whose import loads torch: parsing and `--help` stay instant).
"""

import argparse
import importlib.util
import re
import warnings
from pathlib import Path
from types import ModuleType


def library_defaults() -> ModuleType:
    """`spidr_hf/defaults.py` (standard library only), run on its own: found through the import system without
    running the `spidr_hf` package, whose `__init__` registers the model with transformers and so imports torch."""
    package = importlib.util.find_spec("spidr_hf")
    if package is None or not package.submodule_search_locations:
        raise ModuleNotFoundError("spidr_hf is not installed")
    path = Path(next(iter(package.submodule_search_locations))) / "defaults.py"
    spec = importlib.util.spec_from_file_location("spidr_hf_cli._library_defaults", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEFAULTS = library_defaults()
DEVICE_HELP = "torch device, e.g. cpu, cuda or cuda:1 (default: cuda if available, else cpu)"


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


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


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
    parser.add_argument("--device", help=DEVICE_HELP)
    parser.add_argument(
        "--dtype",
        choices=DEFAULTS.DTYPE_NAMES,
        default="float32",
        help="dtype the model runs in (bfloat16: faster on CUDA and on CPUs with bf16 instructions); features are "
        "cast to float32 after the forward pass",
    )


def add_batch_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULTS.BATCH_SIZE,
        help=f"utterances per forward pass (default: {DEFAULTS.BATCH_SIZE})",
    )


def add_kmeans_options(parser: argparse.ArgumentParser, frames: int) -> None:
    parser.add_argument(
        "--num-clusters",
        type=positive_int,
        default=DEFAULTS.NUM_CLUSTERS,
        help=f"k-means clusters (default: {DEFAULTS.NUM_CLUSTERS})",
    )
    parser.add_argument(
        "--kmeans-frames", type=positive_int, default=frames, help=f"frames to fit k-means on (default: {frames})"
    )


def add_seed(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--seed", type=non_negative_int, default=0, help=f"seed of {what} (default: 0)")


# ---- sub-commands ----
def convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        help="a checkpoint (.pt of the reference or SpidR-Adapt, fairseq .ckpt): a file, an https:// URL, a Hugging "
        "Face Hub repository ORG/NAME or file ORG/NAME/FILE, or a reference hub name (spidr_base, "
        "dinosr_base_reproduced, dinosr_base_original)",
    )
    parser.add_argument("destination", type=Path, help="new folder for the Hub-ready model")
    parser.add_argument(
        "--model-type", choices=DEFAULTS.OBJECTIVES, default=None, help="default: config.json, else spidr"
    )
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
        default=DEFAULTS.CORPUS_HOURS,
        help=f"hours of speech in all (default: {DEFAULTS.CORPUS_HOURS:g})",
    )
    parser.add_argument(
        "--speakers",
        type=int,
        default=DEFAULTS.CORPUS_SPEAKERS,
        help=f"number of speakers, 2 to the number of flite voices (default: {DEFAULTS.CORPUS_SPEAKERS})",
    )
    parser.add_argument(
        "--dev-speakers",
        type=int,
        default=DEFAULTS.CORPUS_DEV_SPEAKERS,
        help=f"speakers held out for dev (default: {DEFAULTS.CORPUS_DEV_SPEAKERS})",
    )
    add_seed(parser, "the sentence draw")
    parser.add_argument(
        "--num-workers", type=positive_int, default=None, help="parallel flite processes (default: all cores)"
    )


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
        "--units", choices=DEFAULTS.UNIT_KINDS, help="write units: argmax of the layer's codebook head, or k-means"
    )
    parser.add_argument(
        "--units-file",
        help="where the units go (default OUTPUT/units.txt, OUTPUT/units.jsonl, or the folder OUTPUT/units for "
        "parquet)",
    )
    parser.add_argument(
        "--units-format",
        choices=DEFAULTS.UNITS_FORMATS,
        help='txt: \'id<TAB>u1 u2 ...\' lines; jsonl: {"id": ..., "units": [...]} lines; parquet: a `datasets` '
        "dataset (id, units, num_frames, and durations with --deduplicate) with a dataset card (default: from the "
        "--units-file suffix, else txt)",
    )
    parser.add_argument("--deduplicate", action="store_true", help="merge runs of the same unit into one")
    parser.add_argument(
        "--batch-seconds",
        type=positive_float,
        help=f"padded audio per forward pass, in seconds (default {DEFAULTS.ACCELERATOR_BATCH_SECONDS:g} on a GPU, "
        f"{DEFAULTS.CPU_BATCH_SECONDS:g} on CPU); files are batched by duration, and longer files go alone",
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
        default=DEFAULTS.CHUNK_SECONDS,
        help="files longer than this go through in overlapping chunks of this length, stitched as the pipelines do, "
        f"so that memory stays bounded (default: {DEFAULTS.CHUNK_SECONDS:g})",
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
    add_kmeans_options(parser, DEFAULTS.KMEANS_FRAMES)
    deprecated_alias(parser, "--clusters", "--num-clusters", type=positive_int)
    deprecated_alias(parser, "--frames", "--kmeans-frames", type=positive_int)
    parser.add_argument(
        "--kmeans-memory-frames",
        type=positive_int,
        default=DEFAULTS.KMEANS_MEMORY_FRAMES,
        help="frames held in memory at once: beyond them, --kmeans-frames stream through k-means in chunks "
        f"(default: {DEFAULTS.KMEANS_MEMORY_FRAMES:,})",
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
        choices=DEFAULTS.UNIT_KINDS,
        default=None,
        help="discrete units to evaluate (default: codebook if the checkpoint has trained heads, else kmeans; "
        "kmeans too if the model stores k-means centroids)",
    )
    parser.add_argument("--output", type=Path, default=Path("spidr-eval"), help="report folder (default: spidr-eval)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the report of an earlier run in the --output folder"
    )
    add_kmeans_options(parser, DEFAULTS.EVALUATE_KMEANS_FRAMES)
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
        default=DEFAULTS.ABX_MAX_SIZE_GROUP,
        help="ABX: at most this many tokens per (phone, context, speaker); 'none' for all (default: "
        f"{DEFAULTS.ABX_MAX_SIZE_GROUP})",
    )
    parser.add_argument(
        "--max-x-across",
        type=optional_int,
        default=DEFAULTS.ABX_MAX_X_ACROSS,
        help="ABX across-speaker: at most this many X speakers per cell group; 'none' for all (default: "
        f"{DEFAULTS.ABX_MAX_X_ACROSS})",
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
    parser.add_argument(
        "--words",
        type=positive_int,
        default=DEFAULTS.BENCHMARK_WORDS,
        help=f"word / pseudo-word pairs (default: {DEFAULTS.BENCHMARK_WORDS})",
    )
    parser.add_argument(
        "--sentences",
        type=positive_int,
        default=DEFAULTS.BENCHMARK_SENTENCES,
        help=f"sentence pairs (default: {DEFAULTS.BENCHMARK_SENTENCES})",
    )
    parser.add_argument(
        "--voices",
        type=positive_int,
        default=DEFAULTS.BENCHMARK_VOICES,
        help=f"flite voices speaking each item (default: {DEFAULTS.BENCHMARK_VOICES})",
    )
    parser.add_argument(
        "--stories",
        type=non_negative_int,
        default=DEFAULTS.BENCHMARK_STORIES,
        help="story pairs of each of the sSC-like and tSC-like sets, 0 for none (default: "
        f"{DEFAULTS.BENCHMARK_STORIES})",
    )
    add_seed(parser, "the words, pseudo-words, sentences and stories drawn")
    parser.add_argument(
        "--num-workers", type=positive_int, default=None, help="parallel flite processes (default: all cores)"
    )


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
        type=Path,
        help="a benchmark in the ZeroSpeech 2021 sLM21 layout (lexical/dev, syntactic/dev), with story-cloze folders "
        "sSC/ and tSC/ in slamkit's layout when there (spidr-hf slm-benchmark writes all four)",
    )
    for benchmark, name in (("ssc", "sStoryCloze"), ("tsc", "tStoryCloze")):
        parser.add_argument(
            f"--{benchmark}",
            metavar="FOLDER_OR_DATASET",
            help=f"{name} pairs: a folder of wav files in slamkit's layout (sorted by the number before '_', files 2i "
            "and 2i+1 a pair, the true ending first), or a datasets dataset (a local folder or a Hub id, e.g. "
            f"speed/{name}) with the true and false endings' audio in two columns",
        )
    parser.add_argument(
        "--true-column",
        default=DEFAULTS.STORY_TRUE_COLUMN,
        help=f"a story-cloze dataset's audio column of the true ending (default: {DEFAULTS.STORY_TRUE_COLUMN})",
    )
    parser.add_argument(
        "--false-column",
        default=DEFAULTS.STORY_FALSE_COLUMN,
        help=f"a story-cloze dataset's audio column of the false ending (default: {DEFAULTS.STORY_FALSE_COLUMN})",
    )
    parser.add_argument("--split", help="a story-cloze dataset's split (default: its only one)")
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
        help="submit and print first the mean log-probability per unit (slamkit's) instead of the sum (the ZeroSpeech "
        "2021 baselines'); scores.json has both",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULTS.SLM_SCORE_BATCH_SIZE,
        help=f"sequences per LM forward pass (default: {DEFAULTS.SLM_SCORE_BATCH_SIZE})",
    )
    parser.add_argument("--device", help=DEVICE_HELP)
    parser.add_argument(
        "--units-dtype",
        choices=DEFAULTS.DTYPE_NAMES,
        default="float32",
        help="dtype the units model runs in (the LM's units were extracted in one: the record says which)",
    )
    # --dtype set the units model's dtype, while in every other command it is the dtype of the command's model
    deprecated_alias(parser, "--dtype", "--units-dtype", choices=DEFAULTS.DTYPE_NAMES)
    add_seed(parser, "the bootstrap intervals' draws of pairs")
