"""Evaluation report: results.json, a text table and PNG plots (per-layer ABX and PNMI, phone x unit heatmap)."""

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..data.flite import PHONE_CLASSES
from .schema import METRICS, EvaluationReport, EvaluationResult, Metric, Representation, Row

_PHONE_RANK = {phone: rank for rank, phone in enumerate(p for phones in PHONE_CLASSES.values() for p in phones)}
_CLASS_OF = {phone: name for name, phones in PHONE_CLASSES.items() for phone in phones}
# What `write_report` writes; other files of the folder are left alone
RESULTS_FILE, ABX_PLOT, PNMI_PLOT = "results.json", "abx.png", "pnmi.png"
COOCCURRENCE_PLOT = "cooccurrence_{kind}_layer{layer}.png"
REPORT_FILES = (RESULTS_FILE, ABX_PLOT, PNMI_PLOT, COOCCURRENCE_PLOT.format(kind="*", layer="*"))


def write_report(
    report: EvaluationReport, cooccurrences: dict[Row, tuple[list[Hashable], np.ndarray]], output_dir: Path
) -> None:
    """
    results.json, abx.png, pnmi.png (when there is PNMI) and a co-occurrence heatmap for the model's best-PNMI layer
    of each unit kind (`cooccurrences`: the phones and phone x unit counts of each (system, representation, layer)).
    The files an earlier report wrote there are removed first, so that no plot of another run is left beside this one.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    for pattern in REPORT_FILES:
        for path in output_dir.glob(pattern):
            path.unlink()
    report.dump(output_dir / RESULTS_FILE)
    plot_abx(report.results, output_dir / ABX_PLOT)
    if "pnmi" in report.metrics():  # a set evaluated without alignments has no PNMI
        plot_pnmi(report.results, output_dir / PNMI_PLOT)
    for kind in ("codebook", "kmeans"):
        scores = [r for r in report.results if (r.system, r.representation, r.metric) == ("model", kind, "pnmi")]
        if scores:
            best = max(scores, key=lambda result: result.value)
            phones, counts = cooccurrences[best.row]
            title = f"{kind} units of layer {best.layer}: P(phone | unit)"
            plot_path = output_dir / COOCCURRENCE_PLOT.format(kind=kind, layer=best.layer)
            plot_cooccurrence(phones, counts, plot_path, title)


def format_table(report: EvaluationReport) -> str:
    """The results as a fixed-width text table, one row per (system, representation, layer)."""
    metrics = report.metrics()
    header = ["system", "representation", "layer", *metrics]
    lines = [header]
    for (system, representation, layer), values in report.table().items():
        cells = [format(values[m], METRICS[m].format) if m in values else "-" for m in metrics]
        lines.append([system, representation, "-" if layer is None else str(layer), *cells])
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    text = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)) for line in lines]
    summary = [f"{report.model} on {report.dataset} ({report.split}, {report.num_abx_tokens} ABX tokens)"]
    if report.stored_kmeans_layer is not None:
        summary.append(
            f"model k-means units of layer {report.stored_kmeans_layer}: the model's stored centroids; "
            "other k-means units: fitted by this evaluation"
        )
    return "\n".join([*summary, *text])


# Which way is better for the figures the comparison with the random initialisation uses
_BEST = {"abx_within": min, "abx_across": min, "pnmi": max}


@dataclass(frozen=True)
class Comparison:
    """The model's best layer beside the best layer of its random initialisation, for one representation and metric."""

    representation: Representation
    metric: Metric
    trained: EvaluationResult
    initial: EvaluationResult
    better: bool  # strictly better: a tie is no improvement


def compare_to_initialisation(report: EvaluationReport) -> list[Comparison]:
    """
    For each representation and ABX/PNMI metric: the model's best layer beside the best layer of its own random
    initialisation, and whether training improved it.
    """
    best: dict[tuple[str, str, str], EvaluationResult] = {}
    for result in report.results:
        choose = _BEST.get(result.metric)
        if choose is None or result.system not in ("model", "random_init"):
            continue
        key = (result.system, result.representation, result.metric)
        best[key] = result if key not in best else choose(best[key], result, key=lambda r: r.value)
    comparisons = []
    for (system, representation, metric), trained in best.items():
        initial = best.get(("random_init", representation, metric))
        if system != "model" or initial is None:
            continue
        better = _BEST[metric]((trained.value, initial.value)) == trained.value != initial.value
        comparisons.append(Comparison(trained.representation, trained.metric, trained, initial, better))
    return comparisons


