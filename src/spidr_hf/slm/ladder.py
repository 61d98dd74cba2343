"""
The spoken-LM ladder's parts, which `scripts/ladder.sh` runs in order: the units of every unit source for a corpus and
a benchmark (SpidR's codebook and k-means units of several layers from one forward pass: `units.joint`), the ABX and
PNMI of each source's units on the corpus' dev split (the evaluation's own metrics, on exactly the units the LMs were
trained on), and the summary: every score with its interval, the pairs of sources that the intervals separate, and
the rank correlation of ABX and PNMI with each score across sources.
"""

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data.aligned_speech import Utterance
from ..data.audio import file_seconds
from ..data.audio_batches import AudioFile
from ..data.corpus import WAV_DIR
from ..data.flite import PHONE_CLASSES
from ..errors import SpidrError
from ..evaluation.abx import abx_error
from ..evaluation.evaluator import dev_tokens
from ..evaluation.items import ITEM_FILE, num_frames, read_item_file
from ..evaluation.units_quality import LABEL_RATE, UNIT_RATE, frame_labels, units_quality
from ..io.atomic_files import write_text_atomically
from ..model.configuration_spidr import SAMPLING_RATE
from ..units.encoder import SpidrUnitEncoder
from ..units.joint import JointUnitEncoder, cached_joint_units
from ..units.record import write_units_folder
from .benchmark import spoken_files
from .statistics import separated, spearman_with_interval

BENCHMARKS = {"swuggy": "sWUGGY", "sblimp": "sBLIMP", "ssc": "sSC", "tsc": "tSC"}
UNIT_METRICS = {"abx_within": "ABX within (%)", "abx_across": "ABX across (%)", "pnmi": "PNMI"}
TRAIN_UNITS, BENCHMARK_UNITS, SCORES = "train-units", "benchmark-units", "score"
# The phones of the frame units of gold phones: flite's set, pauses included (they are frames of the speech)
FRAME_PHONES = tuple(phone for phones in PHONE_CLASSES.values() for phone in phones)


def corpus_files(corpus: Path) -> list[AudioFile]:
    """The utterances of a `spidr-hf corpus` folder (all its splits), by utterance id."""
    paths = sorted((corpus / WAV_DIR).glob("*/*.wav"))
    if not paths:
        raise SpidrError(f"{corpus} holds no {WAV_DIR}/SPEAKER/*.wav: build it with `spidr-hf corpus`")
    return [AudioFile(path, path.stem, file_seconds(path)) for path in paths]


def encode_sources(
    encoders: Mapping[str, SpidrUnitEncoder], corpus: Path, benchmark: Path, output: Path, cache: Path
) -> None:
    """
    Units folders of every encoder (`output/NAME/train-units` for the corpus, `output/NAME/benchmark-units/TASK` for
    the benchmark's tasks) from one pass over all the audio (`JointUnitEncoder`), resumable from `cache`. Written
    last, so that a folder with a record is complete.
    """
    corpus_audio = corpus_files(corpus)
    tasks = {
        task: [AudioFile(file.path, f"{task}/{file.id}", file_seconds(file.path)) for file in files]
        for task, files in spoken_files(benchmark).items()
    }
    files = [AudioFile(file.path, f"corpus/{file.id}", file.seconds) for file in corpus_audio]
    files += [file for task_files in tasks.values() for file in task_files]
    units = cached_joint_units(JointUnitEncoder(encoders), files, cache)
    for name, encoder in encoders.items():
        by_id = units[name]
        folder = output / name
        train = {file.id: by_id[f"corpus/{file.id}"] for file in corpus_audio}
        write_units_folder(folder / TRAIN_UNITS, encoder.identity, train, str(corpus))
        for task, task_files in tasks.items():
            task_units = {file.id.split("/", 1)[1]: by_id[file.id] for file in task_files}
            write_units_folder(folder / BENCHMARK_UNITS / task, encoder.identity, task_units, str(benchmark / task))


def dev_utterances(corpus: Path, max_utterances: int | None, seed: int) -> list[Utterance]:
    """The dev split's utterances with their alignments and without audio (the units stand for it); a seeded subset
    of `max_utterances` of them."""
    from datasets import load_from_disk

    dev = load_from_disk(str(corpus))["dev"].remove_columns("audio")
    if max_utterances is not None and max_utterances < len(dev):
        chosen = np.random.default_rng(seed).choice(len(dev), max_utterances, replace=False)
        dev = dev.select(sorted(chosen.tolist()))
    # Silence of the utterance's length stands for its audio (`dev_tokens` checks the items against its length): a
    # broadcast zero, which holds no memory
    return [
        Utterance(str(row["id"]), str(row["speaker"]), np.broadcast_to(np.float32(0), (samples(row["phones"]),)),
                  row["phones"])
        for row in dev
    ]  # fmt: skip


