#!/usr/bin/env bash
# Install spidr-hf with its system packages on a fresh Debian/Ubuntu machine (CPU).
#   scripts/install.sh [EXTRAS]   e.g. scripts/install.sh train   (default: train)
# GPU users: install the CUDA build of torch and the matching torchcodec first, then `pip install -e ".[train]"`.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train}"

# flite synthesizes the built-in corpus from the sentences of `fortunes`; FFmpeg is what torchcodec decodes with;
# wamerican's word list keeps real words out of the spoken-LM benchmark's pseudo-words.
packages=(flite fortunes ffmpeg wamerican)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
fi

# torch and torchcodec must match: torch 2.13 <-> torchcodec 0.13 (a newer torchcodec fails to import).
python -m pip install -q "torch==2.13.0" "torchcodec==0.13.*"
python -m pip install -q -e ".[${extras}]"
if [[ "$extras" == dev ]]; then
    # The reference implementation, an oracle for the parity tests only (CC BY-NC 4.0; its entry points need Python 3.12)
    python -m pip install -q --no-deps --ignore-requires-python "spidr==0.2.0"
    # transformers' own common model tests of the installed version, from its source distribution, into a cache
    # folder outside the repository (tests/test_transformers_common.py runs them over every SpidR class, offline)
    python scripts/fetch_transformers_tests.py
fi
