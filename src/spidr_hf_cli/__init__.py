"""
The `spidr-hf` command line (also `python -m spidr_hf`): every sub-command's arguments (`arguments`), what each does
with them (`commands`: a call of the library function that does the job), and the rule for errors: a user error
(`spidr_hf.errors.is_user_error`) is one line, a bug keeps its traceback. The training scripts (training/*.py) follow
the same rule through `run_script`.

It lives beside the `spidr_hf` package rather than in it because importing `spidr_hf` registers the model with
transformers, which imports torch (seconds): parsing, `--help` and bad-argument errors here import neither.
"""

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence

from . import arguments, commands

# sub-command -> (the function of `commands` that runs it, one-line help, its arguments)
SUBCOMMANDS: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = {
    "convert": (
        "convert",
        "convert an official SpidR/DinoSR checkpoint to a Hub-ready folder",
        arguments.convert_arguments,
    ),
    "push": (
        "push",
        "assemble, check and upload a model to the Hugging Face Hub, with its model card",
        arguments.push_arguments,
    ),
    "corpus": (
        "corpus",
        "synthesize the built-in phone-aligned speech corpus with flite",
        arguments.corpus_arguments,
    ),
    "extract": (
        "extract",
        "write a model's features (.pt per file) and/or units for an audio folder, in one or many processes",
        arguments.extract_arguments,
    ),
    "slm-benchmark": (
        "slm_benchmark",
        "speak a spoken-LM benchmark (words vs pseudo-words, grammatical vs not, story endings) with flite",
        arguments.slm_benchmark_arguments,
    ),
    "slm-score": (
        "slm_score",
        "score a unit LM zero-shot on sWUGGY, sBLIMP, sSC and tSC pairs, with a ZeroSpeech submission",
        arguments.slm_score_arguments,
    ),
    "push-units": (
        "push_units",
        "upload the parquet units of `spidr-hf extract` to the Hub as a dataset, with its card",
        arguments.push_units_arguments,
    ),
    "kmeans": (
        "kmeans",
        "fit k-means units on a layer and store the centroids with the model",
        arguments.kmeans_arguments,
    ),
    "evaluate": (
        "evaluate",
        "ABX and unit-quality evaluation of a model on a phone-aligned corpus",
        arguments.evaluate_arguments,
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
    command = getattr(commands, SUBCOMMANDS[args.command][0])
    with user_errors_in_one_line(f"spidr-hf {args.command}", exit_code=2):
        return command(args)


def run_script(script_main: Callable[[list[str]], object], argv: list[str], name: str) -> None:
    """Run a training script's `main(argv)` (training/*.py) as the sub-commands run: user errors in one line."""
    with user_errors_in_one_line(name, exit_code=1):
        script_main(argv)


@contextlib.contextmanager
def user_errors_in_one_line(name: str, exit_code: int) -> Iterator[None]:
    """A user error (`spidr_hf.errors.is_user_error`) exits with `name: error: message`; a bug keeps its traceback."""
    try:
        yield
    except ValueError as error:
        from spidr_hf.errors import is_user_error

        if not is_user_error(error):  # a bug, not the input: its traceback
            raise
        sys.stderr.write(f"{name}: error: {error}\n")
        raise SystemExit(exit_code) from None


if __name__ == "__main__":
    sys.exit(main())
