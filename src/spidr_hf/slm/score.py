"""
`spidr-hf slm-score`: zero-shot spoken-LM scores of a unit LM on a benchmark in the ZeroSpeech 2021 sLM21 layout
(`lexical/dev/*.wav` + `gold.csv`, `syntactic/dev/*.wav` + `gold.csv`): the units of every file from the encoder
the LM was trained on (rebuilt from the LM's record, in memory), a score per file (the LM's log-probability of its
units), a submission folder the official ZeroSpeech tools read, and the accuracies as the official sLM21 scoring
computes them.

- sWUGGY (lexical): a word and its non-word pair up by (voice, id); a pair scores 1 when the word's score is higher,
  0.5 on a tie, 0 else; the mean over voices gives each id's score, the mean over ids the accuracy ("all"). With word
  frequencies in the gold file, "in-vocabulary" leaves out the ids whose word has frequency 0 (the "oov" band), and
  the bands oov, 1-5, 6-20, 21-100, >100 follow the official edges [0, 1, 5, 20, 100, inf) (closed on the left).
- sBLIMP (syntactic): a sentence and its ungrammatical pair up by (voice, type, subtype, id), scored the same way,
  then averaged over voices for each (type, subtype, id) and over those; also by type.
"""

import csv
import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import fmean

import numpy as np

from ..data.audio import file_seconds
from ..data.audio_batches import AudioFile
from ..defaults import SLM_SCORE_BATCH_SIZE
from ..errors import SpidrError
from ..io.atomic_files import write_text_atomically, writing
from ..model.loading import check_device
from ..model.modeling_spidr import UNIT_KINDS
from ..units.encoder import SpidrUnitEncoder, UnitEncoder
from ..units.record import UnitIdentity, read_unit_sequences
from .unit_lm import UnitVocabulary, load_unit_lm, sequence_log_probs

# The sLM21 layout's task folders and the benchmark each one is scored as
BENCHMARK_OF_TASK = {"lexical": "swuggy", "syntactic": "sblimp"}
GOLD_COLUMNS = {
    "lexical": {"id", "filename", "voice", "frequency", "word", "correct"},
    "syntactic": {"filename", "id", "voice", "type", "subtype", "correct"},
}
FREQUENCY_BANDS = ((0, 1, "oov"), (1, 5, "1-5"), (5, 20, "6-20"), (20, 100, "21-100"), (100, math.inf, ">100"))
SCORES_FILE = "scores.json"


def read_gold(path: Path, task: str) -> list[dict[str, str]]:
    """The rows of a gold.csv, checked for the columns the task's scoring reads."""
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    missing = GOLD_COLUMNS[task] - set(rows[0] if rows else ())
    if missing:
        raise SpidrError(f"{path} lacks the column(s) {', '.join(sorted(missing))} of a {task} gold.csv")
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


def lexical_accuracy(gold: Sequence[Mapping[str, str]], scores: Mapping[str, float]) -> dict:
    """sWUGGY in % (see the module's docstring): all, in-vocabulary and by frequency band."""
    by_id = {item[0]: fmean(values) for item, values in pair_scores(gold, scores, ("voice", "id")).items()}
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


def syntactic_accuracy(gold: Sequence[Mapping[str, str]], scores: Mapping[str, float]) -> dict:
    """sBLIMP in % (see the module's docstring): all and by type."""
    by_item = {
        item: fmean(values) for item, values in pair_scores(gold, scores, ("voice", "type", "subtype", "id")).items()
    }
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