def samples(phones: Sequence[Mapping]) -> int:
    """Samples of an utterance whose alignment ends with its audio (`spidr-hf corpus`'s)."""
    return round(phones[-1]["end"] * SAMPLING_RATE)


def gold_phone_frames(utterance: Utterance) -> np.ndarray:
    """The frame units of an utterance's gold phones: the phone at the centre of each 20 ms frame (pauses too)."""
    frames = num_frames(samples(utterance.phones))
    return np.asarray([FRAME_PHONES.index(phone) for phone in frame_labels(utterance.phones, frames, UNIT_RATE)])


def unit_quality(
    utterances: Sequence[Utterance], units: Mapping[str, np.ndarray], num_units: int, items_path: Path, seed: int = 0
) -> dict[str, float]:
    """ABX within and across speakers (discrete units, `abx_error`'s "identical" distance) on the items of
    `utterances`, and PNMI (with the other unit-quality figures) against their 10 ms phone labels."""
    tokens = dev_tokens(utterances, read_item_file(items_path), subset=True)
    sequences = [np.asarray(units[utterance.id]) for utterance in utterances]
    spans = zip(tokens.utterance, tokens.start, tokens.end, strict=True)
    token_units = [sequences[utterance][start:end] for utterance, start, end in spans]
    abx = abx_error(token_units, tokens.phones, tokens.contexts, tokens.speakers, distance="identical", seed=seed)
    labels = [
        frame_labels(utterance.phones, len(units) * LABEL_RATE // UNIT_RATE)
        for utterance, units in zip(utterances, sequences, strict=True)
    ]
    quality = units_quality([s.tolist() for s in sequences], labels, num_units)
    return {"abx_within": abx["within"], "abx_across": abx["across"], **quality, "tokens": len(tokens.utterance)}


def source_quality(
    corpus: Path, train_units: Path | None, max_utterances: int | None, seed: int = 0
) -> dict[str, float]:
    """`unit_quality` of a source's units of the corpus (a units folder), or of the gold phones when None."""
    from ..units.record import read_unit_sequences

    utterances = dev_utterances(corpus, max_utterances, seed)
    if train_units is None:
        units = {utterance.id: gold_phone_frames(utterance) for utterance in utterances}
        num_units = len(FRAME_PHONES)
    else:
        identity, all_units = read_unit_sequences(train_units)
        units, num_units = {utterance.id: all_units[utterance.id] for utterance in utterances}, identity.num_units
    return unit_quality(utterances, units, num_units, corpus / ITEM_FILE, seed)


def summarize(
    work: Path,
    sources: Mapping[str, str],
    stage_seconds: Mapping[str, float],
    seed: int = 0,
    topline: str = "phones",
    chance: str = "random_init",
    notes: Sequence[str] = (),
) -> dict:
    """
    The ladder's table (work/summary.md, summary.json) and plots (ladder.png, correlation.png) from each source's
    `work/sources/NAME/score/scores.json` and `work/unit_quality.json`; `sources` maps names to their labels;
    `topline` (gold phones: also left out of a second set of correlations) and `chance` name the sources that the
    goals read; `notes`: lines the table ends with.
    """
    quality = json.loads((work / "unit_quality.json").read_text()) if (work / "unit_quality.json").is_file() else {}
    rows = {}
    for name, label in sources.items():
        path = work / "sources" / name / SCORES / "scores.json"
        if not path.is_file():
            continue
        scores = json.loads(path.read_text())
        row = {"label": label}
        for benchmark in BENCHMARKS:
            if benchmark in scores:
                for kind in ("sum", "mean"):
                    values = scores[benchmark][kind]
                    row[f"{benchmark}_{kind}"] = {key: values[key] for key in ("all", "ci95", "pairs")}
        row |= {metric: quality.get(name, {}).get(metric) for metric in UNIT_METRICS}
        rows[name] = row
    if not rows:
        raise SpidrError(f"No source has scores under {work / 'sources'}: run the ladder first")
    separations = {}
    for benchmark in BENCHMARKS:
        key = f"{benchmark}_sum"
        scored = [(name, row[key]) for name, row in rows.items() if key in row]
        separations[benchmark] = [
            [first, second]
            for index, (first, a) in enumerate(scored)
            for second, b in scored[index + 1 :]
            if separated(a["ci95"], b["ci95"])
        ]
    correlations = {
        "all": rank_correlations(rows, seed),
        "without_gold_phones": rank_correlations({n: r for n, r in rows.items() if n != topline}, seed),
    }
    summary = {
        "sources": rows,
        "separated": separations,
        "spearman": correlations,
        "goals": goals(rows, topline, chance),
        "stage_seconds": stage_seconds,
    }
    write_text_atomically(work / "summary.json", json.dumps(summary, indent=2) + "\n")
    text = summary_table(rows, separations, correlations, summary["goals"], stage_seconds)
    text += "".join(f"\n{note}" for note in notes)
    write_text_atomically(work / "summary.md", text + "\n")
    plot_ladder(rows, work / "ladder.png")
    plot_correlations(rows, work / "correlation.png")
    return summary


def rank_correlations(rows: Mapping, seed: int) -> dict:
    """Spearman's rho (with its bootstrap interval) of each unit metric with each summed score, over the sources
    that have both."""
    correlations = {}
    for metric in UNIT_METRICS:
        for benchmark in BENCHMARKS:
            key = f"{benchmark}_sum"
            points = [
                (row[metric], row[key]["all"])
                for row in rows.values()
                if row.get(metric) is not None and key in row and math.isfinite(row[metric])
            ]
            if len(points) >= 3:
                x, y = zip(*points, strict=True)
                correlations[f"{metric}~{benchmark}"] = spearman_with_interval(x, y, seed)
    return correlations


def goals(rows: Mapping, topline: str, chance: str) -> dict:
    """The ladder's goals, as measured: the topline's sWUGGY at least 75 %, and every interval of the random
    initialisation's scores holding 50 %."""
    measured = {}
    if "swuggy_sum" in rows.get(topline, {}):
        value = rows[topline]["swuggy_sum"]
        measured["topline_swuggy_at_least_75"] = {"met": value["all"] >= 75, "swuggy": value["all"]}
    if chance in rows:
        intervals = {b: rows[chance][f"{b}_sum"]["ci95"] for b in BENCHMARKS if f"{b}_sum" in rows[chance]}
        at_chance = {b: low <= 50 <= high for b, (low, high) in intervals.items()}
        measured["random_init_at_chance"] = {"met": all(at_chance.values()), "by_benchmark": at_chance}
    return measured


def summary_table(
    rows: Mapping, separations: Mapping, correlations: Mapping, measured_goals: Mapping, stage_seconds: Mapping
) -> str:
    """Markdown: the scores (summed, with intervals) and unit quality of each source, then the goals, the
    separations, the correlations and the stage times."""
    benchmarks = [benchmark for benchmark in BENCHMARKS if any(f"{benchmark}_sum" in row for row in rows.values())]
    header = ["units", *(f"{BENCHMARKS[b]} (%)" for b in benchmarks), "ABX within / across (%)", "PNMI"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows.values():
        cells = [row["label"]]
        for benchmark in benchmarks:
            values = row.get(f"{benchmark}_sum")
            cells.append(f"{values['all']:.1f} [{values['ci95'][0]:.1f}, {values['ci95'][1]:.1f}]" if values else "")
        abx = [row.get("abx_within"), row.get("abx_across")]
        cells.append(" / ".join(f"{value:.2f}" for value in abx) if None not in abx else "")
        cells.append(f"{row['pnmi']:.3f}" if row.get("pnmi") is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    pairs = {b: min(row[f"{b}_sum"]["pairs"] for row in rows.values() if f"{b}_sum" in row) for b in benchmarks}
    lines.append("")
    counts = ", ".join(f"{BENCHMARKS[b]} {pairs[b]}" for b in benchmarks)
    lines.append(f"Pairs: {counts}; summed scores, 95 % bootstrap intervals over the pairs.")
    lines.append("")
    for benchmark in benchmarks:
        separated_pairs = separations[benchmark]
        named = ", ".join(f"{rows[a]['label']} / {rows[b]['label']}" for a, b in separated_pairs) or "none"
        lines.append(f"- {BENCHMARKS[benchmark]}: {len(separated_pairs)} pair(s) of sources separated: {named}")
    lines.append("")
    if "topline_swuggy_at_least_75" in measured_goals:
        goal = measured_goals["topline_swuggy_at_least_75"]
        verdict = "met" if goal["met"] else "NOT met"
        lines.append(f"- Goal, gold-phone topline sWUGGY >= 75 %: {verdict} ({goal['swuggy']:.1f} %)")
    if "random_init_at_chance" in measured_goals:
        goal = measured_goals["random_init_at_chance"]
        off = [BENCHMARKS[b] for b, at_chance in goal["by_benchmark"].items() if not at_chance]
        verdict = "met" if goal["met"] else f"NOT met (50 % outside the interval of {', '.join(off)})"
        lines.append(f"- Goal, random initialisation at chance (every interval holds 50 %): {verdict}")
    for group, title in (("all", "every source with ABX and PNMI"), ("without_gold_phones", "without gold phones")):
        if not correlations.get(group):
            continue
        lines.append("")
        lines.append(
            f"| Spearman rho [95 % interval], {title} | " + " | ".join(BENCHMARKS[b] for b in benchmarks) + " |"
        )
        lines.append("|---|" + "---|" * len(benchmarks))
        for metric, label in UNIT_METRICS.items():
            cells = []
            for benchmark in benchmarks:
                value = correlations[group].get(f"{metric}~{benchmark}")
                if value is None:
                    cells.append("")
                else:
                    low, high = value["ci95"]
                    cells.append(f"{value['rho']:+.2f} [{low:+.2f}, {high:+.2f}] (n={value['n']})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if stage_seconds:
        lines.append("")
        times = ", ".join(f"{stage} {seconds / 60:.1f} min" for stage, seconds in stage_seconds.items())
        lines.append(f"Stage times: {times}")
        lines.append(f"Total: {sum(stage_seconds.values()) / 60:.1f} min")
    return "\n".join(lines)


def plot_ladder(rows: Mapping, path: Path) -> None:
    """Each benchmark's summed score of every source with its interval, chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = [benchmark for benchmark in BENCHMARKS if any(f"{benchmark}_sum" in row for row in rows.values())]
    figure, axes = plt.subplots(figsize=(max(7, 1.1 * len(rows)), 4.2))
    width = 0.8 / len(benchmarks)
    positions = np.arange(len(rows))
    for offset, benchmark in enumerate(benchmarks):
        values = [row.get(f"{benchmark}_sum") for row in rows.values()]
        centres = [value["all"] if value else np.nan for value in values]
        errors = np.array([[v["all"] - v["ci95"][0], v["ci95"][1] - v["all"]] if v else [0, 0] for v in values]).T
        shift = (offset - (len(benchmarks) - 1) / 2) * width
        axes.bar(positions + shift, centres, width, yerr=errors, capsize=2, label=BENCHMARKS[benchmark])
    axes.axhline(50, color="black", linestyle="--", linewidth=1, label="chance")
    axes.set_xticks(positions, [row["label"] for row in rows.values()], rotation=30, ha="right")
    axes.set_ylabel("accuracy (%), 95 % interval")
    axes.set_ylim(30, 100)
    axes.legend(loc="upper right", ncol=len(benchmarks) + 1, fontsize=8)
    axes.set_title("Unit LMs of each unit source (summed log-probabilities)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_correlations(rows: Mapping, path: Path) -> None:
    """ABX within and PNMI of each source's units against each score (with its interval), sources named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = {name: row for name, row in rows.items() if row.get("pnmi") is not None}
    benchmarks = [b for b in BENCHMARKS if any(f"{b}_sum" in row for row in measured.values())]
    if not measured or not benchmarks:
        return
    figure, axes = plt.subplots(2, len(benchmarks), figsize=(3.2 * len(benchmarks), 6.2), sharey="col", squeeze=False)
    for row_index, metric in enumerate(("abx_within", "pnmi")):
        for column, benchmark in enumerate(benchmarks):
            axis = axes[row_index][column]
            for row in measured.values():
                value = row.get(f"{benchmark}_sum")
                if value is None:
                    continue
                error = [[value["all"] - value["ci95"][0]], [value["ci95"][1] - value["all"]]]
                axis.errorbar(row[metric], value["all"], yerr=error, fmt="o", color="tab:blue", capsize=2)
                where = (row[metric], value["all"])
                axis.annotate(row["label"], where, fontsize=6, xytext=(3, 3), textcoords="offset points")
            axis.axhline(50, color="black", linestyle="--", linewidth=1)
            axis.set_xlabel(UNIT_METRICS[metric])
            axis.set_ylabel(f"{BENCHMARKS[benchmark]} (%)")
    figure.suptitle("Unit quality against spoken-LM scores (dashed: chance; bars: 95 % intervals)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
