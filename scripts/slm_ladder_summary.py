"""
The table and plot of `scripts/quickstart_slm.sh`: sWUGGY / sBLIMP of each unit source beside the ABX and PNMI of the
same units from the quickstart's evaluation, and their correlation across sources.

    python scripts/slm_ladder_summary.py OUT [--evaluation QUICKSTART/evaluation/results.json]
"""

import argparse
import json
from pathlib import Path

import numpy as np

SOURCES = ("phones", "codebook", "kmeans_layer2", "kmeans", "kmeans_layer6", "random_init", "log_mel", "text_phones")
# The evaluation row of each source's units: (system, representation, layer); phones have none (their ABX is 0)
EVALUATION_ROWS = {
    "codebook": ("model", "codebook", 6),
    "kmeans_layer2": ("model", "kmeans", 2),
    "kmeans": ("model", "kmeans", 4),
    "kmeans_layer6": ("model", "kmeans", 6),
    "random_init": ("random_init", "codebook", 6),
    # The evaluation's own log-mel k-means (64 clusters, another sample of frames): the same recipe as the ladder's
    "log_mel": ("log_mel", "kmeans", None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--evaluation", type=Path, help="results.json of `spidr-hf evaluate` on the quickstart model")
    args = parser.parse_args()

    table = {}
    evaluation = {}
    if args.evaluation is not None and args.evaluation.is_file():
        from spidr_hf.evaluation.schema import EvaluationReport

        evaluation = EvaluationReport.load(args.evaluation).table()
    for source in SOURCES:
        path = args.work / source / "scores.json"
        if not path.is_file():
            continue
        scores = json.loads(path.read_text())
        row = {"swuggy": scores["swuggy"]["all"], "sblimp": scores["sblimp"]["all"]}
        row["pairs"] = min(scores["swuggy"]["pairs"], scores["sblimp"]["pairs"])
        row["sblimp_by_type"] = {name: value["score"] for name, value in scores["sblimp"]["by_type"].items()}
        figures = evaluation.get(EVALUATION_ROWS.get(source), {})
        row |= {metric: figures.get(metric) for metric in ("abx_within", "abx_across", "pnmi")}
        table[source] = row
    if not table:
        raise SystemExit(f"No SOURCE/scores.json under {args.work}: run scripts/quickstart_slm.sh {args.work} first")

    lines = [
        "| units | sWUGGY (%) | sBLIMP (%) | ABX within (%) | ABX across (%) | PNMI |",
        "|---|---|---|---|---|---|",
    ]
    for source, row in table.items():
        cells = [f"{row[key]:.1f}" if row[key] is not None else "" for key in ("swuggy", "sblimp")]
        cells += [f"{row[key]:.2f}" if row[key] is not None else "" for key in ("abx_within", "abx_across")]
        cells.append(f"{row['pnmi']:.3f}" if row["pnmi"] is not None else "")
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    correlations = {}
    measured = {name: row for name, row in table.items() if row["abx_within"] is not None}
    for unit_metric in ("abx_within", "pnmi"):
        for lm_metric in ("swuggy", "sblimp"):
            if len(measured) >= 3:
                x = np.array([row[unit_metric] for row in measured.values()])
                y = np.array([row[lm_metric] for row in measured.values()])
                correlations[f"{unit_metric}~{lm_metric}"] = float(np.corrcoef(x, y)[0, 1])
    text = "\n".join(lines)
    if correlations:
        text += (
            "\n\nPearson r over the sources with ABX and PNMI ("
            + str(len(measured))
            + " points): "
            + ", ".join(f"{key} {value:+.2f}" for key, value in correlations.items())
        )
    print(text)
    (args.work / "summary.md").write_text(text + "\n")
    (args.work / "summary.json").write_text(json.dumps({"sources": table, "pearson": correlations}, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = min(row["pairs"] for row in table.values())
    band = chance_band(pairs)
    figure, axes = plt.subplots(figsize=(7, 4))
    positions = np.arange(len(table))
    for offset, metric, label in ((-0.2, "swuggy", "sWUGGY"), (0.2, "sblimp", "sBLIMP")):
        axes.bar(positions + offset, [row[metric] for row in table.values()], width=0.4, label=label)
    axes.axhline(50, color="black", linestyle="--", linewidth=1, label="chance")
    axes.axhspan(50 - band, 50 + band, color="grey", alpha=0.2, zorder=0, label="chance ± 2 s.d.")
    axes.set_xticks(positions, list(table), rotation=30, ha="right")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(30, 100)
    axes.legend(loc="upper right")
    axes.set_title("Tiny unit LMs on the built-in benchmark")
    figure.tight_layout()
    figure.savefig(args.work / "ladder.png", dpi=120)
    plot_correlations(measured, pairs, args.work / "correlation.png")
    plots = "ladder.png and correlation.png" if measured else "ladder.png"
    print(f"Wrote {args.work / 'summary.md'}, summary.json, {plots}")


def chance_band(pairs: int) -> float:
    """Two standard deviations, in points, of an accuracy at chance over `pairs` pairs: coin flips land outside
    50 +- this one time in twenty."""
    return 2 * 100 * np.sqrt(0.25 / pairs)


def plot_correlations(table: dict[str, dict], pairs: int, path: Path) -> None:
    """ABX within and PNMI of each source's units against its sWUGGY and sBLIMP, a panel per pair, sources named."""
    if not table:
        return
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(8, 6.5), sharey="row")
    for column, (unit_metric, unit_label) in enumerate((("abx_within", "ABX within (%)"), ("pnmi", "PNMI"))):
        for row_index, (lm_metric, lm_label) in enumerate((("swuggy", "sWUGGY (%)"), ("sblimp", "sBLIMP (%)"))):
            axis = axes[row_index][column]
            for name, row in table.items():
                axis.scatter(row[unit_metric], row[lm_metric], color="tab:blue")
                axis.annotate(name, (row[unit_metric], row[lm_metric]), fontsize=8, xytext=(3, 3),
                              textcoords="offset points")  # fmt: skip
            axis.axhline(50, color="black", linestyle="--", linewidth=1)
            axis.axhspan(50 - chance_band(pairs), 50 + chance_band(pairs), color="grey", alpha=0.15, zorder=0)
            axis.set_ylim(30, 80)
            axis.set_xlabel(unit_label)
            axis.set_ylabel(lm_label)
    figure.suptitle(f"Unit quality against spoken-LM scores (dashed: chance; grey: chance ± 2 s.d., {pairs} pairs)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
