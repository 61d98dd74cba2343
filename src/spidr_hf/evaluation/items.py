"""ZeroSpeech / Libri-Light ABX item files: one triphone-centred phone token a line."""

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from ..data.flite import PAUSE
from ..io.atomic_files import write_text_atomically
from ..model.configuration_spidr import SpidrConfig

ITEM_FILE = "dev.item"  # name of a corpus folder's item file, for its dev split
ITEM_HEADER = "#file onset offset #phone prev-phone next-phone speaker"
# The evaluation's frames, on which ABX items, alignments and the log-mel baseline are read: a 25 ms window (400
# samples) every 20 ms (320 samples), no padding, as SpidR base's feature encoder gives them. A model with other frames
# is refused (`evaluator.check_frame_geometry`), not read at these indices
_SPIDR_BASE = SpidrConfig()
WINDOW_SAMPLES, HOP_SAMPLES = _SPIDR_BASE.receptive_field, _SPIDR_BASE.inputs_to_logits_ratio
FRAME_RATE = round(_SPIDR_BASE.frame_rate)  # frames per second (50); frame j is centred at (j + 0.5) / FRAME_RATE s
_EPS = 1e-6  # item times are decimal strings; keep a centre that lies exactly on a boundary inside the token


class AbxItem(NamedTuple):
    file: str
    onset: float
    offset: float
    phone: str
    prev_phone: str
    next_phone: str
    speaker: str


def frame_span(onset: float, offset: float, frame_rate: int = FRAME_RATE) -> tuple[int, int]:
    """`[start, end)` indices of the frames whose centre `(j + 0.5) / frame_rate` lies in `[onset, offset]`."""
    start = max(math.ceil(onset * frame_rate - 0.5 - _EPS), 0)
    end = math.floor(offset * frame_rate - 0.5 + _EPS) + 1
    return start, end


def num_frames(num_samples: int) -> int:
    """Frames of the 25 ms window / 20 ms hop front end (SpidR's convolutions, the log-mel baseline) for a signal."""
    return max((num_samples - WINDOW_SAMPLES) // HOP_SAMPLES + 1, 0)


def items_from_alignment(
    file: str, speaker: str, phones: Sequence[Mapping], total_frames: int, silence: str = PAUSE
) -> list[AbxItem]:
    """
    ABX tokens of an aligned utterance (`phones`: dicts with "phone", "start", "end"): every non-silence phone with a
    phone on each side, kept only if at least one of the utterance's `total_frames` frame centres falls inside it.
    """
    items = []
    for prev, phone, following in zip(phones, phones[1:], phones[2:], strict=False):
        if phone["phone"] == silence:
            continue
        onset, offset = round(phone["start"], 4), round(phone["end"], 4)
        start, end = frame_span(onset, offset)
        if start < end <= total_frames:
            items.append(AbxItem(file, onset, offset, phone["phone"], prev["phone"], following["phone"], speaker))
    return items


def write_item_file(path: str | os.PathLike, items: Iterable[AbxItem]) -> None:
    lines = [ITEM_HEADER]
    lines += [
        f"{i.file} {i.onset:.4f} {i.offset:.4f} {i.phone} {i.prev_phone} {i.next_phone} {i.speaker}" for i in items
    ]
    write_text_atomically(path, "\n".join(lines) + "\n")


def read_item_file(path: str | os.PathLike) -> list[AbxItem]:
    """Read an item file; a ValueError names the first malformed line. An item file without items is an error."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ABX item file {path} not found")
    lines = path.read_text().splitlines()
    if not lines or lines[0].split() != ITEM_HEADER.split():
        raise ValueError(f"{path} does not start with the item-file header {ITEM_HEADER!r}")
    items = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 7:
            raise ValueError(f"{path}:{number}: expected 7 fields ({ITEM_HEADER}), got {len(fields)}")
        try:
            onset, offset = float(fields[1]), float(fields[2])
        except ValueError:
            raise ValueError(f"{path}:{number}: onset and offset must be numbers") from None
        if not 0 <= onset < offset:
            raise ValueError(f"{path}:{number}: need 0 <= onset < offset, got {onset} and {offset}")
        items.append(AbxItem(fields[0], onset, offset, *fields[3:]))
    if not items:
        raise ValueError(f"ABX item file {path} has no items")
    return items
