"""The import checkpoint: which lines of a file are done, so a rerun resumes.

A JSON header line identifies the file (size and a hash of its start), then one line
number per finished line (delivered, failed for good, or unreadable), appended and flushed
as each finishes. A crash can lose at most the lines in flight at that moment; they are
sent again on resume with the same message id, so Encharge sees the same Idempotency-Key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO

__all__ = ["Checkpoint", "CheckpointMismatch", "fingerprint"]

_FINGERPRINT_BYTES = 1024 * 1024


class CheckpointMismatch(Exception):
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
        self.done: set[int] = set()
        self._handle: IO[str] | None = None
        if restart or not path.exists():
            self._start(source)
        else:
            self._load(source)

    def _start(self, source: Path) -> None:
        header = {"file": str(source), "fingerprint": self.fingerprint}
        self._handle = self.path.open("w", encoding="utf-8")
        self._handle.write(json.dumps(header) + "\n")
        self._handle.flush()

    def _load(self, source: Path) -> None:
        with self.path.open(encoding="utf-8") as handle:
            try:
                header = json.loads(handle.readline())
            except ValueError:
                header = {}
            if not isinstance(header, dict) or header.get("fingerprint") != self.fingerprint:
                raise CheckpointMismatch(
                    f"{self.path} belongs to another file or {source} has changed since; "
                    "delete the checkpoint or pass --restart to import from the start"
                )
            for raw in handle:
                # A torn last line (a crash mid-write) is simply not counted.
                if raw.endswith("\n") and raw.strip().isdigit():
                    self.done.add(int(raw))
        self._handle = self.path.open("a", encoding="utf-8")

    def mark(self, line: int) -> None:
        if line in self.done:
            return
        self.done.add(line)
        assert self._handle is not None
        self._handle.write(f"{line}\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None
