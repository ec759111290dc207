"""The files the command line writes beside an import: private, and never via a symlink.

The checkpoint and the dead-letter file hold people's data (emails, event properties), so
they are created readable by their owner only (0600). They are opened with O_NOFOLLOW: in a
shared directory someone could plant a symlink named like the checkpoint and have the
import write into (or truncate) a file of their choosing.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import IO

from .._exceptions import ConfigurationError
from ._text import path_text

__all__ = ["PRIVATE_MODE", "open_private"]

PRIVATE_MODE = 0o600
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def open_private(path: Path, mode: str) -> IO[str]:
    """Open `path` as text: "r" to read, "a" to append, "w" to start afresh (0600, no symlink)."""
    flags = _NOFOLLOW | _CLOEXEC
    if mode == "r":
        flags |= os.O_RDONLY
    elif mode == "a":
        flags |= os.O_WRONLY | os.O_CREAT | os.O_APPEND
    elif mode == "w":
        flags |= os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    else:  # pragma: no cover - a programming error
        raise ValueError(mode)
    if not _NOFOLLOW and path.is_symlink():  # pragma: no cover - platforms without O_NOFOLLOW
        raise _symlink_error(path)
    try:
        fd = os.open(path, flags, PRIVATE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _symlink_error(path) from None
        raise ConfigurationError(f"{path_text(path)}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(f"{path_text(path)}: not a regular file")
        if mode != "r" and stat.S_IMODE(info.st_mode) & 0o077:
            # A file left by an older version (or another umask): tighten it.
            os.fchmod(fd, PRIVATE_MODE)
        return os.fdopen(fd, mode, encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def _symlink_error(path: Path) -> ConfigurationError:
    return ConfigurationError(
        f"{path_text(path)} is a symbolic link; refusing to follow it "
        "(remove it, or choose another path)"
    )
