"""The `results.json` schema that `spidr-hf evaluate` writes and the model cards read."""

SYSTEMS = ("model", "random_init", "log_mel")
REPRESENTATIONS = ("layer_results", "codebook", "kmeans", "log_mel")
# metric -> (label, value format), in report order
METRICS = {
    "abx_within": ("ABX within (%)", ".2f"),
    "abx_across": ("ABX across (%)", ".2f"),
    "pnmi": ("PNMI", ".3f"),
    "phone_purity": ("phone purity", ".3f"),
    "cluster_purity": ("cluster purity", ".3f"),
    "codebook_perplexity": ("codebook perplexity", ".1f"),
    "active_codewords": ("active codewords", ".0f"),
    "bitrate": ("bitrate (bit/s)", ".1f"),
}
