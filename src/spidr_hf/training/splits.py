"""Held-out splits that are the same on every run and machine: by a hash of each item's id, not a random draw."""

import zlib


def held_out(id: str, fraction: float) -> bool:
    """Whether the item `id` is held out, for a `fraction` of all ids (crc32 of the id, so no state and no seed)."""
    return zlib.crc32(id.encode("utf-8")) % 10_000 < fraction * 10_000
