"""
The JSON records spidr-hf keeps in an output folder to say what made it (a units folder's settings, a training run's
inputs): written whole (aside, then renamed), tagged with their writer, and read back with a one-line error for a
file of that name that is no such record.
"""

import json
from pathlib import Path
from typing import Any

from ..errors import SpidrError
from .atomic_files import write_text_atomically


def write_json_record(path: Path, writer: str, fields: dict[str, Any]) -> None:
    """`fields` under `written_by: writer`, written aside then renamed: the record is never cut off."""
    write_text_atomically(path, json.dumps({"written_by": writer, **fields}, indent=2) + "\n")


def read_json_record(path: Path, writer: str, key: str, what: str) -> Any | None:
    """The `key` entry of the record `writer` wrote at `path` (None: no file); any other file there is a one-line
    error saying it is not `what` (a JSON object under `key` is required)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not (isinstance(record, dict) and record.get("written_by") == writer and isinstance(record.get(key), dict)):
        raise SpidrError(f"{path} is not {what}: choose another output folder")
    return record[key]
