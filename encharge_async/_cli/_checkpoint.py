"""The import checkpoint: which lines of a file are done, so a rerun resumes.

A JSON header line identifies the file (size and a hash of its start), then one line per
finished record, appended and flushed as each finishes: `N` when line N was delivered,
`!N` when it was dead-lettered for a reason of its own (it could not be read, or Encharge
refused its content: 400, 409, 413, 422). Nothing else is recorded: an event that failed
because the key was refused, the endpoint was wrong or Encharge could not be reached stays
undone, and the next run sends it. A crash can lose at most the lines in flight at that moment;
they are sent again on resume with the same message id, so Encharge sees the same
Idempotency-Key.

The file is created 0600 and never opened through a symlink (see `_files`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO

from ._files import open_private
from ._text import path_text

__all__ = ["Checkpoint", "CheckpointMismatch", "fingerprint"]

_FINGERPRINT_BYTES = 1024 * 1024


class CheckpointMismatch(ValueError):
    """The checkpoint was written for another file (or the file changed)."""


def fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(_FINGERPRINT_BYTES))
    digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()[:20]


class Checkpoint:
    def __init__(self, path: Path, source: Path, *, restart: bool = False) -> None:
        self.path = path
        self.fingerprint = fingerprint(source)
        self.delivered: set[int] = set()
        self.dead: set[int] = set()
        self._handle: IO[str] | None = None
        # Fresh: no earlier run to resume (the dead-letter file starts afresh too).
        self.fresh = restart or not (path.exists() or path.is_symlink())
        if self.fresh:
            self._start(source)
        else:
            self._load(source)

    @property
    def done(self) -> set[int]:
        return self.delivered | self.dead

    def _start(self, source: Path) -> None:
        header = {"file": str(source), "fingerprint": self.fingerprint}
        self._handle = open_private(self.path, "w")
        self._handle.write(json.dumps(header) + "\n")
        self._handle.flush()

    def _load(self, source: Path) -> None:
        with open_private(self.path, "r") as handle:
            try:
                header = json.loads(handle.readline())
            except ValueError:
                header = {}
            if not isinstance(header, dict) or header.get("fingerprint") != self.fingerprint:
                raise CheckpointMismatch(
                    f"{path_text(self.path)} belongs to another file or "
                    f"{path_text(source)} has changed since; delete the checkpoint or "
                    "pass --restart to import from the start"
                )
            for raw in handle:
                # A torn last line (a crash mid-write) is simply not counted.
                if not raw.endswith("\n"):
                    continue
                text = raw.strip()
                dead = text.startswith("!")
                number = text.removeprefix("!")
                if number.isdigit():
                    (self.dead if dead else self.delivered).add(int(number))
        self._handle = open_private(self.path, "a")

    def mark(self, line: int, *, dead: bool = False) -> None:
        if line in self.delivered or line in self.dead:
            return
        (self.dead if dead else self.delivered).add(line)
        assert self._handle is not None
        self._handle.write(f"!{line}\n" if dead else f"{line}\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None
