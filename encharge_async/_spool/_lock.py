"""One process per spool file: an exclusive, non-blocking flock on `<path>.lock`.

The lock file holds the holder's pid, so that the error can name it. flock locks belong to
an open file description: a second open in the same process conflicts too, and the kernel
releases the lock when the process dies, even by SIGKILL.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ._model import SpoolLockedError

if sys.platform != "win32":  # pragma: no branch
    import fcntl

__all__ = ["lock_spool", "owner_only"]

logger = logging.getLogger("encharge_async.spool")


def owner_only(path: str) -> None:
    """Make `path` (if it exists) readable and writable by its owner alone."""
    try:
        if os.stat(path).st_mode & 0o177:
            os.chmod(path, 0o600)
    except FileNotFoundError:
        return
    except OSError as exc:
        logger.warning("could not make %s owner-only: %s", path, exc)


def _make_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents, each owner-only (0700)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        new.mkdir(mode=0o700, exist_ok=True)


def _holder_pid(path: Path) -> int | None:
    try:
        return int(Path(f"{path}.lock").read_text().strip())
    except (OSError, ValueError):
        return None


def _try_lock(path: Path) -> int | None:
    """Hold `<path>.lock` exclusively (flock, non-blocking): its fd, or None when taken."""
    _make_dirs(path.parent)
    lock_path = f"{path}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:  # pragma: no cover - flock failing otherwise (ENOLCK)
        os.close(fd)
        raise
    owner_only(lock_path)
    try:  # for the error message of the next process that tries: informative only
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:  # pragma: no cover - a full disk
        pass
    return fd


def lock_spool(template: str, max_slots: int) -> tuple[Path, int]:
    """Expand `{pid}` and `{slot}` in `template` and lock the file: (path, lock fd).

    `{slot}` takes the first of 0 .. max_slots - 1 whose lock is free. Raises
    SpoolLockedError when the file (or every slot) is held, OSError when it cannot be made.
    """
    text = template.replace("{pid}", str(os.getpid()))
    if "{slot}" not in text:
        path = Path(text)
        fd = _try_lock(path)
        if fd is None:
            raise SpoolLockedError(path, _holder_pid(path))
        return path, fd
    for slot in range(max_slots):
        path = Path(text.replace("{slot}", str(slot)))
        fd = _try_lock(path)
        if fd is not None:
            return path, fd
    raise SpoolLockedError(path, None, pattern=text)
