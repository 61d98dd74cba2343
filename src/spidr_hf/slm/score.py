"""
`spidr-hf slm-score`: zero-shot spoken-LM scores of a unit LM on a benchmark in the ZeroSpeech 2021 sLM21 layout
(`lexical/dev/*.wav` + `gold.csv`, `syntactic/dev/*.wav` + `gold.csv`) and on spoken story cloze (sSC, tSC: see
`slm.story_cloze` for their layouts): the units of every file from the encoder the LM was trained on (rebuilt from
the LM's record, in memory), two scores per file (the LM's log-probability of its units and EOS after BOS, summed as
the ZeroSpeech 2021 baselines do, and its mean per token as slamkit's `mean_nll` does), a submission folder the
official ZeroSpeech tools read, and the accuracies as the official sLM21 scoring computes them, with both scores and a
95 % bootstrap interval over the pairs (`slm.statistics`).

- sWUGGY (lexical): a word and its non-word pair up by (voice, id); a pair scores 1 when the word's score is higher,
  0.5 on a tie, 0 else; the mean over voices gives each id's score, the mean over ids the accuracy ("all"). With word
  frequencies in the gold file, "in-vocabulary" leaves out the ids whose word has frequency 0 (the "oov" band), and
  the bands oov, 1-5, 6-20, 21-100, >100 follow the official edges [0, 1, 5, 20, 100, inf) (closed on the left).
- sBLIMP (syntactic): a sentence and its ungrammatical pair up by (voice, type, subtype, id), scored the same way,
  then averaged over voices for each (type, subtype, id) and over those; also by type.
- sSC, tSC: the mean over story pairs of 1, 0.5 or 0 (the true ending's score above, equal to or below the false's).

Files whose audio is missing or cannot be read leave their pairs out, named in one line and in scores.json.
"""

import csv
import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

import numpy as np

from ..data.audio import file_seconds, first_line, name_some
from ..data.audio_batches import AudioFile
from ..defaults import SLM_SCORE_BATCH_SIZE
from ..errors import AudioError, SpidrError
from ..io.atomic_files import check_writable, write_text_atomically, writing
from ..model.loading import check_device
from ..model.modeling_spidr import UNIT_KINDS
from ..units.encoder import SpidrUnitEncoder, UnitEncoder
from ..units.record import UnitIdentity, read_unit_sequences
from .statistics import CONFIDENCE, RESAMPLES, SEED, bootstrap_interval
from .story_cloze import (
    FALSE_COLUMN,
    TRUE_COLUMN,
    StoryClozeSet,
    folder_story_cloze,
    load_story_cloze,
    story_cloze_accuracy,
    story_cloze_scores,
)
from .unit_lm import UnitVocabulary, load_unit_lm, sequence_log_probs

# The sLM21 layout's task folders and the benchmark each one is scored as
BENCHMARK_OF_TASK = {"lexical": "swuggy", "syntactic": "sblimp"}
GOLD_COLUMNS = {
    "lexical": {"id", "filename", "voice", "frequency", "word", "correct"},
    "syntactic": {"filename", "id", "voice", "type", "subtype", "correct"},
}
FREQUENCY_BANDS = ((0, 1, "oov"), (1, 5, "1-5"), (5, 20, "6-20"), (20, 100, "21-100"), (100, math.inf, ">100"))
SCORES_FILE = "scores.json"
FILE_SCORES = "file_scores"  # OUTPUT/file_scores/TASK.tsv: every file's summed log-probability and token count
STORY_FOLDERS = {"ssc": "sSC", "tsc": "tSC"}  # the story-cloze folders of `spidr-hf slm-benchmark`'s output


