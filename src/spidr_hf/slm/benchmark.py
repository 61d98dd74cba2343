"""
`spidr-hf slm-benchmark`: a spoken-LM benchmark in the ZeroSpeech 2021 sLM21 layout, spoken by flite, so that the
chain from speech to units to a unit LM's scores runs without downloads.

- lexical (sWUGGY-like): words of the built-in corpus' sentences (4 to 8 letters, their count in those sentences as
  the frequency) against pseudo-words made from each by changing one or two letters, a vowel for a vowel and a
  consonant for a consonant (so that they stay pronounceable), that are no word of the sentences or of the system's
  word list, and that flite speaks with as many phones as the word (balanced in length);
- syntactic (sBLIMP-like): grammatical against ungrammatical sentences from templates: subject-verb agreement
  ("is" / "are" after singular and plural subjects), adjective-noun order, and determiner-noun number, the two
  sentences of a pair spoken with as many phones (a summed log-probability favours shorter sequences);

each spoken by several flite voices. Files have opaque names (a hash), as in the challenge, and the `gold.csv` files
carry the official columns. Deterministic for a seed.
"""

import csv
import hashlib
import itertools
import random
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..data.flite import SPEAKERS, Speaker, find_flite, phones_of
from ..data.sentences import load_sentences
from ..defaults import BENCHMARK_SENTENCES, BENCHMARK_VOICES, BENCHMARK_WORDS
from ..errors import SpidrError
from ..io.atomic_files import new_folder

VOWELS = "aeiou"
CONSONANTS = "bcdfghjklmnpqrstvwxz"
WORD_LIST = Path("/usr/share/dict/words")  # refused as pseudo-words too, when the system has it
LEXICAL_COLUMNS = ["id", "filename", "voice", "frequency", "word", "phones", "length", "correct"]
SYNTACTIC_COLUMNS = ["filename", "id", "voice", "type", "subtype", "correct", "transcription"]

# Regular nouns (plural: +s) and verbs (third person singular: +s), and adjectives for the templates
NOUNS = ("dog", "cat", "girl", "boy", "bird", "farmer", "teacher", "horse", "king", "doctor", "friend", "baker")
VERBS = ("run", "sleep", "sing", "jump", "walk", "smile", "swim", "laugh", "dance", "wait", "shout", "read")
ADJECTIVES = ("small", "happy", "old", "quiet", "green", "tall", "young", "brave")


@dataclass(frozen=True)
class Item:
    """One audio file to speak: its text and voice, and its gold row."""

    text: str
    voice: Speaker
    row: dict


def corpus_words(sentences: list[str]) -> Counter:
    return Counter(word for sentence in sentences for word in re.findall(r"[a-z]+", sentence.lower()))


def pseudo_words(word: str, rng: random.Random, known: set[str], tries: int = 50) -> list[str]:
    """Candidates made by one or two same-class letter changes, none a known word, in the order drawn."""
    candidates = []
    for _ in range(tries):
        letters = list(word)
        for position in rng.sample(range(len(letters)), k=rng.choice((1, 2))):
            pool = VOWELS if letters[position] in VOWELS else CONSONANTS
            letters[position] = rng.choice([letter for letter in pool if letter != letters[position]])
        candidate = "".join(letters)
        if candidate not in known and candidate not in candidates:
            candidates.append(candidate)
    return candidates


def opaque_name(seed: int, *parts) -> str:
    return hashlib.sha1(f"{seed}:{':'.join(map(str, parts))}".encode()).hexdigest()[:12]


def candidate_words(counts: Counter) -> list[str]:
    """The words of the corpus' sentences that a pair can be made of (4 to 8 letters), in order."""
    return sorted(word for word in counts if 4 <= len(word) <= 8)


def check_feasible(num_words: int, num_sentences: int) -> None:
    """More pairs than the words or templates can make are refused before flite speaks anything (it would run on
    every candidate before finding out)."""
    words = len(candidate_words(corpus_words(load_sentences())))
    if num_words > words:
        raise SpidrError(
            f"At most {words} word / pseudo-word pairs can be made (the corpus has {words} words of 4 to 8 letters, "
            f"and some make no pair), {num_words} were asked for"
        )
    templates = len(sentence_pairs(random.Random(0)))
    if num_sentences > templates:
        raise SpidrError(
            f"At most {templates} sentence pairs can be made (the templates make {templates}, and some are not "
            f"balanced), {num_sentences} were asked for"
        )


