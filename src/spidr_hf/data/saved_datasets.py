"""Folders written by `datasets`' `save_to_disk`, opened with a one-line error when they are not whole."""

import json
import os
from pathlib import Path

from ..errors import SpidrError


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a `save_to_disk` folder (of a DatasetDict or of one Dataset)."""
    path = Path(path)
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def load_saved_dataset(path: str | os.PathLike):
    """
    `datasets.load_from_disk(path)`, where a folder whose records are damaged (an empty or cut `dataset_dict.json`,
    a dataset saved with no rows, a missing arrow file) is a SpidrError naming it, not a traceback from `datasets`.
    """
    from datasets import load_from_disk

    try:
        return load_from_disk(str(path))
    # JSONDecodeError: an empty or cut record; IndexError: a dataset saved with no rows; FileNotFoundError: a missing
    # arrow file or split folder
    except (json.JSONDecodeError, IndexError, FileNotFoundError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise SpidrError(f"{path} is a damaged or empty save_to_disk dataset folder: {reason}") from None