def read_gold(path: Path, task: str) -> list[dict[str, str]]:
    """The rows of a gold.csv, checked for the columns the task's scoring reads (and sWUGGY's frequencies)."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
    except UnicodeDecodeError as error:
        raise SpidrError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): is it a gold.csv?"
        ) from None
    missing = GOLD_COLUMNS[task] - set(reader.fieldnames or ())
    if missing:
        raise SpidrError(f"{path} lacks the column(s) {', '.join(sorted(missing))} of a {task} gold.csv")
    if not rows:
        raise SpidrError(f"{path} has a header but no rows: no pair to score")
    frequencies = [row["frequency"] for row in rows] if "frequency" in GOLD_COLUMNS[task] else []
    for line, frequency in enumerate(frequencies, start=2):
        try:
            float(frequency.strip() or "0")  # blank: no frequency (`frequency_band`)
        except ValueError:
            raise SpidrError(f"{path}:{line}: frequency {frequency!r} is not a number") from None
    return rows


def pair_score(good: float, bad: float) -> float:
    return 1.0 if good > bad else 0.5 if good == bad else 0.0


def pair_scores(gold: Sequence[Mapping[str, str]], scores: Mapping[str, float], key: Sequence[str]) -> dict:
    """(key without voice) -> the pair scores of every voice; a row's pair is the other row with the same key."""
    sides: dict[tuple, dict[str, float]] = defaultdict(dict)
    for row in gold:
        sides[tuple(row[column] for column in key)][row["correct"]] = scores[row["filename"]]
    by_item: dict[tuple, list[float]] = defaultdict(list)
    for item, side in sides.items():
        if "1" in side and "0" in side:
            by_item[item[1:]].append(pair_score(side["1"], side["0"]))  # item[0] is the voice
    return by_item


def frequency_band(text: str) -> str | None:
    if text.strip() == "":
        return None
    frequency = float(text)
    return next(name for low, high, name in FREQUENCY_BANDS if low <= frequency < high)


def lexical_item_scores(gold: Sequence[Mapping[str, str]], scores: Mapping[str, float]) -> dict[str, float]:
    """id -> the mean over voices of its pairs' scores (the items that sWUGGY's "all" averages)."""
    return {item[0]: fmean(values) for item, values in pair_scores(gold, scores, ("voice", "id")).items()}


def lexical_accuracy(gold: Sequence[Mapping[str, str]], scores: Mapping[str, float]) -> dict:
    """sWUGGY in % (see the module's docstring): all, in-vocabulary and by frequency band."""
    by_id = lexical_item_scores(gold, scores)
    if not by_id:
        raise SpidrError("The lexical gold file pairs no word with a non-word (same voice and id)")
    word_band = {row["id"]: frequency_band(row["frequency"]) for row in gold if row["correct"] == "1"}
    bands: dict[str, list[float]] = defaultdict(list)
    for id, score in by_id.items():
        if word_band.get(id) is not None:
            bands[word_band[id]].append(score)
    in_vocab = [score for band, values in bands.items() if band != "oov" for score in values]
    return {
        "all": 100 * fmean(by_id.values()),
        "in_vocab": 100 * fmean(in_vocab) if in_vocab else None,
        "pairs": len(by_id),
        "by_frequency": {
            name: {"n": len(bands[name]), "score": 100 * fmean(bands[name])}
            for _, _, name in FREQUENCY_BANDS
            if bands[name]
        },
    }


def syntactic_item_scores(gold: Sequence[Mapping[str, str]], scores: Mapping[str, float]) -> dict[tuple, float]:
    """(type, subtype, id) -> the mean over voices of its pairs' scores (the items that sBLIMP's "all" averages)."""
    return {
        item: fmean(values) for item, values in pair_scores(gold, scores, ("voice", "type", "subtype", "id")).items()
    }


def syntactic_accuracy(gold: Sequence[Mapping[str, str]], scores: Mapping[str, float]) -> dict:
    """sBLIMP in % (see the module's docstring): all and by type."""
    by_item = syntactic_item_scores(gold, scores)
    if not by_item:
        raise SpidrError("The syntactic gold file pairs no sentence with an ungrammatical one")
    by_type: dict[str, list[float]] = defaultdict(list)
    for (type, _subtype, _id), score in by_item.items():
        by_type[type].append(score)
    return {
        "all": 100 * fmean(by_item.values()),
        "pairs": len(by_item),
        "by_type": {type: {"n": len(values), "score": 100 * fmean(values)} for type, values in sorted(by_type.items())},
    }


