"""
The errors of spidr-hf that come from what the user gave (a path, an option, a model, audio): the command line prints
them in one line. Anything else keeps its traceback.
"""

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType


class SpidrError(ValueError):
    """Bad input or configuration. A ValueError, so that code catching ValueError keeps working."""


class ModelLoadError(SpidrError):
    """A model folder or Hub id that cannot be loaded as SpidR/DinoSR."""


class AudioError(SpidrError):
    """Audio files that are missing, unreadable or too short."""


class ConfigError(SpidrError):
    """A training config file, or one of its values, that cannot be used."""


class WriteError(SpidrError):
    """An output that cannot be written: a full disk, a quota, a folder without write permission."""


# What the user can act on: space, quotas, permissions, read-only file systems
_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
}
_LOW_SPACE_BYTES = 1 << 20  # free space under which a failed write is taken for a full disk


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """
    Turn the failures of writing `path` that come from the machine (a full disk, permissions) into a one-line
    `WriteError` naming it. torch.save reports a full disk as a RuntimeError of its zip writer, told apart here by the
    free space left.
    """
    try:
        yield
    except OSError as error:
        if error.errno not in _WRITE_ERRNOS:
            raise
        raise WriteError(f"Could not write {path}: {_WRITE_ERRNOS[error.errno]}") from error
    except RuntimeError as error:
        folder = Path(path).parent
        try:
            full = shutil.disk_usage(folder).free < _LOW_SPACE_BYTES
        except OSError:
            full = False
        if not full:
            raise
        raise WriteError(f"Could not write {path}: {_WRITE_ERRNOS[errno.ENOSPC]}") from error


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def run_script(main, argv: list[str], name: str) -> None:
    """Run a training script's `main(argv)`: a user error (`is_user_error`) exits with one line, a bug keeps its
    traceback."""
    try:
        main(argv)
    except ValueError as error:
        if not is_user_error(error):
            raise
        raise SystemExit(f"{name}: error: {error}") from None


def is_user_error(error: BaseException) -> bool:
    """
    A `SpidrError`, or a ValueError raised by spidr-hf's own code (the model files, which ship as remote code, raise
    plain ValueErrors for bad inputs). A ValueError raised inside numpy, torch or another library is a bug to show with
    its traceback.
    """
    if isinstance(error, SpidrError):
        return True
    if not isinstance(error, ValueError):
        return False
    frame: TracebackType | None = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and os.path.abspath(frame.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep)
