"""
Writes that an interrupted run (Ctrl-C, SIGKILL, a full disk) cannot leave half done: every file or folder that
spidr-hf writes for a user goes through one of these three.

- `write_atomically(path, write)`: one file, written aside under a hidden name in its folder, then renamed over
  `path` (a rename within one file system is atomic). Features, settings records, reports, synthesized audio.
- `new_folder(destination)`: a folder that appears whole or not at all (release and converted model folders): the
  caller fills a hidden staging folder beside it, which is renamed to `destination` once the block ends without error.
- `replace_in_folder(folder, last=...)`: files that replace others in an existing folder (a model updated in place):
  all are written into a hidden staging folder first, then each is renamed over its old version, `last` last.
"""

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import SpidrError, WriteError
from .file_locks import locked_temporary_folder, remove_unlocked_folders

PARTIAL_SUFFIX = ".partial"

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
    `WriteError` naming it. Writers that report a full disk in their own words (torch.save's zip writer, a
    RuntimeError "unexpected pos"; safetensors, a SafetensorError) are told apart by the free space left.
    """
    try:
        yield
    except SpidrError:  # already the user's, in one line
        raise
    except OSError as error:
        if error.errno not in _WRITE_ERRNOS:
            raise
        raise WriteError(f"Could not write {path}: {_WRITE_ERRNOS[error.errno]}") from error
    except Exception as error:
        folder = Path(path).parent
        try:
            full = shutil.disk_usage(folder).free < _LOW_SPACE_BYTES
        except OSError:
            full = False
        if not full:
            raise
        raise WriteError(f"Could not write {path}: {_WRITE_ERRNOS[errno.ENOSPC]}") from error


def partial_path(path: Path) -> Path:
    """Where `path` is written before its rename: hidden (no audio or `.pt` listing picks it up), in the same folder
    (a rename across file systems would copy)."""
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """`write(partial)` a side file, then rename it to `path`: `path` exists only complete, its old content (if any)
    stays until then, and no side file is left behind, even when `write` fails."""
    path = Path(path)
    partial = partial_path(path)
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            write(partial)
            os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


@contextmanager
def staging_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """
    A hidden temporary folder in `parent`, removed at the end, and locked while in use: the staging folders of runs
    that died (SIGKILL, power loss) are unlocked, and the next run with the same `prefix` removes them first.
    """
    remove_unlocked_folders(parent, prefix)
    with locked_temporary_folder(parent, prefix) as staging:
        yield staging


@contextmanager
def new_folder(destination: Path) -> Iterator[Path]:
    """
    Yield a staging folder to fill; when the block ends without error it becomes `destination` (which must not exist,
    or be an empty folder), with the modes a plain mkdir and open would have given. On error nothing is left (after a
    SIGKILL, the next run removes what was left).
    """
    check_new_folder(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with staging_folder(destination.parent, f".{destination.name}.staging-") as staging:
        yield Path(staging)
        _permissions_from_umask(Path(staging))
        if destination.exists():
            destination.rmdir()
        shutil.move(staging, destination)


@contextmanager
def replace_in_folder(folder: Path, last: str) -> Iterator[Path]:
    """
    Yield a staging folder to fill; when the block ends without error, each of its files replaces (or joins) the
    file of the same name in `folder`, the one named `last` after all others, and the folder's other files stay. Until
    `last` is replaced, the folder's `last` still describes its old state: write there what says which other files
    belong to it (a model's config.json). On error, `folder` is untouched and the staging folder is removed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with staging_folder(folder.parent, f".{folder.name}.replacing-") as staging:
        yield Path(staging)
        default_mode = 0o666 & ~_umask()
        for path in sorted(Path(staging).iterdir(), key=lambda path: path.name == last):
            target = folder / path.name
            # The replaced file's mode (some writers, safetensors' among them, create files 0600), else the umask's
            path.chmod(target.stat().st_mode & 0o777 if target.exists() else default_mode)
            os.replace(path, target)


def check_new_folder(destination: Path) -> None:
    """Before a long job: `new_folder(destination)` will not be refused (absent or empty, in a writable place)."""
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise ValueError(f"{destination} exists and is not an empty folder; choose a new one.")
    for folder in (destination, destination.parent):  # the staging folder goes beside `destination`
        check_writable(folder)


def check_writable(path: Path) -> None:
    """Before a long job: a one-line error if `path` (a folder, or its nearest existing parent) cannot be written."""
    existing = next(folder for folder in (path, *path.absolute().parents) if folder.exists())
    if not existing.is_dir():
        where = "it" if existing == path else str(existing)
        raise WriteError(f"Cannot write into {path}: {where} is a file, not a folder (checked before any work)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"Could not write into {existing}: permission denied (checked before any work)")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _permissions_from_umask(folder: Path) -> None:
    """The modes a plain mkdir and open would give, where the private temporary folder and files gave 0700/0600."""
    umask = _umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