ACCURACY = {"lexical": lexical_accuracy, "syntactic": syntactic_accuracy}
ITEM_SCORES = {"lexical": lexical_item_scores, "syntactic": syntactic_item_scores}


def read_submission(path: Path) -> dict[str, float]:
    """filename -> score of a submission's dev.txt."""
    scores = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        filename, _, value = line.rpartition(" ")
        try:
            scores[filename] = float(value)
        except ValueError as error:
            raise SpidrError(f"{path}, line {number}: not a 'filename score' line") from error
    return scores


def write_submission(folder: Path, task: str, gold: Sequence[Mapping[str, str]], scores: Mapping[str, float]) -> None:
    lines = "".join(f"{row['filename']} {scores[row['filename']]!r}\n" for row in gold)
    write_text_atomically(folder / task / "dev.txt", lines)


META = """# The submission's description for the ZeroSpeech tools (fill in before submitting to zerospeech.com)
username: null
submission_id: null
benchmark_name: sLM21
model_info:
  model_id: null
  system_description: "{description}"
  train_set: "{train_set}"
  gpu_budget: null
publication:
  author_label: null
  authors: null
  paper_title: null
  paper_url: null
  publication_year: null
  institution: null
  team: null
  code: null
  DOI: null
  open_science: true
open_source: true
code_url: "https://github.com/"
"""


@dataclass
class Task:
    """
    One benchmark to score: the audio of every file (id -> path), how its accuracy and the per-item scores that the
    bootstrap draws follow from the files' scores, and the files already left out (id -> why).
    """

    name: str  # lexical, syntactic, ssc or tsc: the units cache's name and the --units subfolder
    benchmark: str  # swuggy, sblimp, ssc or tsc: its entry in scores.json
    paths: dict[str, Path]
    accuracy: Callable[[Mapping[str, float]], dict]
    item_scores: Callable[[Mapping[str, float]], list[float]]
    left_out: dict[str, str] = field(default_factory=dict)
    gold: list[dict[str, str]] | None = None  # sLM21 tasks: the gold rows, for the submission
    cache: str = ""  # the units cache's file name (OUTPUT/units/CACHE.jsonl)


def slm21_task(folder: Path, task: str) -> Task:
    """A task of the sLM21 layout (`folder` is its `dev` folder): its files are those its gold.csv names."""
    gold = read_gold(folder / "gold.csv", task)
    names = dict.fromkeys(row["filename"] for row in gold)

    def scored_rows(scores: Mapping[str, float]) -> list[dict[str, str]]:
        return [row for row in gold if row["filename"] in scores]

    return Task(
        task,
        BENCHMARK_OF_TASK[task],
        {name: folder / f"{name}.wav" for name in names},
        lambda scores: ACCURACY[task](scored_rows(scores), scores),
        lambda scores: list(ITEM_SCORES[task](scored_rows(scores), scores).values()),
        gold=gold,
        cache=task,
    )


def story_cloze_task(benchmark: str, story_set: StoryClozeSet) -> Task:
    """A story-cloze task (`benchmark`: ssc or tsc); its units cache is keyed on where the set came from."""
    source = str(Path(story_set.source).resolve()) if Path(story_set.source).exists() else story_set.source
    return Task(
        benchmark,
        benchmark,
        dict(story_set.files),
        lambda scores: story_cloze_accuracy(story_set.pairs, scores),
        lambda scores: story_cloze_scores(story_set.pairs, scores),
        left_out=dict(story_set.left_out),
        cache=f"{benchmark}-{hashlib.sha256(source.encode()).hexdigest()[:12]}",
    )


