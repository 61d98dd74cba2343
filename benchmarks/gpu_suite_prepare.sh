#!/usr/bin/env bash
# Prepares what benchmarks/gpu_suite.py needs on a lent GPU machine beyond the working tree: the reference's wheel
# (spidr==0.2.0, pure Python, 53 kB) in .whl/, which the run carries (docs/speed.md, "The GPU suite"). The machines'
# image has torch 2.11, transformers, numpy, scipy, scikit-learn and tqdm, and lacks torchcodec, datasets and FFmpeg,
# which the suite does without: it writes 16 kHz 16-bit wav, which spidr_hf.data.audio reads with the standard library
# where torchcodec is missing. Run from anywhere in the repository; needs pip and a package index.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

# .whl/ stays out of git (and so travels only as a carried path)
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

rm -rf .whl && mkdir .whl
# The machines run Python 3.12 on x86-64 (the wheel is pure Python; the platforms only let pip choose it)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl spidr==0.2.0

# What travels: tracked and untracked-but-not-ignored files, and the carried .whl/; at most 64 MiB in all
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
    awk '{s += $1} END {print s + 0}')
wheel_bytes=$(du -sb .whl | cut -f1)
total=$((tree_bytes + wheel_bytes))
awk -v t="$tree_bytes" -v w="$wheel_bytes" 'BEGIN {
    printf "travels: working tree %.1f MiB + .whl %.2f MiB = %.1f MiB (limit 64 MiB)\n", t / 2^20, w / 2^20, (t + w) / 2^20
}'
if ((total > 64 * 1048576)); then
    echo "gpu_suite_prepare: more than 64 MiB would travel: ignore or remove large untracked files" >&2
    exit 1
fi
ls .whl
