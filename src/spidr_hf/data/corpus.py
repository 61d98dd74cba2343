"""
Built-in phone-aligned English speech corpus, synthesized offline with Debian's `flite`.

Speakers are flite's four 16 kHz voices and pitch/tempo variants of them. Sentences come from the English
fortune-cookie files of Debian's `fortunes` package, so no prose is shipped with this project. Each utterance is
one sentence; flite's `-psdur` output gives the phone alignment. The corpus is a `datasets.DatasetDict` saved with
`save_to_disk` (train and dev splits; the dev speakers are not in train) plus a ZeroSpeech ABX item file for dev.

    spidr-hf corpus OUT_DIR [--hours H] [--speakers N] [--dev-speakers D] [--seed S]

needs `apt-get install flite fortunes` (Debian/Ubuntu).
"""

import json
import math
import os
import random
import subprocess
import wave
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..defaults import CORPUS_DEV_SPEAKERS, CORPUS_HOURS, CORPUS_SPEAKERS
from ..evaluation.items import ITEM_FILE, items_from_alignment, num_frames, write_item_file
from ..io.atomic_files import write_atomically, write_text_atomically
from ..io.file_locks import exclusive_lock
from ..model.configuration_spidr import SAMPLING_RATE
from .flite import PAUSE, SPEAKERS, Speaker, find_flite, parse_psdur
from .sentences import load_sentences

WAV_DIR = "wavs"

# Seconds of speech per character of text for each voice at normal tempo, measured on fortune sentences; used to
# plan how many sentences each speaker gets before anything is synthesized (the plan must not depend on timing).
_SECONDS_PER_CHAR = {"awb": 0.0593, "rms": 0.0672, "slt": 0.0591, "kal16": 0.0613}
# flite's diphone voice (kal16) drops the second half of the final pause, so its last phone can end up to this
# much after the audio does; the final pause is cut to the audio.
_MAX_FINAL_PAUSE_OVERRUN = 0.25


@dataclass(frozen=True)
class PlannedUtterance:
    """An utterance to synthesize: its id, voice and sentence."""

    id: str
    speaker: Speaker
    text: str


def plan_utterances(
    sentences: Sequence[str], speakers: Sequence[Speaker], hours: float, seed: int
) -> list[PlannedUtterance]:
    """Deal shuffled sentences to the speakers, different ones to each, about `hours / len(speakers)` of speech each."""
    shuffled = list(sentences)
    random.Random(seed).shuffle(shuffled)
    target = hours * 3600 / len(speakers)
    utterances, next_sentence = [], 0
    for speaker in speakers:
        seconds_per_char = _SECONDS_PER_CHAR[speaker.voice] * speaker.duration_stretch
        planned, count = 0.0, 0
        while planned < target:
            if next_sentence == len(shuffled):
                raise ValueError(
                    f"The sentence source holds only about {_planned_hours(shuffled):.1f} hours of speech; "
                    f"ask for fewer than {hours:g} hours."
                )
            text = shuffled[next_sentence]
            next_sentence += 1
            utterances.append(PlannedUtterance(f"{speaker.name}-{count:05d}", speaker, text))
            planned += len(text) * seconds_per_char
            count += 1
    return utterances


def _planned_hours(sentences: Sequence[str]) -> float:
    mean_seconds_per_char = sum(_SECONDS_PER_CHAR.values()) / len(_SECONDS_PER_CHAR)
    return sum(map(len, sentences)) * mean_seconds_per_char / 3600


def phone_alignment(segments: Sequence[tuple[str, float]], duration: float) -> list[dict]:
    """
    Phones with start and end seconds from flite's end times, covering [0, `duration`] exactly: the final pause is
    cut or stretched to the end of the audio.
    """
    last_phone, last_end = segments[-1]
    if last_phone != PAUSE or abs(last_end - duration) > _MAX_FINAL_PAUSE_OVERRUN:
        raise RuntimeError(
            f"flite's alignment ends at {last_end:.3f} s ({last_phone}) but the audio at {duration:.3f} s"
        )
    phones, start = [], 0.0
    for phone, end in [*segments[:-1], (last_phone, duration)]:
        if end <= start:
            raise RuntimeError(f"flite gave a non-increasing phone boundary: {phone} ends at {end} after {start}")
        phones.append({"phone": phone, "start": start, "end": end})
        start = end
    return phones