def benchmark_tasks(
    data: Path | None,
    output: Path,
    story_sources: Mapping[str, str | os.PathLike | None],
    *,
    true_column: str,
    false_column: str,
    split: str | None,
) -> list[Task]:
    """
    The tasks to score: those of `data` (the sLM21 layout's lexical/dev and syntactic/dev, and the built-in
    benchmark's sSC/ and tSC/ folders), and the story-cloze sets of `story_sources` (ssc, tsc: a folder or a
    dataset), which replace those of `data`.
    """
    tasks = []
    if data is not None:
        if not data.is_dir():
            what = "is a file, not a folder" if data.exists() else "does not exist"
            raise SpidrError(f"The benchmark folder {data} {what}")
        folders = {task: data / task / "dev" for task in BENCHMARK_OF_TASK}
        tasks = [slm21_task(folder, task) for task, folder in folders.items() if (folder / "gold.csv").is_file()]
        for benchmark, folder in STORY_FOLDERS.items():
            if story_sources.get(benchmark) is None and (data / folder).is_dir():
                tasks.append(story_cloze_task(benchmark, folder_story_cloze(data / folder)))
        if not tasks:
            raise SpidrError(
                f"{data} holds none of lexical/dev/gold.csv, syntactic/dev/gold.csv (the sLM21 layout), sSC/ or tSC/"
            )
    for benchmark, source in story_sources.items():
        if source is not None:
            story_set = load_story_cloze(
                source, output / "audio", true_column=true_column, false_column=false_column, split=split
            )
            tasks.append(story_cloze_task(benchmark, story_set))
    if not tasks:
        raise SpidrError("Nothing to score: give a benchmark folder (--data), or story-cloze sets (--ssc, --tsc)")
    return tasks


