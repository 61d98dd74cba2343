"""
The errors of spidr-hf that come from what the user gave (a path, an option, a model, audio, a full disk), and the rule
that tells them from bugs (`is_user_error`): the command line and the training scripts print those in one line;
anything else keeps its traceback.
"""

import os
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


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


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
