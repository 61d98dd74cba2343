"""
Gold phones as units, the topline of a spoken-LM ladder (`PhoneUnitEncoder`): flite's phones, one unit each, pauses
left out (which is what deduplicated frame-level phones would be). They come from what was said (alignments, flite's
text-to-phones), not from audio, so this encoder encodes phone names.
"""

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data.flite import PHONE_CLASSES
from ..errors import SpidrError
from .record import UnitIdentity, write_units_folder

INVENTORY = tuple(phone for name, phones in PHONE_CLASSES.items() if name != "silence" for phone in phones)
PAUSES = set(PHONE_CLASSES["silence"])


class PhoneUnitEncoder:
    """flite's phones (pauses left out) as units: the unit of a phone is its index in `INVENTORY`."""

    @property
    def identity(self) -> UnitIdentity:
        return UnitIdentity(
            kind="phones",
            model="gold phones",
            # The phone inventory stands for the weights: phone units are the same language as long as it is
            weights_sha256=hashlib.sha256(" ".join(INVENTORY).encode()).hexdigest(),
            layer=None,
            num_units=len(INVENTORY),
            deduplicate=True,
        )

    def encode(self, phones: Sequence[str]) -> np.ndarray:
        """The units of a phone sequence; a phone outside flite's set is a one-line error."""
        units = []
        for phone in phones:
            if phone in PAUSES:
                continue
            if phone not in INVENTORY:
                raise SpidrError(f"Unknown phone {phone!r}: not one of flite's ({' '.join(INVENTORY)})")
            units.append(INVENTORY.index(phone))
        return np.asarray(units, dtype=np.int64)

    def write(self, folder: Path, sequences: Mapping[str, Sequence[str]], input: str) -> Path:
        """A units folder (`units.record.write_units_folder`) of the phones of each id."""
        units = {id: self.encode(phones) for id, phones in sequences.items()}
        return write_units_folder(folder, self.identity, units, input)
