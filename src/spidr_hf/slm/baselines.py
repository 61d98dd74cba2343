"""
The baseline unit sources of a spoken-LM ladder, as units folders (`units.record.write_units_folder`) that
`training/train_ulm.py` trains on and `spidr-hf slm-score --units` scores with: gold phones of the built-in corpus
and of the benchmark's flite speech (the topline), the phones of the whole sentence pool as text (a topline with more
language), and log-mel k-means units (the spectral baseline).
"""

import os
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.aligned_speech import load_split
from ..data.audio import decode
from ..data.flite import SPEAKERS, find_flite, phones_of
from ..data.sentences import load_sentences
from ..defaults import KMEANS_FRAMES
from ..errors import SpidrError
from ..units.log_mel import DEFAULT_CLUSTERS, LogMelUnitEncoder
from ..units.phones import PhoneUnitEncoder
from ..units.record import write_units_folder
from .benchmark import spoken_files


def corpus_phone_units(corpus: str | Path, output: str | Path) -> Path:
    """The phones of every utterance of a `spidr-hf corpus` folder (all its splits), from its alignments."""
    from datasets import load_from_disk

    sequences = {}
    for split in load_from_disk(str(corpus)).values():
        for row in split.remove_columns("audio"):
            sequences[row["id"]] = [phone["phone"] for phone in row["phones"]]
    return PhoneUnitEncoder().write(Path(output), sequences, str(corpus))


def benchmark_phone_units(benchmark: str | Path, output: str | Path) -> Path:
    """The phones flite spoke for every file of a `spidr-hf slm-benchmark` folder, a units folder per task
    (output/lexical, output/syntactic, and output/ssc, output/tsc when it has story cloze)."""
    output = Path(output)
    flite, voices = find_flite(), {speaker.name: speaker for speaker in SPEAKERS}
    for task, files in spoken_files(benchmark).items():
        said = list(dict.fromkeys((file.text, file.voice) for file in files))
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # one flite process each
            phones = pool.map(lambda text_voice: phones_of(flite, text_voice[0], voices[text_voice[1]]), said)
            spoken = dict(zip(said, phones, strict=True))
        sequences = {file.id: spoken[file.text, file.voice] for file in files}
        PhoneUnitEncoder().write(output / task, sequences, str(files[0].path.parent))
    return output


def text_phone_units(output: str | Path, num_sentences: int | None = None, seed: int = 0) -> Path:
    """
    The phones of sentences of the built-in sentence pool (`data.sentences.load_sentences`: 10,873 sentences, about
    12 h of speech), `num_sentences` of them drawn with `seed` (None: all), from flite's `t2p` (its lexicon and
    letter-to-sound rules, no speech, a few ms a sentence): a topline with far more language than a corpus a CPU speaks
    and extracts in minutes, which shows whether the benchmark measures anything.
    """
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
    return PhoneUnitEncoder().write(Path(output), sequences, f"t2p of {len(sentences)} sentences (seed {seed})")


def corpus_log_mel_units(
    corpus: str | Path,
    output: str | Path,
    num_clusters: int = DEFAULT_CLUSTERS,
    max_frames: int = KMEANS_FRAMES,
    seed: int = 0,
) -> LogMelUnitEncoder:
    """k-means fitted on the corpus' train split (in a random order drawn with `seed`), and the units of every
    utterance of the corpus (all its splits); returns the encoder, for the benchmark's units."""
    from datasets import load_from_disk

    splits = {name: load_split(corpus, name) for name in load_from_disk(str(corpus))}
    train = [splits["train"][index].audio for index in np.random.default_rng(seed).permutation(len(splits["train"]))]
    encoder = LogMelUnitEncoder.fit(train, num_clusters, max_frames, seed)
    units = {row.id: encoder.encode(row.audio) for rows in splits.values() for row in tqdm(rows, desc="Log-mel units")}
    write_units_folder(Path(output), encoder.identity, units, str(corpus))
    return encoder


def benchmark_log_mel_units(encoder: LogMelUnitEncoder, benchmark: str | Path, output: str | Path) -> Path:
    """The units of every file of a `spidr-hf slm-benchmark` folder, a units folder per task (as
    `benchmark_phone_units`)."""
    output = Path(output)
    for task, files in spoken_files(benchmark).items():
        units = {file.id: encoder.encode(decode(file.path)) for file in tqdm(files, desc=f"Log-mel units, {task}")}
        write_units_folder(output / task, encoder.identity, units, str(files[0].path.parent))
    return output