def lexical_items(flite: str, num_words: int, voices: list[Speaker], seed: int) -> list[Item]:
    sentences = load_sentences()
    counts = corpus_words(sentences)
    known = set(counts)
    if WORD_LIST.is_file():
        known |= {line.strip().lower() for line in WORD_LIST.read_text(errors="ignore").splitlines()}
    else:
        print(
            f"No word list at {WORD_LIST}: pseudo-words are kept apart from the corpus' words only (on Debian/Ubuntu: "
            "sudo apt-get install wamerican)"
        )
    rng = random.Random(seed)
    pool = candidate_words(counts)
    rng.shuffle(pool)
    items: list[Item] = []
    pairs = 0
    reference_voice = voices[0]
    for word in pool:
        if pairs == num_words:
            break
        word_phones = phones_of(flite, word, reference_voice)
        # The first candidate flite speaks with as many phones as the word: pairs balanced in length
        nonword = next(
            (
                c
                for c in pseudo_words(word, rng, known)
                if len(phones_of(flite, c, reference_voice)) == len(word_phones)
            ),
            None,
        )
        if nonword is None:
            continue
        nonword_phones = phones_of(flite, nonword, reference_voice)
        for voice in voices:
            for correct, text, phones in (("1", word, word_phones), ("0", nonword, nonword_phones)):
                row = {
                    "id": pairs,
                    "filename": opaque_name(seed, "lexical", pairs, voice.name, correct),
                    "voice": voice.name,
                    "frequency": counts[word] if correct == "1" else "",
                    "word": text,
                    "phones": " ".join(phones),
                    "length": len(phones),
                    "correct": correct,
                }
                items.append(Item(text, voice, row))
        pairs += 1
    if pairs < num_words:
        raise SpidrError(f"Only {pairs} word / pseudo-word pairs could be made, {num_words} were asked for")
    return items


def sentence_pairs(rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(type, subtype, grammatical, ungrammatical) from the templates, every combination once."""
    pairs = []
    for noun in NOUNS:
        for verb in VERBS:
            adjective = ADJECTIVES[(NOUNS.index(noun) + VERBS.index(verb)) % len(ADJECTIVES)]
            # "is" and "are" are two phones each (ih z, aa r)
            pairs.append(("agreement", "singular", f"the {noun} is {adjective}", f"the {noun} are {adjective}"))
            pairs.append(("agreement", "plural", f"the {noun}s are {adjective}", f"the {noun}s is {adjective}"))
            pairs.append(
                ("word_order", "adjective_noun", f"the {adjective} {noun} {verb}s", f"the {noun} {adjective} {verb}s")
            )
            # The same letters either way ("a dog runs" / "a dogs run"): no length for a summed score to favour
            pairs.append(("determiner_noun", "number", f"a {noun} {verb}s", f"a {noun}s {verb}"))
    rng.shuffle(pairs)
    return pairs


def syntactic_items(flite: str, num_sentences: int, voices: list[Speaker], seed: int) -> list[Item]:
    # Only pairs that flite speaks with as many phones ("a horses read" has one more than "a horse reads"), in the
    # order drawn; ids count within each (type, subtype)
    balanced = (
        pair
        for pair in sentence_pairs(random.Random(seed))
        if len(phones_of(flite, pair[2], voices[0])) == len(phones_of(flite, pair[3], voices[0]))
    )
    chosen = list(itertools.islice(balanced, num_sentences))
    if len(chosen) < num_sentences:
        raise SpidrError(f"The templates make {len(chosen)} balanced sentence pairs, {num_sentences} were asked for")
    ids: Counter = Counter()
    items = []
    for type, subtype, good, bad in chosen:
        id = ids[type, subtype]
        ids[type, subtype] += 1
        for voice in voices:
            for correct, text in (("1", good), ("0", bad)):
                row = {
                    "filename": opaque_name(seed, "syntactic", type, subtype, id, voice.name, correct),
                    "id": id,
                    "voice": voice.name,
                    "type": type,
                    "subtype": subtype,
                    "correct": correct,
                    "transcription": text,
                }
                items.append(Item(text, voice, row))
    return items


def build_benchmark(
    output: str | Path,
    num_words: int = BENCHMARK_WORDS,
    num_sentences: int = BENCHMARK_SENTENCES,
    num_voices: int = BENCHMARK_VOICES,
    seed: int = 0,
    num_workers: int | None = None,
) -> Path:
    """Write the benchmark to `output` (a new or empty folder), all or nothing."""
    output = Path(output)
    if num_words < 1 or num_sentences < 1:
        raise SpidrError("The benchmark needs at least one word pair and one sentence pair")
    voices = list(SPEAKERS[:num_voices])
    if not 1 <= num_voices <= len(SPEAKERS):
        raise SpidrError(f"num_voices must be in [1, {len(SPEAKERS)}], got {num_voices}")
    if num_workers is not None and num_workers < 1:
        raise SpidrError(f"num_workers must be at least 1, got {num_workers}")
    check_feasible(num_words, num_sentences)
    flite = find_flite()
    tasks = {
        "lexical": (lexical_items(flite, num_words, voices, seed), LEXICAL_COLUMNS),
        "syntactic": (syntactic_items(flite, num_sentences, voices, seed), SYNTACTIC_COLUMNS),
    }
    with new_folder(output) as staging:
        for task, (items, columns) in tasks.items():
            folder = staging / task / "dev"
            folder.mkdir(parents=True)

            def speak(item: Item, folder: Path = folder) -> None:
                phones_of(flite, item.text, item.voice, folder / f"{item.row['filename']}.wav")

            with ThreadPoolExecutor(num_workers) as pool:
                list(tqdm(pool.map(speak, items), total=len(items), desc=f"Speaking the {task} set", unit="file"))
            with open(folder / "gold.csv", "w", newline="", encoding="utf-8") as file:
                writer = csv.DictWriter(file, fieldnames=columns)
                writer.writeheader()
                writer.writerows(item.row for item in items)
    return output
