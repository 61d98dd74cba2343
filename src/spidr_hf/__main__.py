"""`python -m spidr_hf`: the `spidr-hf` command line."""

import sys

from spidr_hf_cli import main

sys.exit(main())