def _wav_duration(path: Path) -> float:
    """Duration of a 16 kHz mono 16-bit wav (flite's format for all the voices used here)."""
    with wave.open(str(path)) as wav:
        if wav.getframerate() != SAMPLING_RATE or wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise RuntimeError(
                f"flite wrote {path} as {wav.getframerate()} Hz, {wav.getnchannels()} channel(s), "
                f"{8 * wav.getsampwidth()}-bit; expected {SAMPLING_RATE} Hz mono 16-bit"
            )
        return wav.getnframes() / SAMPLING_RATE


def _paths(wav_dir: Path, utterance: PlannedUtterance) -> tuple[Path, Path]:
    folder = wav_dir / utterance.speaker.name
    return folder / f"{utterance.id}.wav", folder / f"{utterance.id}.json"


def _is_done(wav_dir: Path, utterance: PlannedUtterance) -> bool:
    """True when a previous run left this utterance's wav and an alignment for the same text and voice settings."""
    wav_path, json_path = _paths(wav_dir, utterance)
    if not (wav_path.is_file() and json_path.is_file()):
        return False
    record = json.loads(json_path.read_text())
    return record["text"] == utterance.text and record["flite_options"] == utterance.speaker.flite_options()


def synthesize(flite: str, wav_dir: Path, utterance: PlannedUtterance) -> None:
    """Write the utterance's wav and its alignment JSON; each file appears only once complete (atomic renames)."""
    wav_path, json_path = _paths(wav_dir, utterance)
    # An earlier run's wav goes first: beside the new alignment it would pass for this text's audio
    wav_path.unlink(missing_ok=True)
    options = utterance.speaker.flite_options()

    def synthesize_into(partial_wav: Path) -> None:
        result = subprocess.run(
            [flite, *options, "-psdur", "-t", utterance.text, "-o", str(partial_wav)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"flite failed on {utterance.id} ({result.returncode}): {result.stderr.strip()}")
        phones = phone_alignment(parse_psdur(result.stdout), _wav_duration(partial_wav))
        record = {"text": utterance.text, "flite_options": options, "phones": phones}
        write_text_atomically(json_path, json.dumps(record))

    write_atomically(wav_path, synthesize_into)  # the wav is renamed last: it exists only with its alignment


def _row(wav_dir: Path, utterance: PlannedUtterance) -> dict:
    wav_path, json_path = _paths(wav_dir, utterance)
    record = json.loads(json_path.read_text())
    return {
        "audio": str(wav_path),
        "id": utterance.id,
        "speaker": utterance.speaker.name,
        "text": record["text"],
        "phones": record["phones"],
    }


def _features():
    from datasets import Audio, Features, List, Value

    phone = {"phone": Value("string"), "start": Value("float64"), "end": Value("float64")}
    return Features(
        {
            "audio": Audio(sampling_rate=SAMPLING_RATE),
            "id": Value("string"),
            "speaker": Value("string"),
            "text": Value("string"),
            "phones": List(phone),
        }
    )


def build_corpus(
    out_dir: str | os.PathLike,
    hours: float = CORPUS_HOURS,
    num_speakers: int = CORPUS_SPEAKERS,
    dev_speakers: int = CORPUS_DEV_SPEAKERS,
    seed: int = 0,
    num_workers: int | None = None,
):
    """
    Synthesize the corpus into `out_dir` and return it as a `datasets.DatasetDict` with "train" and "dev" splits.

    `out_dir` receives the saved dataset (`datasets.load_from_disk(out_dir)`), the dev ABX item file `dev.item`, and
    the synthesized wavs with their alignments under `wavs/`, which a later run reuses instead of synthesizing again.
    The result depends only on the arguments (and the installed flite and fortunes packages), not on `num_workers`.
    """

    if not math.isfinite(hours) or hours <= 0:
        raise ValueError(f"hours must be a positive number, got {hours}")
    if not 2 <= num_speakers <= len(SPEAKERS):
        raise ValueError(f"speakers must be between 2 and {len(SPEAKERS)}, got {num_speakers}")
    if not 1 <= dev_speakers < num_speakers:
        raise ValueError(f"dev speakers must be at least 1 and fewer than the speakers ({num_speakers})")
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    out_dir = Path(out_dir)
    _check_destination(out_dir)
    flite = find_flite()
    out_dir.mkdir(parents=True, exist_ok=True)
    busy = f"Another spidr-hf corpus is writing into {out_dir}: wait for it, or choose another folder"
    try:
        with exclusive_lock(out_dir, wait=False, busy_message=busy):
            return _build_corpus(out_dir, flite, hours, num_speakers, dev_speakers, seed, num_workers)
    except BlockingIOError as error:
        raise ValueError(str(error)) from None


def _build_corpus(
    out_dir: Path, flite: str, hours: float, num_speakers: int, dev_speakers: int, seed: int, num_workers: int | None
):
    from datasets import Dataset, DatasetDict

    speakers = SPEAKERS[:num_speakers]
    utterances = plan_utterances(load_sentences(), speakers, hours, seed)
    wav_dir = out_dir / WAV_DIR
    todo = [utterance for utterance in utterances if not _is_done(wav_dir, utterance)]
    # Threads are enough: each job's work happens in its own flite process
    with ThreadPoolExecutor(num_workers or os.cpu_count()) as pool:
        jobs = pool.map(lambda utterance: synthesize(flite, wav_dir, utterance), todo)
        for _ in tqdm(jobs, total=len(todo), desc="Synthesizing", unit="utt"):
            pass

    dev_names = {speaker.name for speaker in speakers[num_speakers - dev_speakers :]}
    rows = {"train": [], "dev": []}
    for utterance in utterances:
        rows["dev" if utterance.speaker.name in dev_names else "train"].append(_row(wav_dir, utterance))
    features = _features()
    corpus = DatasetDict(
        {split: Dataset.from_list(split_rows, features=features) for split, split_rows in rows.items()}
    )
    # An earlier run's item file goes first: cut before the new one is written, the folder has none (which evaluate
    # names) rather than items of other utterances beside the new dataset
    (out_dir / ITEM_FILE).unlink(missing_ok=True)
    corpus.save_to_disk(out_dir)
    items = [
        item
        for row in rows["dev"]
        for item in items_from_alignment(row["id"], row["speaker"], row["phones"], _num_frames(row["phones"]))
    ]
    write_item_file(out_dir / ITEM_FILE, items)
    return corpus


def _check_destination(out_dir: Path) -> None:
    """A corpus goes into a new or empty folder, or a corpus folder it updates; anything else is the user's."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / WAV_DIR).is_dir():
        raise ValueError(
            f"{out_dir} already holds files that are not a spidr-hf corpus (no {WAV_DIR}/ folder); nothing was "
            "written: choose a new or empty folder"
        )


def _num_frames(phones: Sequence[dict]) -> int:
    """Frames of an utterance whose alignment ends with the audio."""
    return num_frames(round(phones[-1]["end"] * SAMPLING_RATE))


def describe_corpus(corpus, out_dir: Path) -> str:
    """One line on a built corpus: its splits' utterances and hours, and where its ABX items are."""
    # An alignment ends with its audio
    seconds = {split: sum(phones[-1]["end"] for phones in dataset["phones"]) for split, dataset in corpus.items()}
    return (
        f"Wrote {out_dir}: train {len(corpus['train'])} utterances ({seconds['train'] / 3600:.2f} h), dev "
        f"{len(corpus['dev'])} utterances ({seconds['dev'] / 3600:.2f} h), ABX items in {out_dir / ITEM_FILE}"
    )
