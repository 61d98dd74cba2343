"""
The sentence pool of the built-in speech (the corpus, the spoken-LM benchmark's words, the text topline): plain English
sentences of Debian's `fortunes` cookie files, so that no prose is shipped with this project
(`sudo apt-get install fortunes`).
"""

import re
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# The English cookie files with ordinary sentences (others are ASCII art, code, or offensive material).
FORTUNE_FILES = (
    "computers",
    "cookie",
    "definitions",
    "education",
    "food",
    "fortunes",
    "goedel",
    "humorists",
    "kids",
    "knghtbrd",
    "law",
    "literature",
    "love",
    "magic",
    "medicine",
    "miscellaneous",
    "paradoxum",
    "people",
    "pets",
    "platitudes",
    "riddles",
    "science",
    "songs-poems",
    "sports",
    "startrek",
    "tao",
    "wisdom",
    "work",
)
# Plain sentences only: letters and light punctuation, so that flite's text normalization has nothing to guess
_SENTENCE = re.compile(r"[A-Z][A-Za-z ,.;!?'-]*[.!?]")
_ACRONYM = re.compile(r"[A-Z]{2,}")
MIN_WORDS, MAX_WORDS = 5, 30
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def load_sentences(fortunes_dir: Path = FORTUNES_DIR) -> list[str]:
    """Sorted distinct plain English sentences of 5 to 30 words from Debian's fortune-cookie files."""
    missing = [name for name in FORTUNE_FILES if not (fortunes_dir / name).is_file()]
    if missing:
        raise ValueError(
            f"The sentence source {fortunes_dir} is missing {', '.join(missing)}: install it with "
            "`sudo apt-get install fortunes` (Debian/Ubuntu)."
        )
    sentences = set()
    for name in FORTUNE_FILES:
        # latin-1 decodes any byte; sentences with non-ASCII characters are dropped by the filter anyway
        for cookie in (fortunes_dir / name).read_text(encoding="latin-1").split("\n%\n"):
            # Attribution lines ("-- Author") are not part of the text
            body = " ".join(line for line in cookie.splitlines() if not line.strip().startswith("--"))
            for sentence in _SENTENCE_END.split(" ".join(body.split())):
                if _is_plain_sentence(sentence):
                    sentences.add(sentence)
    return sorted(sentences)


def _is_plain_sentence(sentence: str) -> bool:
    return (
        _SENTENCE.fullmatch(sentence) is not None
        and "--" not in sentence
        and _ACRONYM.search(sentence) is None
        and MIN_WORDS <= len(sentence.split()) <= MAX_WORDS
    )
