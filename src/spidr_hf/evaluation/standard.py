"""
Evaluation sets in the field's own layout: a ZeroSpeech 2021 / Libri-Light ABX item file with a folder of the audio
files it names (any format FFmpeg reads), and optional frame-level phone alignments, either a folder of Praat TextGrid
files (Montreal Forced Aligner's output, one per audio file, with a "phones" tier) or a table of
`file start end phone` rows (TSV, or CSV when the name ends in .csv).
"""

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.aligned_speech import Utterance, check_alignment
from ..data.audio import audio_files, draw_audio, draw_folder_audio, name_some
from ..model.configuration_spidr import SAMPLING_RATE
from ..model.pipeline_spidr import load_audio
from .items import AbxItem, read_item_file

TABLE_HEADER = ("file", "start", "end", "phone")
PHONE_TIER = "phones"  # MFA's phone tier; with several speakers MFA 1 names it "SPEAKER - phones"
# MFA writes silences as empty intervals: they get this label, so that every frame has a phone
EMPTY_INTERVAL = "sil"


def describe_set(item_file: str | os.PathLike, audio_dir: str | os.PathLike) -> tuple[str, str]:
    """What the report names: (dataset, split) = (the audio folder, the item file's name)."""
    return str(audio_dir), Path(item_file).name


def find_audio(audio_dir: str | os.PathLike, ids: Sequence[str]) -> dict[str, Path]:
    """The audio file of each id (`DIR/**/ID.*`); a missing or ambiguous file is a one-line error naming the ids."""
    by_stem = files_by_stem(audio_files(audio_dir), ids, f"audio files in {audio_dir}")
    missing = [file_id for file_id in ids if file_id not in by_stem]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(ids)} audio files named in the item file are not in {audio_dir}: "
            f"{name_some(missing)}"
        )
    return by_stem


def files_by_stem(paths: Sequence[Path], ids: Sequence[str] | None, what: str) -> dict[str, Path]:
    """
    The file of each id among `paths` (matched by name without suffix; all of them when `ids` is None). Two files of
    one wanted name, in different subfolders, are a one-line error: which is meant cannot be told.
    """
    by_stem: dict[str, list[Path]] = {}
    for path in paths:
        by_stem.setdefault(path.stem, []).append(path)
    wanted = list(by_stem) if ids is None else [file_id for file_id in ids if file_id in by_stem]
    ambiguous = [file_id for file_id in wanted if len(by_stem[file_id]) > 1]
    if ambiguous:
        example = ", ".join(str(path) for path in by_stem[ambiguous[0]])
        raise ValueError(f"Several {what} have the name of {name_some(ambiguous)} (e.g. {example})")
    return {file_id: by_stem[file_id][0] for file_id in wanted}


def decode_all(paths: dict[str, Path], desc: str) -> dict[str, np.ndarray]:
    """16 kHz mono audio of each id; files FFmpeg cannot read are one error naming them, after all were tried."""
    audios, failures = {}, []
    for file_id, path in tqdm(paths.items(), desc=desc):
        try:
            audios[file_id] = load_audio(path, None, SAMPLING_RATE)
        except (OSError, ValueError) as error:
            failures.append((file_id, error))
    if failures:
        raise ValueError(
            f"Cannot read {len(failures)} audio file(s) named in the item file: {name_some([i for i, _ in failures])} "
            f"({failures[0][1]})"
        )
    return audios


def load_item_set(
    item_file: str | os.PathLike,
    audio_dir: str | os.PathLike,
    alignments: str | os.PathLike | None = None,
    max_utterances: int | None = None,
    seed: int = 0,
) -> tuple[list[Utterance], list[AbxItem]]:
    """
    The utterances of the files an item file names (in the order they first appear there; all of them, or a seeded
    random subset of `max_utterances`, drawn as for a corpus split), with their phones from `alignments` (None
    without), and the items.
    """
    items = read_item_file(item_file)
    speakers: dict[str, str] = {}
    for item in items:
        speakers.setdefault(item.file, item.speaker)
    ids = list(speakers)
    if max_utterances is not None and max_utterances < len(ids):
        chosen = np.random.default_rng(seed).choice(len(ids), max_utterances, replace=False)
        ids = [ids[index] for index in sorted(chosen.tolist())]
    audios = decode_all(find_audio(audio_dir, ids), f"Loading {Path(item_file).name}")
    phones: dict[str, list[dict] | None] = dict.fromkeys(ids)
    if alignments is not None:
        aligned = read_alignments(alignments, ids)
        unaligned = [file_id for file_id in ids if file_id not in aligned]
        if unaligned:
            raise ValueError(f"{alignments} has no alignment of {len(unaligned)} file(s): {name_some(unaligned)}")
        phones = {file_id: aligned[file_id] for file_id in ids}
    utterances = [Utterance(file_id, speakers[file_id], audios[file_id], phones[file_id]) for file_id in ids]
    for utterance in utterances:
        if utterance.phones is not None:
            check_alignment(utterance)
    return utterances, items


