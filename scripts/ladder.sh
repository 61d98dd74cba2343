#!/usr/bin/env bash
# The spoken-LM ladder on CPU, one resumable command: a flite corpus of --hours of speech, a SpidR pretrained on it,
# and per unit source a unit LM trained on the corpus' units and scored on sWUGGY-, sBLIMP-, sSC- and tSC-like pairs
# with 95 % intervals, beside ABX and PNMI. A rerun goes on where a run stopped.
#   scripts/ladder.sh [--hours 10.5] [--work runs/ladder] [--model FOLDER] [--tiny]   (scripts/slm_ladder.py --help)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/slm_ladder.py "$@"
