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
carry the official columns. And two spoken story-cloze sets in slamkit's layout (`slm.story_cloze`), from the stories
of `slm.stories`: a story (two sentences setting up a situation) with an ending that follows from it, against the
same story with an ending of the opposite situation, which contradicts it (sSC/, like sStoryCloze), or with an ending
of another topic (tSC/, like tStoryCloze); the two endings of a pair spoken with as many phones, each pair by one of
the voices in turn. Deterministic for a seed.
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
from typing import NamedTuple

from tqdm import tqdm

from ..data.flite import SPEAKERS, Speaker, find_flite, phones_of
from ..data.sentences import load_sentences
from ..defaults import BENCHMARK_SENTENCES, BENCHMARK_STORIES, BENCHMARK_VOICES, BENCHMARK_WORDS
from ..errors import SpidrError
from ..io.atomic_files import check_new_folder, new_folder
from . import stories

VOWELS = "aeiou"
CONSONANTS = "bcdfghjklmnpqrstvwxz"
WORD_LIST = Path("/usr/share/dict/words")  # refused as pseudo-words too, when the system has it
LEXICAL_COLUMNS = ["id", "filename", "voice", "frequency", "word", "phones", "length", "correct"]
SYNTACTIC_COLUMNS = ["filename", "id", "voice", "type", "subtype", "correct", "transcription"]
GOLD_FILE = "gold.csv"
# The story-cloze sets (folders of the benchmark, in slamkit's layout) and their listing of what each file says
STORY_SETS = ("sSC", "tSC")
STORIES_FILE = "stories.csv"
STORY_COLUMNS = ["filename", "pair", "correct", "voice", "situation", "ending_situation", "text", "phones"]

# Regular nouns (plural: +s) and verbs (third person singular: +s), and adjectives for the templates: 24 x 24 x 4
# combinations, enough for the 1,000 balanced pairs of the ladder
NOUNS = (
    "dog", "cat", "girl", "boy", "bird", "farmer", "teacher", "horse", "king", "doctor", "friend", "baker",
    "singer", "player", "writer", "driver", "pilot", "student", "sister", "brother", "monkey", "rabbit", "tiger",
    "lion",
)  # fmt: skip
VERBS = (
    "run", "sleep", "sing", "jump", "walk", "smile", "swim", "laugh", "dance", "wait", "shout", "read", "play",
    "talk", "work", "climb", "paint", "listen", "rest", "eat", "drink", "sit", "look", "learn",
)  # fmt: skip
ADJECTIVES = ("small", "happy", "old", "quiet", "green", "tall", "young", "brave")


class SpokenFile(NamedTuple):
    """A file of a built benchmark: its id (as slm-score names it), its audio, what it says and in which voice."""

    id: str
    path: Path
    text: str
    voice: str


def spoken_files(benchmark: str | Path) -> dict[str, list[SpokenFile]]:
    """
    The files of a benchmark that `build_benchmark` wrote, by task: lexical, syntactic, ssc and tsc (those it holds),
    the names of the units folders that `slm-score --units` reads.
    """
    benchmark = Path(benchmark)
    listings = {
        "lexical": (benchmark / "lexical/dev", GOLD_FILE, "word"),
        "syntactic": (benchmark / "syntactic/dev", GOLD_FILE, "transcription"),
        **{story_set.lower(): (benchmark / story_set, STORIES_FILE, "text") for story_set in STORY_SETS},
    }
    files = {}
    for task, (folder, listing, text_column) in listings.items():
        if (folder / listing).is_file():
            with open(folder / listing, newline="", encoding="utf-8") as file:
                rows = list(csv.DictReader(file))
            files[task] = [
                SpokenFile(row["filename"], folder / f"{row['filename']}.wav", row[text_column], row["voice"])
                for row in rows
            ]
    if not files:
        raise SpidrError(
            f"{benchmark} is not a benchmark of `spidr-hf slm-benchmark` (no {GOLD_FILE} or {STORIES_FILE})"
        )
    return files


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