def score_benchmark(
    ulm: str | os.PathLike,
    units_model: str | os.PathLike | None,
    data: str | os.PathLike | None,
    output: str | os.PathLike,
    *,
    mean_per_unit: bool = False,
    device: str | None = None,
    units_dtype: str = "float32",
    batch_size: int = SLM_SCORE_BATCH_SIZE,
    overwrite: bool = False,
    units: str | os.PathLike | None = None,
    ssc: str | os.PathLike | None = None,
    tsc: str | os.PathLike | None = None,
    true_column: str = TRUE_COLUMN,
    false_column: str = FALSE_COLUMN,
    split: str | None = None,
    seed: int = SEED,
) -> dict:
    """
    Score the unit LM `ulm` on the benchmark `data` (sLM21 layout, with the built-in benchmark's sSC/ and tSC/ story
    folders when there) and on the story-cloze sets `ssc` and `tsc` (slamkit's folder layout, or a `datasets` dataset
    with the audio columns `true_column` and `false_column`, of `split`), with the units of the encoder it was trained
    on, rebuilt from its config's record: the `units_model`'s layer and unit kind (checked: its weights must be those
    the units came from; it runs in `units_dtype`), or the units already in `units`/TASK (units folders, e.g. gold
    phones). The benchmark's units are encoded in memory and cached in OUTPUT/units/ (a rerun after an interruption
    goes on from there); writes OUTPUT/submission (the challenge's layout, with the summed score, or the mean per unit
    with `mean_per_unit`), OUTPUT/file_scores/TASK.tsv and OUTPUT/scores.json (both scores of every task, with
    bootstrap intervals drawn with `seed`), and returns the scores.
    """
    if (units_model is None) == (units is None):
        raise SpidrError("Give the units model (--units-model) or folders of units (--units), one of them")
    data, output = (Path(data) if data is not None else None), Path(output)
    if (output / SCORES_FILE).exists() and not overwrite:
        raise SpidrError(f"{output} already holds scores ({SCORES_FILE}): pass --overwrite, or choose another --output")
    check_writable(output)  # before the models load and the units are encoded
    stories = {"ssc": ssc, "tsc": tsc}
    tasks = benchmark_tasks(data, output, stories, true_column=true_column, false_column=false_column, split=split)
    device = check_device(device)
    lm, identity = load_unit_lm(ulm, device)
    vocabulary = UnitVocabulary(identity)
    encoder = None if units_model is None else lm_encoder(ulm, identity, units_model, device, units_dtype)
    primary = "mean" if mean_per_unit else "sum"
    results: dict = {
        "ulm": str(ulm),
        "unit_source": identity.to_dict(),
        "score": primary,
        "bootstrap": {"confidence": CONFIDENCE, "resamples": RESAMPLES, "seed": seed, "unit": "pair"},
    }
    for task in tasks:
        if encoder is not None:
            files, unreadable = readable_files(task.paths)
            task.left_out |= unreadable
            file_units = cached_units(encoder, files, output / "units" / f"{task.cache}.jsonl")
        else:
            units_dir = Path(units) / task.name
            folder_identity, file_units = read_unit_sequences(units_dir, identity.deduplicate)
            check_same_units(ulm, identity, folder_identity, units_dir)
            missing = [id for id in task.paths if id not in file_units]
            if missing:
                raise SpidrError(
                    f"{len(missing)} file(s) of the {task.name} task have no units in {units_dir}: {name_some(missing)}"
                )
        ids = [id for id in task.paths if id in file_units]
        sequences = [vocabulary.tokens(file_units[id], id) for id in ids]
        sums = sequence_log_probs(lm, sequences, vocabulary.pad, batch_size)
        # The mean per token after BOS (the units and EOS): `sequence_log_probs(..., mean=True)`, from the same pass
        file_scores = {
            "sum": dict(zip(ids, sums, strict=True)),
            "mean": {id: value / (len(tokens) - 1) for id, value, tokens in zip(ids, sums, sequences, strict=True)},
        }
        write_file_scores(output / FILE_SCORES / f"{task.name}.tsv", ids, sums, sequences)
        if task.gold is not None:  # a line per scored file (the toolkit will name the files left out)
            scored = [row for row in task.gold if row["filename"] in file_units]
            write_submission(output / "submission", task.name, scored, file_scores[primary])
        by_score = {}
        for kind, scores in file_scores.items():
            by_score[kind] = task.accuracy(scores) | {"ci95": list(bootstrap_interval(task.item_scores(scores), seed))}
        results[task.benchmark] = by_score[primary] | by_score | {"left_out": task.left_out}
        if task.left_out:
            named = name_some([f"{id} ({why})" for id, why in task.left_out.items()])
            print(f"{task.benchmark}: left out, audio missing or unreadable, with their pairs: {named}")
    if any(task.gold is not None for task in tasks):
        kind = f"{identity.kind} units" + (f" (layer {identity.layer})" if identity.layer is not None else "")
        description = f"{kind} of {Path(identity.model).name}, scored by {ulm}"
        write_text_atomically(output / "submission" / "meta.yaml", META.format(description=description, train_set=""))
    write_text_atomically(output / SCORES_FILE, json.dumps(results, indent=2) + "\n")
    return results


def write_file_scores(path: Path, ids: Sequence[str], sums: Sequence[float], sequences: Sequence[list[int]]) -> None:
    """Every file's summed log-probability and the number of tokens it sums over (its mean is their ratio)."""
    rows = zip(ids, sums, sequences, strict=True)
    lines = "".join(f"{id}\t{value!r}\t{len(tokens) - 1}\n" for id, value, tokens in rows)
    write_text_atomically(path, "id\tsum\ttokens\n" + lines)


def lm_encoder(
    ulm: str | os.PathLike, identity: UnitIdentity, units_model: str | os.PathLike, device: str, dtype: str
) -> SpidrUnitEncoder:
    """The encoder of the units `ulm` was trained on, rebuilt from `units_model` as the LM's record says (kind,
    layer, deduplication), and checked to give those units."""
    if identity.kind not in UNIT_KINDS:
        raise SpidrError(
            f"{ulm} was trained on {identity.kind} units, which no SpidR model gives: score it with --units, folders "
            "of those units of the benchmark"
        )
    encoder = SpidrUnitEncoder.from_pretrained(
        units_model, identity.kind, identity.layer, deduplicate=identity.deduplicate, device=device, dtype=dtype
    )
    check_same_units(ulm, identity, encoder.identity, units_model)
    return encoder