def score_benchmark(
    ulm: str | os.PathLike,
    units_model: str | os.PathLike | None,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    mean_per_unit: bool = False,
    device: str | None = None,
    units_dtype: str = "float32",
    batch_size: int = SLM_SCORE_BATCH_SIZE,
    overwrite: bool = False,
    units: str | os.PathLike | None = None,
) -> dict:
    """
    Score the unit LM `ulm` on the sLM21-layout benchmark `data`, with the units of the encoder it was trained on,
    rebuilt from its config's record: the `units_model`'s layer and unit kind (checked: its weights must be those the
    units came from; it runs in `units_dtype`), or the units already in `units`/TASK (units folders, e.g. gold
    phones). The benchmark's units are encoded in memory and cached in OUTPUT/units/TASK.jsonl (a rerun after an
    interruption goes on from there); writes OUTPUT/submission (the challenge's layout) and OUTPUT/scores.json, and
    returns the scores.
    """
    if (units_model is None) == (units is None):
        raise SpidrError("Give the units model (--units-model) or folders of units (--units), one of them")
    data, output = Path(data), Path(output)
    if (output / SCORES_FILE).exists() and not overwrite:
        raise SpidrError(f"{output} already holds scores ({SCORES_FILE}): pass --overwrite, or choose another --output")
    tasks = {task: data / task / "dev" for task in BENCHMARK_OF_TASK if (data / task / "dev" / "gold.csv").is_file()}
    if not tasks:
        raise SpidrError(f"{data} holds neither lexical/dev/gold.csv nor syntactic/dev/gold.csv (the sLM21 layout)")
    golds = {task: read_gold(folder / "gold.csv", task) for task, folder in tasks.items()}
    device = check_device(device)
    lm, identity = load_unit_lm(ulm, device)
    vocabulary = UnitVocabulary(identity)
    encoder = None if units_model is None else lm_encoder(ulm, identity, units_model, device, units_dtype)
    results: dict = {"ulm": str(ulm), "unit_source": identity.to_dict(), "score": "mean" if mean_per_unit else "sum"}
    for task, folder in tasks.items():
        names = list(dict.fromkeys(row["filename"] for row in golds[task]))
        if encoder is not None:
            files = benchmark_files(folder, names)
            file_units = cached_units(encoder, files, output / "units" / f"{task}.jsonl")
        else:
            units_dir = Path(units) / task
            folder_identity, file_units = read_unit_sequences(units_dir, identity.deduplicate)
            check_same_units(ulm, identity, folder_identity, units_dir)
            missing = [name for name in names if name not in file_units]
            if missing:
                raise SpidrError(
                    f"{len(missing)} file(s) of {folder / 'gold.csv'} have no units in {units_dir}: {missing[0]}"
                )
        sequences = [vocabulary.tokens(file_units[row["filename"]], row["filename"]) for row in golds[task]]
        values = sequence_log_probs(lm, sequences, vocabulary.pad, batch_size, mean=mean_per_unit)
        scores = dict(zip((row["filename"] for row in golds[task]), values, strict=True))
        write_submission(output / "submission", task, golds[task], scores)
        results[BENCHMARK_OF_TASK[task]] = ACCURACY[task](golds[task], scores)
    kind = f"{identity.kind} units" + (f" (layer {identity.layer})" if identity.layer is not None else "")
    description = f"{kind} of {Path(identity.model).name}, scored by {ulm}"
    write_text_atomically(output / "submission" / "meta.yaml", META.format(description=description, train_set=""))
    write_text_atomically(output / SCORES_FILE, json.dumps(results, indent=2) + "\n")
    return results


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


def benchmark_files(folder: Path, names: Sequence[str]) -> list[AudioFile]:
    """The audio files `folder/NAME.wav` of a task's gold names, with their durations; missing ones in one line."""
    missing = [name for name in names if not (folder / f"{name}.wav").is_file()]
    if missing:
        raise SpidrError(f"{len(missing)} file(s) of {folder / 'gold.csv'} have no audio in {folder}: {missing[0]}")
    return [AudioFile(folder / f"{name}.wav", name, file_seconds(folder / f"{name}.wav")) for name in names]


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
    lines = []
    if "swuggy" in results:
        lexical = results["swuggy"]
        in_vocab = f", in-vocabulary {lexical['in_vocab']:.2f}" if lexical["in_vocab"] is not None else ""
        lines.append(f"sWUGGY {lexical['all']:.2f} % ({lexical['pairs']} pairs{in_vocab})")
    if "sblimp" in results:
        syntactic = results["sblimp"]
        types = ", ".join(f"{type} {value['score']:.1f}" for type, value in syntactic["by_type"].items())
        lines.append(f"sBLIMP {syntactic['all']:.2f} % ({syntactic['pairs']} pairs; {types})")
    return "\n".join(lines) + "\n(chance: 50 %)"
