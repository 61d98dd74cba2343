"""
Gold phone units, the topline of a spoken-LM ladder: the phones of the built-in corpus' alignments and of the
benchmark's flite speech, as unit folders in the format of `spidr-hf extract` (so that `training/train_ulm.py` trains
on them and `spidr-hf slm-score --units` scores with them). Pauses are left out: the units are the phones, one token
each, which is what deduplicated frame-level phones would be.
"""

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..data.flite import PHONE_CLASSES
from ..errors import SpidrError

INVENTORY = tuple(phone for name, phones in PHONE_CLASSES.items() if name != "silence" for phone in phones)
PAUSES = set(PHONE_CLASSES["silence"])


def phone_ids(phones: Sequence[str]) -> list[int]:
    ids = []
    for phone in phones:
        if phone in PAUSES:
            continue
        if phone not in INVENTORY:
            raise SpidrError(f"Unknown phone {phone!r}: not one of flite's ({' '.join(INVENTORY)})")
        ids.append(INVENTORY.index(phone))
    return ids


def write_phone_units(output: Path, sequences: Mapping[str, Sequence[str]], input: str) -> Path:
    """`output` as `spidr-hf extract --units ... --units-format jsonl --deduplicate` would write it, for phones."""
    from .extract import write_unit_sequences

    source = {
        "model": "gold phones",
        # The phone inventory stands for the weights: phone units are the same language as long as it is
        "weights_sha256": hashlib.sha256(" ".join(INVENTORY).encode()).hexdigest(),
        "input": input,
        "units": "phones",
        "num_units": len(INVENTORY),
        "deduplicate": True,
    }
    return write_unit_sequences(output, {id: phone_ids(phones) for id, phones in sequences.items()}, source)


def corpus_phone_units(corpus: str | Path, output: str | Path) -> Path:
    """The phones of every utterance of a `spidr-hf corpus` folder (all its splits)."""
    from datasets import load_from_disk

    sequences = {}
    for split in load_from_disk(str(corpus)).values():
        for row in split.remove_columns("audio"):
            sequences[row["id"]] = [phone["phone"] for phone in row["phones"]]
    return write_phone_units(Path(output), sequences, str(corpus))


def benchmark_phone_units(benchmark: str | Path, output: str | Path) -> Path:
    """The phones flite spoke for every file of a `spidr-hf slm-benchmark` folder (output/lexical, output/syntactic)."""
    from ..data.flite import SPEAKERS, find_flite, phones_of
    from ..slm.score import read_gold

    benchmark, output = Path(benchmark), Path(output)
    flite, voices = find_flite(), {speaker.name: speaker for speaker in SPEAKERS}
    for task, text_column in (("lexical", "word"), ("syntactic", "transcription")):
        rows = read_gold(benchmark / task / "dev" / "gold.csv", task)
        spoken: dict[tuple[str, str], list[str]] = {}
        for row in rows:
            key = (row[text_column], row["voice"])
            if key not in spoken:
                spoken[key] = phones_of(flite, row[text_column], voices[row["voice"]])
        write_phone_units(output / task, {row["filename"]: spoken[row[text_column], row["voice"]] for row in rows},
                          str(benchmark / task))  # fmt: skip
    return output


def text_phone_units(output: str | Path, num_sentences: int | None = None, seed: int = 0) -> Path:
    """
    The phones of sentences of the built-in corpus' sentence pool (`corpus.load_sentences`: 10,873 sentences, about
    12 h of speech), `num_sentences` of them drawn with `seed` (None: all), from flite's `t2p` (its lexicon and
    letter-to-sound rules, no speech, a few ms a sentence): a topline with far more language than a corpus a CPU speaks
    and extracts in minutes, which shows whether the benchmark measures anything.
    """
    import random
    import shutil
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from ..data.sentences import load_sentences

    t2p = shutil.which("t2p")
    if t2p is None:
        raise SpidrError("flite's t2p is not installed: `sudo apt-get install flite` (Debian/Ubuntu)")
    sentences = load_sentences()
    random.Random(seed).shuffle(sentences)
    sentences = sentences[:num_sentences]

    def phones(sentence: str) -> list[str]:
        spoken = subprocess.run([t2p, sentence], capture_output=True, text=True, check=True).stdout.split()
        return [phone.rstrip("012") for phone in spoken]  # t2p marks vowels' stress, which flite's phones leave out

    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # one t2p process per sentence
        spoken = list(pool.map(phones, sentences))
    sequences = {f"sentence-{index:05d}": sentence_phones for index, sentence_phones in enumerate(spoken)}
    return write_phone_units(Path(output), sequences, f"t2p of {len(sentences)} sentences (seed {seed})")
