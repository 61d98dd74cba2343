"""
Advisory locks (POSIX `flock`) that keep concurrent runs of one job from writing the same outputs: the kernel releases
them when their process dies, even by SIGKILL, so that a lock never outlives its run.
"""

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive_lock(
    path: Path, *, wait: bool = True, busy_message: str = "", remove_after: bool = False
) -> Iterator[None]:
    """
    Hold an exclusive lock on `path`: a folder, or a file (created if needed). Without `wait`, a lock held elsewhere
    raises `BlockingIOError` carrying `busy_message`. `remove_after`: delete the lock file before releasing it, for
    locks only ever taken without waiting (a waiter could be left holding the deleted file's lock).
    """
    if path.is_dir():
        descriptor = os.open(path, os.O_RDONLY)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as error:
            raise BlockingIOError(busy_message or f"{path} is locked by another process") from error
        try:
            yield
        finally:
            if remove_after:  # only a SIGKILL leaves the file (unlocked: the next run takes it)
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # other shards' locks may still be there
                    path.parent.rmdir()
    finally:
        os.close(descriptor)  # closing releases the lock


@contextmanager
def exclusive_locks(*paths: Path) -> Iterator[None]:
    """`exclusive_lock` (waiting) on each of `paths`, taken in one order (of their resolved paths) whoever takes them,
    so that two processes that need the same locks cannot each hold one and wait for the other's."""
    with contextlib.ExitStack() as stack:
        for path in sorted({path.resolve() for path in paths}):
            stack.enter_context(exclusive_lock(path))
        yield


def remove_unlocked_folders(parent: Path, prefix: str) -> None:
    """Remove the folders `parent/prefix...` that no process holds locked: left by runs that died (SIGKILL, power
    loss), whose locks died with them."""
    for folder in parent.glob(f"{glob.escape(prefix)}*"):
        if folder.is_symlink():
            continue
        try:  # the descriptor of the folder itself: removed meanwhile by another run, it is skipped, not created
            descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(folder, ignore_errors=True)  # another remover may be at it too
        except BlockingIOError:  # in use by a live run
            pass
        finally:
            os.close(descriptor)


@contextmanager
def locked_temporary_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """
    A new folder `parent/prefix...`, locked while in use, then removed (with what it holds, if still there). Between
    its creation and its lock another run may see it unlocked, take it for abandoned and remove it: the lock is taken
    on the folder's descriptor and then checked to hold the folder still, else a new one is made.
    """
    while True:
        folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
        try:
            descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # waits for a remover that took the lock first
        if os.fstat(descriptor).st_nlink > 0:  # a removed folder has no link left
            break
        os.close(descriptor)
    try:
        yield folder
    finally:
        try:
            shutil.rmtree(folder, ignore_errors=True)  # gone already when the caller moved it into place
        finally:
            os.close(descriptor)  # closing releases the lock


def is_locked(path: Path) -> bool:
    """Whether another process holds a lock on `path` now."""
    try:
        descriptor = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False