def read_alignments(path: str | os.PathLike, ids: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """
    Phones (`{"phone", "start", "end"}` in seconds, in time order) of each file: from the `ID.TextGrid` files of a
    folder (only those of `ids` when given), or from a `file start end phone` table.
    """
    path = Path(path)
    if path.is_dir():
        grids = sorted(grid for grid in path.rglob("*") if grid.suffix.lower() == ".textgrid" and grid.is_file())
        wanted = files_by_stem(grids, ids, f"TextGrid files in {path}")
        return {file_id: read_textgrid(grid) for file_id, grid in wanted.items()}
    if path.is_file():
        return read_alignment_table(path)
    raise ValueError(f"Alignments {path} not found: pass a folder of TextGrid files or a TSV/CSV file")


def read_alignment_table(path: str | os.PathLike) -> dict[str, list[dict]]:
    """`file start end phone` rows (an optional header line of those names); a ValueError names a malformed line."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as table:
        if path.suffix.lower() == ".csv":
            rows = [[field.strip() for field in row] for row in csv.reader(table)]
        else:  # tab- (or space-) separated
            rows = [line.split() for line in table.read().splitlines()]
    phones: dict[str, list[dict]] = {}
    for number, fields in enumerate(rows, start=1):
        if not fields or (number == 1 and tuple(field.lower() for field in fields) == TABLE_HEADER):
            continue
        if len(fields) != len(TABLE_HEADER):
            raise ValueError(f"{path}:{number}: expected 4 fields ({' '.join(TABLE_HEADER)}), got {len(fields)}")
        file_id, start, end, phone = fields
        try:
            start_time, end_time = float(start), float(end)
        except ValueError:
            raise ValueError(f"{path}:{number}: start and end must be numbers, got {start!r} and {end!r}") from None
        phones.setdefault(file_id, []).append({"phone": phone, "start": start_time, "end": end_time})
    if not phones:
        raise ValueError(f"Alignment table {path} has no rows")
    for file_phones in phones.values():
        file_phones.sort(key=lambda phone: phone["start"])
    return phones


# A small reader of Praat's text TextGrid files (long and short forms) rather than a dependency: none of the project's
# dependencies reads them, and the maintained packages (praatio, textgrid) would be one more install for ~50 lines.
# Both forms are the same sequence of strings, numbers and flags; the long form adds `name =` labels and `[n]`
# indices, which are skipped.
_TOKEN = re.compile(
    r'"(?P<string>(?:[^"]|"")*)"|(?P<flag><exists>|<absent>)|\[[^\]\n]*\]|[A-Za-z_][\w?]*'
    r"|(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|\S"
)


def _textgrid_tokens(text: str) -> list[tuple[str, str | float, int]]:
    """(kind, value, line number) of the strings, numbers and flags of a TextGrid text."""
    tokens, line, position = [], 1, 0
    for match in _TOKEN.finditer(text):
        line += text.count("\n", position, match.start())
        position = match.start()
        if match["string"] is not None:
            tokens.append(("string", match["string"].replace('""', '"'), line))
        elif match["flag"] is not None:
            tokens.append(("flag", match["flag"], line))
        elif match["number"] is not None:
            tokens.append(("number", float(match["number"]), line))
    return tokens


def read_textgrid(path: str | os.PathLike, tier: str = PHONE_TIER) -> list[dict]:
    """The intervals of the phone tier of a Praat text TextGrid; a ValueError names the malformed line."""
    path = Path(path)
    data = path.read_bytes()
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"  # Praat may write UTF-16
    try:
        tokens = iter(_textgrid_tokens(data.decode(encoding)))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a text TextGrid ({error.reason})") from None
    last_line = 1

    def take(kind: str, what: str) -> str | float:
        nonlocal last_line
        token = next(tokens, None)
        if token is None:
            raise ValueError(f"{path}:{last_line}: the TextGrid ends early, expected {what}")
        last_line = token[2]
        if token[0] != kind:
            raise ValueError(f"{path}:{token[2]}: expected {what}, got {token[1]!r}")
        return token[1]

    if take("string", "the file type") != "ooTextFile" or take("string", "the object class") != "TextGrid":
        raise ValueError(f'{path} is not a Praat text TextGrid (File type = "ooTextFile", Object class = "TextGrid")')
    take("number", "xmin")
    take("number", "xmax")
    tier_names = []
    if take("flag", "<exists> or <absent>") == "<exists>":
        for _ in range(int(take("number", "the number of tiers"))):
            kind, name = take("string", "a tier class"), take("string", "a tier name")
            take("number", "the tier's xmin")
            take("number", "the tier's xmax")
            size = int(take("number", "the number of intervals"))
            tier_names.append(name)
            if kind == "IntervalTier":
                intervals = [
                    (
                        take("number", "an interval's xmin"),
                        take("number", "an interval's xmax"),
                        take("string", "a label"),
                    )
                    for _ in range(size)
                ]
                if name == tier or name.endswith(f" - {tier}"):
                    return [
                        {"phone": label.strip() or EMPTY_INTERVAL, "start": start, "end": end}
                        for start, end, label in intervals
                    ]
            else:  # a point tier: time and mark
                for _ in range(size):
                    take("number", "a point's time")
                    take("string", "a point's mark")
    raise ValueError(f"{path} has no {tier!r} interval tier (tiers: {', '.join(tier_names) or 'none'})")


def draw_kmeans_audio(
    utterances: Sequence[Utterance], kmeans_dir: str | os.PathLike | None, max_seconds: float, seed: int
) -> list[np.ndarray]:
    """
    Audio to fit k-means units on: randomly drawn files of `kmeans_dir` (all audio files under it), or without it the
    set's own utterances (unsupervised, so fitting on the evaluated audio leaks no labels), up to `max_seconds`.
    """
    if kmeans_dir is None:
        return draw_audio(len(utterances), lambda index: utterances[index].audio, max_seconds, seed)
    return draw_folder_audio(kmeans_dir, max_seconds, seed, "the k-means folder")
