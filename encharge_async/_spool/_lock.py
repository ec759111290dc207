"""One process per spool file.

Two locks, both held from `open` to `close`:

- an exclusive, non-blocking flock on `<path>.lock`, which holds the holder's pid (so that
  the error can name it) and picks the `{slot}`. flock locks belong to an open file
  description: a second open in the same process conflicts too, and the kernel releases
  the lock when the process dies, even by SIGKILL.
- a lock on the database file itself, keyed on its device and inode rather than on the
  spelling of its path, so that a hard link is no way around the first one: a registry of
  the files this process holds and, on Linux, an open-file-description (OFD) record lock on
  one byte past those SQLite locks, for the other processes. Not a classic fcntl lock:
  those belong to the process, and SQLite drops them all when it unlocks the whole file.
  Not flock on the database: on the BSDs (macOS) flock and SQLite's fcntl locks conflict.
  Elsewhere than Linux, only this process's registry applies.

Every file is opened without following a symbolic link in its last component: a link is
refused with a SpoolError naming it, never followed (it could point the spool, and the
personal data in it, at any file the process may write).
"""

from __future__ import annotations

import logging
import os
import stat
import struct
import sys
import threading
from pathlib import Path

from ._model import SpoolError, SpoolLockedError

if sys.platform != "win32":  # pragma: no branch
    import fcntl

__all__ = [
    "FileIdentity",
    "lock_file_identity",
    "lock_spool",
    "open_no_follow",
    "owner_only",
    "refuse_symlink",
    "unlock_file_identity",
]

logger = logging.getLogger("encharge_async.spool")

#: (st_dev, st_ino): what makes two paths the same file.
FileIdentity = tuple[int, int]

# SQLite's lock bytes start at 1 GiB and span 512 bytes (PENDING, RESERVED, SHARED): this
# byte is well past them, so the record lock never meets SQLite's own.
_IDENTITY_LOCK_OFFSET = 0x40000000 + 4096
# struct flock (64-bit offsets, as Python is built): "0q" pads the end to its alignment.
_FLOCK = "@hhqqi0q"
_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None) if sys.platform != "win32" else None
_held: set[FileIdentity] = set()
_held_guard = threading.Lock()


def _symlink_error(path: str | Path) -> SpoolError:
    return SpoolError(
        f"spool file {str(path)!r} is a symbolic link: refusing to follow it "
        "(give the spool the real path)"
    )


def refuse_symlink(path: str | Path) -> None:
    """Raise SpoolError if `path` is a symbolic link (dangling or not)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise _symlink_error(path)


def open_no_follow(path: str | Path, flags: int) -> int:
    """`os.open(path, flags)` (files created 0600) that refuses a symbolic link.

    Raises SpoolError for a link (the errno for one differs: ELOOP, EMLINK on FreeBSD),
    OSError otherwise.
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        if os.path.islink(path):
            raise _symlink_error(path) from None
        raise


def _narrow(fd: int, path: str | Path) -> None:
    try:
        if os.fstat(fd).st_mode & 0o177:
            os.fchmod(fd, 0o600)
    except OSError as exc:
        logger.warning("could not make %s owner-only: %s", path, exc)


def owner_only(path: str | Path, fd: int | None = None) -> None:
    """Make the regular file `path` (if it exists) readable and writable by its owner alone.

    With `fd` (open on `path`) that file is changed. Else `path` is looked at with lstat (a
    link raises SpoolError) and changed by name: opening it would not do, since closing a
    descriptor drops the fcntl locks SQLite holds on that file (the SHM's, say).
    Something other than a regular file is left alone.
    """
    if fd is not None:
        _narrow(fd, path)
        return
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise _symlink_error(path)
    if stat.S_ISREG(info.st_mode) and info.st_mode & 0o177:
        try:
            os.chmod(path, 0o600)
        except OSError as exc:
            logger.warning("could not make %s owner-only: %s", path, exc)


def lock_file_identity(fd: int, path: Path) -> FileIdentity:
    """Lock the file open on `fd` by its identity, for this process: its (device, inode).

    Raises SpoolLockedError when another `Spool` here or another process holds that file,
    under whatever path.
    """
    info = os.fstat(fd)
    identity = (info.st_dev, info.st_ino)
    with _held_guard:
        if identity in _held:
            raise SpoolLockedError(path, os.getpid(), same_file=True)
        if _OFD_SETLK is not None:
            # l_pid must be 0 for an OFD lock.
            request = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, _IDENTITY_LOCK_OFFSET, 1, 0)
            try:
                fcntl.fcntl(fd, _OFD_SETLK, request)
            except (BlockingIOError, PermissionError):  # EAGAIN, or EACCES on some systems
                raise SpoolLockedError(path, None, same_file=True) from None
            except OSError as exc:  # a file system without record locks: the lock file stays
                logger.warning("could not lock %s by its identity: %s", path, exc)
        _held.add(identity)
    return identity


def unlock_file_identity(identity: FileIdentity) -> None:
    """Forget `identity`; closing its fd releases the record lock."""
    with _held_guard:
        _held.discard(identity)


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
        fd = open_no_follow(f"{path}.lock", os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, SpoolError):
        return None
    try:
        return int(os.read(fd, 64).decode().strip())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _try_lock(path: Path) -> int | None:
    """Hold `<path>.lock` exclusively (flock, non-blocking): its fd, or None when taken."""
    _make_dirs(path.parent)
    lock_path = f"{path}.lock"
    fd = open_no_follow(lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:  # pragma: no cover - flock failing otherwise (ENOLCK)
        os.close(fd)
        raise
    owner_only(lock_path, fd)
    try:  # for the error message of the next process that tries: informative only
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:  # pragma: no cover - a full disk
        pass
    return fd


def lock_spool(template: str, max_slots: int) -> tuple[Path, int]:
    """Expand `{pid}` and `{slot}` in `template` and lock the file: (path, lock fd).

    `{slot}` takes the first of 0 .. max_slots - 1 whose lock is free. Raises
    SpoolLockedError when the file (or every slot) is held, SpoolError when a lock file is
    a symbolic link, OSError when it cannot be made.
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
