"""`spidr-hf` command line: one sub-command per module, each module providing `add_arguments` and `run`."""

import argparse
import importlib
import sys

# sub-command -> (module, one-line help). Modules are imported only when their sub-command runs.
SUBCOMMANDS = {
    "convert": ("spidr_hf.convert", "convert an official SpidR/DinoSR checkpoint to a Hub-ready folder"),
    "push": ("spidr_hf.push", "assemble, check and upload a model to the Hugging Face Hub, with its model card"),
    "corpus": ("spidr_hf.corpus", "synthesize the built-in phone-aligned speech corpus with flite"),
    "extract": ("spidr_hf.extract", "write a model's features (.pt per file) and/or units for an audio folder"),
    "kmeans": ("spidr_hf.kmeans", "fit k-means units on a layer and store the centroids with the model"),
    "evaluate": ("spidr_hf.evaluation.cli", "ABX and unit-quality evaluation of a model on a phone-aligned corpus"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="spidr-hf", description="SpidR / DinoSR for Hugging Face Transformers")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(subparser)
    args = parser.parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return module.run(args)
    except ValueError as error:  # bad input or configuration: a one-line message, not a traceback
        parser.exit(2, f"spidr-hf {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