def check_same_units(ulm: str | os.PathLike, trained: UnitIdentity, given: UnitIdentity, source) -> None:
    """One line naming what differs when `source` gives other units than those `ulm` was trained on."""
    # The dtype first: it says why the weights' hash differs (weights hashed as they run)
    differences = sorted(trained.differences(given), key=lambda difference: not difference.startswith("dtype:"))
    if differences:
        dtype_hint = ""
        hash_differs = any(difference.startswith("weights_sha256:") for difference in differences)
        if trained.dtype is None and given.dtype is not None and hash_differs:
            dtype_hint = f" (the hash is that of the weights in the dtype they run in: {given.dtype} here)"
        raise SpidrError(
            f"{ulm} was trained on other units than {source} gives ({'; '.join(differences)}){dtype_hint}: score it "
            "with the encoder it was trained on (the model, layer, unit kind and dtype of its units: --units-dtype)"
        )


def readable_files(paths: Mapping[str, Path]) -> tuple[list[AudioFile], dict[str, str]]:
    """The audio files of `paths` (id -> path) with their durations from the headers, and those that are missing or
    cannot be read (id -> why)."""
    files, unreadable = [], {}
    for id, path in paths.items():
        try:
            files.append(AudioFile(path, id, file_seconds(path)))
        except AudioError as error:
            unreadable[id] = "missing" if not path.is_file() else first_line(error)
    if not files:
        raise SpidrError(f"None of the {len(paths)} audio files can be read: {name_some(list(paths.values()))}")
    return files, unreadable


def cached_units(encoder: UnitEncoder, files: Sequence[AudioFile], cache: Path) -> dict[str, np.ndarray]:
    """
    The encoder's units of `files`, from the cache file `cache` as far as it goes (a JSON line of the encoder's
    identity, then one `{"id", "units"}` line per file), the others encoded and appended batch by batch. A cache of
    another identity is started anew; a line cut off by an interruption is dropped.
    """
    header = json.dumps({"identity": encoder.identity.to_dict()})
    lines = cache.read_bytes().split(b"\n")[:-1] if cache.is_file() else []  # the last, unterminated part: cut off
    units: dict[str, np.ndarray] = {}
    if lines and lines[0].decode("utf-8", errors="replace") == header:
        for line in lines[1:]:
            row = json.loads(line)
            units[row["id"]] = np.asarray(row["units"], dtype=np.int64)
        kept = b"".join(line + b"\n" for line in lines)
    else:
        kept = (header + "\n").encode()
    with writing(cache):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(kept)
        with open(cache, "a", encoding="utf-8") as appended:
            for batch in encoder.encode_batches(files, done=frozenset(units)):
                for id, values in batch.items():
                    if id not in units:
                        units[id] = values
                        appended.write(json.dumps({"id": id, "units": values.tolist()}) + "\n")
                appended.flush()
    return units


def format_scores(results: Mapping) -> str:
    """The accuracies in a few lines: each benchmark with its interval, and the other score beside it."""

    def interval(values: Mapping) -> str:
        return f"[{values['ci95'][0]:.1f}, {values['ci95'][1]:.1f}]"

    primary = results.get("score", "sum")
    other = "mean" if primary == "sum" else "sum"
    lines = []
    for benchmark, label in (("swuggy", "sWUGGY"), ("sblimp", "sBLIMP"), ("ssc", "sSC"), ("tsc", "tSC")):
        if benchmark not in results:
            continue
        values = results[benchmark]
        details = [f"{values['pairs']} pairs"]
        if values.get("in_vocab") is not None:
            details.append(f"in-vocabulary {values['in_vocab']:.2f}")
        if "by_type" in values:
            details.append(", ".join(f"{type} {value['score']:.1f}" for type, value in values["by_type"].items()))
        if other in values:
            details.append(f"{other} score {values[other]['all']:.2f} {interval(values[other])}")
        lines.append(f"{label} {values['all']:.2f} % {interval(values)} ({'; '.join(details)})")
    return "\n".join(lines) + f"\n({primary} scores; 95 % bootstrap intervals over the pairs; chance: 50 %)"
