"""`spidr-hf` command line: see `spidr_hf_cli`, which parses arguments without importing torch."""

from spidr_hf_cli import main

__all__ = ["main"]
