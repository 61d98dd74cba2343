"""
How much bf16 changes a trained model's outputs: per layer, the share of frames whose codebook units and k-means units
(the same centroids, fitted on the fp32 features) are those of fp32, and the cosine of the bf16 layer results to fp32.

    python benchmarks/bf16_agreement.py runs/quickstart/model --dataset runs/quickstart/corpus --layers 4 5 6
"""

import argparse

import torch
import torch.nn.functional as F

from spidr_hf.data.aligned_speech import load_split
from spidr_hf.model.loading import check_device, load
from spidr_hf.model.representations import ModelRepresentations
from spidr_hf.units.kmeans import fit_kmeans


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="folder or Hub id of a trained SpidR model with codebook heads")
    parser.add_argument("--dataset", required=True, help="a `spidr-hf corpus` folder (its dev split is used)")
    parser.add_argument("--layers", type=int, nargs="+", required=True, help="layers with a codebook head")
    parser.add_argument("--utterances", type=int, default=32, help="dev utterances (default: 32)")
    parser.add_argument("--clusters", type=int, default=64, help="k-means clusters (default: 64)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    args = parser.parse_args(argv)
    device = check_device(args.device)
    audios = [utterance.audio for utterance in load_split(args.dataset, "dev", args.utterances, seed=0)]
    outputs = {}
    for dtype in ("float32", "bfloat16"):
        loaded = load(args.model, "full", dtype=dtype)
        model, feature_extractor = loaded.model, loaded.feature_extractor
        representations = ModelRepresentations(model, feature_extractor, args.layers, args.layers, device)
        outputs[dtype] = [representations(audios[start : start + 8]) for start in range(0, len(audios), 8)]
    for layer in args.layers:
        features = {
            dtype: torch.cat([f for batch in out for f in batch.features[layer]]) for dtype, out in outputs.items()
        }
        units = {dtype: torch.cat([u for batch in out for u in batch.units[layer]]) for dtype, out in outputs.items()}
        kmeans = fit_kmeans(features["float32"].numpy(), args.clusters, seed=0)
        kmeans_units = {dtype: kmeans.predict(values.numpy()) for dtype, values in features.items()}
        codebook_agreement = (units["float32"] == units["bfloat16"]).float().mean().item()
        kmeans_agreement = (kmeans_units["float32"] == kmeans_units["bfloat16"]).mean()
        cosine = F.cosine_similarity(features["float32"], features["bfloat16"], dim=-1).mean().item()
        print(
            f"layer {layer}: {len(units['float32'])} frames, codebook units equal {100 * codebook_agreement:.1f} %, "
            f"k-means units equal {100 * kmeans_agreement:.1f} %, cosine {cosine:.5f}"
        )


if __name__ == "__main__":
    main()