def check_feasible(num_words: int, num_sentences: int, num_stories: int = 0) -> None:
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
    setups = len(stories.PEOPLE) * sum(len(details.stories) for details in stories.SITUATIONS.values())
    if num_stories > setups:
        raise SpidrError(
            f"At most {setups} story pairs of each set can be made (the stories have {setups} set-ups, and some make "
            f"no balanced pair), {num_stories} were asked for"
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


class PhoneCounter:
    """How many phones flite speaks for a text in a voice, each text asked of flite once."""

    def __init__(self, flite: str) -> None:
        self.flite = flite
        self.counts: dict[tuple[str, str], int] = {}

    def __call__(self, text: str, voice: Speaker) -> int:
        if (text, voice.name) not in self.counts:
            self.counts[text, voice.name] = len(phones_of(self.flite, text, voice))
        return self.counts[text, voice.name]


def story_items(flite: str, num_stories: int, voices: list[Speaker], seed: int, story_set: str) -> list[Item]:
    """
    The files of `num_stories` story pairs of `story_set` (sSC: the false ending contradicts the story; tSC: it is
    of another topic), in slamkit's layout: pair i is `2i_true` and `2i+1_false`. Stories (a situation's set-up with a
    name) are drawn without replacement; each gets the first of its (true ending, false ending) combinations, in a
    drawn order, whose two stories flite speaks with as many phones in the pair's voice.
    """
    rng = random.Random(f"{seed}:{story_set}")
    count = PhoneCounter(flite)
    setups = [
        (situation, story, name, pronoun)
        for situation, details in stories.SITUATIONS.items()
        for story in details.stories
        for name, pronoun in stories.PEOPLE
    ]
    rng.shuffle(setups)
    items: list[Item] = []
    pair = 0
    for situation, story, name, pronoun in setups:
        if pair == num_stories:
            break
        voice = voices[pair % len(voices)]
        if story_set == "sSC":
            false_situations = [stories.opposite(situation)]
        else:
            false_situations = [s for s in stories.SITUATIONS if s not in (situation, stories.opposite(situation))]
        combinations = [
            (true, false_situation, false)
            for true in stories.SITUATIONS[situation].endings
            for false_situation in false_situations
            for false in stories.SITUATIONS[false_situation].endings
        ]
        rng.shuffle(combinations)
        context = stories.fill(story, name, pronoun)
        for true, false_situation, false in combinations:
            endings = {"1": stories.fill(true, name, pronoun), "0": stories.fill(false, name, pronoun)}
            if count(endings["1"], voice) != count(endings["0"], voice):  # a cheap test first
                continue
            texts = {correct: f"{context} {ending}" for correct, ending in endings.items()}
            if count(texts["1"], voice) != count(texts["0"], voice):
                continue
            for correct, label, number in (("1", "true", 2 * pair), ("0", "false", 2 * pair + 1)):
                row = {
                    "filename": f"{number}_{label}",
                    "pair": pair,
                    "correct": correct,
                    "voice": voice.name,
                    "situation": situation,
                    "ending_situation": situation if correct == "1" else false_situation,
                    "text": texts[correct],
                    "phones": count(texts[correct], voice),
                }
                items.append(Item(texts[correct], voice, row))
            pair += 1
            break
    if pair < num_stories:
        raise SpidrError(f"The stories make {pair} balanced {story_set} pairs, {num_stories} were asked for")
    return items


def build_benchmark(
    output: str | Path,
    num_words: int = BENCHMARK_WORDS,
    num_sentences: int = BENCHMARK_SENTENCES,
    num_voices: int = BENCHMARK_VOICES,
    seed: int = 0,
    num_workers: int | None = None,
    num_stories: int = BENCHMARK_STORIES,
) -> Path:
    """Write the benchmark to `output` (a new or empty folder), all or nothing; `num_stories` 0: no story cloze."""
    output = Path(output)
    check_new_folder(output)  # before the items are drawn, which runs flite for minutes at full size
    if num_words < 1 or num_sentences < 1:
        raise SpidrError("The benchmark needs at least one word pair and one sentence pair")
    if num_stories < 0:
        raise SpidrError(f"num_stories must be 0 or more, got {num_stories}")
    voices = list(SPEAKERS[:num_voices])
    if not 1 <= num_voices <= len(SPEAKERS):
        raise SpidrError(f"num_voices must be in [1, {len(SPEAKERS)}], got {num_voices}")
    if num_workers is not None and num_workers < 1:
        raise SpidrError(f"num_workers must be at least 1, got {num_workers}")
    check_feasible(num_words, num_sentences, num_stories)
    flite = find_flite()
    tasks = {
        "lexical/dev": (lexical_items(flite, num_words, voices, seed), LEXICAL_COLUMNS, GOLD_FILE),
        "syntactic/dev": (syntactic_items(flite, num_sentences, voices, seed), SYNTACTIC_COLUMNS, GOLD_FILE),
    }
    if num_stories:
        for story_set in STORY_SETS:
            tasks[story_set] = (story_items(flite, num_stories, voices, seed, story_set), STORY_COLUMNS, STORIES_FILE)
    with new_folder(output) as staging:
        for task, (items, columns, listing) in tasks.items():
            folder = staging / task
            folder.mkdir(parents=True)

            def speak(item: Item, folder: Path = folder) -> None:
                phones_of(flite, item.text, item.voice, folder / f"{item.row['filename']}.wav")

            with ThreadPoolExecutor(num_workers) as pool:
                list(tqdm(pool.map(speak, items), total=len(items), desc=f"Speaking {task}", unit="file"))
            with open(folder / listing, "w", newline="", encoding="utf-8") as file:
                writer = csv.DictWriter(file, fieldnames=columns)
                writer.writeheader()
                writer.writerows(item.row for item in items)
    return output