def format_comparison(report: EvaluationReport) -> str:
    """Lines saying, per representation and metric, whether training beat the random initialisation."""
    lines = ["Trained model vs its random initialisation (best layer of each):"]
    for item in compare_to_initialisation(report):
        trained, initial = item.trained, item.initial
        label, value_format = METRICS[item.metric]
        lines.append(
            f"  {item.representation:>13} {label:>15}: "
            f"{format(trained.value, value_format)} (layer {trained.layer}) vs "
            f"{format(initial.value, value_format)} (layer {initial.layer})  "
            f"{'better' if item.better else 'NOT better'}"
        )
    return "\n".join(lines)


def _series(results: Sequence[EvaluationResult], metric: Metric) -> dict[tuple[str, str], dict[int | None, float]]:
    series: dict[tuple[str, str], dict[int | None, float]] = {}
    for result in results:
        if result.metric == metric:
            series.setdefault((result.system, result.representation), {})[result.layer] = result.value
    return series


def _plot_per_layer(axes, series: dict[tuple[str, str], dict[int | None, float]]) -> None:
    """One line per (system, representation) over layers; layer-less baselines (log-mel) as horizontal lines."""
    colors = iter(f"C{index}" for index in range(10))
    for (system, representation), values in series.items():
        color = next(colors)
        label = f"{system} ({representation})"
        if None in values:
            axes.axhline(values[None], color=color, linestyle="--", label=label)
        else:
            layers = sorted(values)
            axes.plot(layers, [values[layer] for layer in layers], marker="o", color=color, label=label)
    axes.set_xlabel("layer")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)


def plot_abx(results: Sequence[EvaluationResult], path: Path) -> None:
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    panels = figure.subplots(1, 2, sharey=True)
    for axes, mode in zip(panels, ("within", "across"), strict=True):
        _plot_per_layer(axes, _series(results, f"abx_{mode}"))
        axes.set_title(f"ABX error, {mode} speaker")
        axes.set_ylabel("error (%)")
    # The legend goes on the last panel with lines (across-speaker ABX is undefined for a one-speaker set)
    drawn = [axes for axes in panels if axes.get_legend_handles_labels()[0]]
    if drawn:
        drawn[-1].legend(fontsize="small")
    figure.savefig(path, dpi=120)


def plot_pnmi(results: Sequence[EvaluationResult], path: Path) -> None:
    figure = Figure(figsize=(6, 4.5), layout="constrained")
    axes = figure.subplots()
    _plot_per_layer(axes, _series(results, "pnmi"))
    axes.set_title("Phone-normalized mutual information")
    axes.set_ylabel("PNMI")
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def _base_phone(phone: Hashable) -> str:
    """Lower case without stress digits, so that LibriSpeech-style labels (AH0) find their class."""
    return re.sub(r"\d", "", str(phone)).lower()


def phone_order(phones: list[Hashable]) -> list[int]:
    """Indices of `phones` ordered by phone class (PHONE_CLASSES), unknown phones last in alphabetical order."""
    return sorted(
        range(len(phones)), key=lambda i: (_PHONE_RANK.get(_base_phone(phones[i]), len(_PHONE_RANK)), str(phones[i]))
    )


def plot_cooccurrence(phones: list[Hashable], counts: np.ndarray, path: Path, title: str) -> None:
    """
    Heatmap of P(phone | unit) for the units that occur: phones ordered by class, each unit placed under its most
    likely phone, most specific first.
    """
    rows = phone_order(phones)
    counts = counts[rows][:, counts.sum(0) > 0]
    probs = counts / counts.sum(0, keepdims=True)
    best = probs.argmax(0)
    columns = sorted(range(probs.shape[1]), key=lambda unit: (best[unit], -probs[best[unit], unit]))
    figure = Figure(figsize=(12, max(4.0, 0.18 * len(rows) + 1.5)), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(probs[:, columns], aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
    labels = [str(phones[row]) for row in rows]
    axes.set_yticks(range(len(labels)), labels, fontsize=7)
    classes = [_CLASS_OF.get(_base_phone(label), "other") for label in labels]
    for position in range(1, len(classes)):
        if classes[position] != classes[position - 1]:
            axes.axhline(position - 0.5, color="white", linewidth=0.8)
    axes.set_xticks([])
    axes.set_xlabel(f"{len(columns)} active units, grouped by most likely phone")
    axes.set_ylabel("phone (by class)")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="P(phone | unit)")
    figure.savefig(path, dpi=120)
