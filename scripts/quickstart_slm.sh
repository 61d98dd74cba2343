#!/usr/bin/env bash
# The spoken-LM ladder on CPU: a benchmark spoken by flite, then for each unit source a tiny unit LM trained on the
# units of the built-in corpus and its zero-shot sWUGGY / sBLIMP scores.
#   scripts/quickstart_slm.sh [OUT] [QUICKSTART_DIR]   (defaults: runs/quickstart-slm, runs/quickstart)
# Unit sources: gold phones, the quickstart model's codebook units and k-means units of layers 2, 4 and 6, the
# codebook units of its random initialisation, k-means units of log-mel frames (the spectral baseline), and the
# phones of the whole sentence pool as text (12 h of speech: the topline with enough language to be above chance).
# Runs the quickstart first when QUICKSTART_DIR has no model; reruns resume.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-runs/quickstart-slm}"
quick="${2:-runs/quickstart}"
model="$quick/model"
corpus="$quick/corpus"
benchmark="$work/benchmark"
steps=200  # tiny ULM steps per source (training/configs/ulm_tiny.yaml)
if [[ ! -f "$model/config.json" ]]; then
    echo "== No quickstart model in $quick: running the quickstart first"
    scripts/quickstart.sh "$quick"
fi
mkdir -p "$work"

echo "== 1/3 The benchmark: words vs pseudo-words, grammatical vs not, 4 flite voices (sLM21 layout)"
[[ -f "$benchmark/syntactic/dev/gold.csv" ]] || spidr-hf slm-benchmark "$benchmark" --words 100 --sentences 100

echo "== 2/3 The unit sources"
# k-means units of three layers (`kmeans` is layer 4's), for ABX and PNMI against the scores across layers; fitted
# on 30,000 frames (10 min of the corpus' speech, plenty for 64 centroids) rather than the default 100,000
for layer in 2 4 6; do
    name=kmeans_layer$layer
    [[ $layer == 4 ]] && name=kmeans
    [[ -f "$work/models/$name/config.json" ]] || spidr-hf kmeans "$model" --dataset "$corpus" --layer "$layer" \
        --num-clusters 64 --kmeans-frames 30000 --output "$work/models/$name"
done
python - "$model" "$work/models/random_init" "$corpus" "$benchmark" "$work/phones" "$work/log_mel" \
    "$work/text_phones" <<'PYTHON'
import shutil
import sys
from pathlib import Path

import torch

from spidr_hf import SpidrConfig, SpidrFeatureExtractor, SpidrForPreTraining
from spidr_hf.slm.baselines import (
    benchmark_log_mel_units,
    benchmark_phone_units,
    corpus_log_mel_units,
    corpus_phone_units,
    text_phone_units,
)

model, random_init, corpus, benchmark, phones, log_mel, text_phones = map(Path, sys.argv[1:])


def missing(folder: Path, *parts: str) -> bool:
    """Whether `folder/parts[-1]` is not written yet; then its parts that a run cut short left are removed."""
    if (folder / parts[-1] / "extract.json").exists() or (folder / parts[-1] / "syntactic" / "extract.json").exists():
        return False
    for part in parts:
        shutil.rmtree(folder / part, ignore_errors=True)
    return True


if not (random_init / "config.json").exists():  # the same architecture with its initial random weights
    torch.manual_seed(0)
    SpidrForPreTraining(SpidrConfig.from_pretrained(model)).save_pretrained(random_init)
    SpidrFeatureExtractor().save_pretrained(random_init)
if missing(phones, "train-units", "benchmark-units"):
    corpus_phone_units(corpus, phones / "train-units")
    benchmark_phone_units(benchmark, phones / "benchmark-units")
if missing(log_mel, "train-units", "benchmark-units"):  # k-means of 64 on the train split's log-mel frames
    log_mel_kmeans = corpus_log_mel_units(corpus, log_mel / "train-units")
    benchmark_log_mel_units(log_mel_kmeans, benchmark, log_mel / "benchmark-units")
if missing(text_phones, "train-units"):  # the phones of the whole sentence pool: 12 h of speech, as text
    text_phone_units(text_phones / "train-units")
PYTHON

echo "== 3/3 A unit LM per source, and its scores"
for source in phones codebook kmeans_layer2 kmeans kmeans_layer6 random_init log_mel text_phones; do
    echo "-- $source"
    units_model="" kind="" benchmark_units="$work/$source/benchmark-units" source_steps="$steps"
    case "$source" in
        codebook) units_model="$model" kind=codebook ;;
        kmeans*) units_model="$work/models/$source" kind=kmeans ;;
        random_init) units_model="$work/models/random_init" kind=codebook ;;
        # 24 times the corpus' language: more steps to learn it; scored with the benchmark's gold phones
        text_phones) benchmark_units="$work/phones/benchmark-units" source_steps=600 ;;
    esac
    if [[ -n "$units_model" && ! -f "$work/$source/train-units/extract.json" ]]; then
        spidr-hf extract "$units_model" "$corpus/wavs" "$work/$source/train-units" --units "$kind" \
            --units-format parquet --device cpu
    fi
    if [[ ! -f "$work/$source/ulm/config.json" ]]; then
        mkdir -p "$work/$source"
        python training/train_ulm.py training/configs/ulm_tiny.yaml --units="$work/$source/train-units" \
            --output_dir="$work/$source/ulm" --max_steps="$source_steps" > "$work/$source/train.log" 2>&1 ||
            { tail -20 "$work/$source/train.log"; exit 1; }
        grep -o "Held-out loss: .*" "$work/$source/train.log"
    fi
    if [[ -n "$units_model" ]]; then
        spidr-hf slm-score "$work/$source/ulm" --units-model "$units_model" --data "$benchmark" --output "$work/$source" \
            --device cpu --overwrite
    else
        spidr-hf slm-score "$work/$source/ulm" --units "$benchmark_units" --data "$benchmark" \
            --output "$work/$source" --device cpu --overwrite
    fi
done
python scripts/slm_ladder_summary.py "$work" --evaluation "$quick/evaluation/results.json"
