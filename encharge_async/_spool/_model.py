"""The spool's value types and exceptions (no I/O here)."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .._exceptions import EnchargeError

__all__ = [
    "AppendResult",
    "SpoolClosedError",
    "SpoolCorruptError",
    "SpoolError",
    "SpoolLimits",
    "SpoolLockedError",
    "SpoolStats",
    "SpooledEvent",
]


class _EventLike(Protocol):
    """What `SpooledEvent.from_event` reads (`encharge_async.Event` has it)."""

    @property
    def message_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def body(self) -> bytes: ...
    @property
    def ordering_keys(self) -> tuple[str, ...]: ...
    @property
    def attempts(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    """One event as the spool stores it: nothing but its id, name, JSON body, keys and times.

    `created_at` is wall-clock seconds (`time.time()`), used by `max_age`. `seq` is the
    event's position in the spool (insertion order, never reused): set by `Spool.load` and
    `Spool.expire`, ignored by `Spool.append`, and left out of equality.
    """

    message_id: str
    name: str
    body: bytes
    keys: tuple[str, ...]
    created_at: float
    attempts: int = 0
    seq: int = field(default=0, compare=False)

    @property
    def size(self) -> int:
        """Bytes of the body: what counts against `SpoolLimits.max_bytes`."""
        return len(self.body)

    @classmethod
    def from_event(cls, event: _EventLike, *, created_at: float | None = None) -> SpooledEvent:
        """The spooled form of a client `Event` (`created_at` defaults to `time.time()`)."""
        return cls(
            event.message_id,
            event.name,
            event.body,
            event.ordering_keys,
            time.time() if created_at is None else created_at,
            event.attempts,
        )


def check_event(event: object) -> SpooledEvent:
    """Return `event` if it is a well-formed `SpooledEvent`; raise TypeError/ValueError if not."""
    if not isinstance(event, SpooledEvent):
        raise TypeError(f"expected a SpooledEvent, got {type(event).__name__}")
    if not isinstance(event.message_id, str) or not event.message_id:
        raise ValueError(f"message_id must be a non-empty string, got {event.message_id!r}")
    if not isinstance(event.name, str):
        raise TypeError(f"name must be a string, got {type(event.name).__name__}")
    if not isinstance(event.body, bytes):
        raise TypeError(f"body must be bytes, got {type(event.body).__name__}")
    if not isinstance(event.keys, tuple) or not all(isinstance(k, str) for k in event.keys):
        raise TypeError(f"keys must be a tuple of strings, got {event.keys!r}")
    if (
        isinstance(event.created_at, bool)
        or not isinstance(event.created_at, (int, float))
        or not math.isfinite(event.created_at)
    ):
        raise ValueError(f"created_at must be finite wall-clock seconds, got {event.created_at!r}")
    if isinstance(event.attempts, bool) or not isinstance(event.attempts, int):
        raise TypeError(f"attempts must be an int, got {event.attempts!r}")
    return event


@dataclass(frozen=True, slots=True)
class SpoolLimits:
    """Bounds of a spool.

    `max_bytes`: the sum of the stored bodies (the whole spool, not one event); an `append`
    that would pass it refuses the events that do not fit. `max_age`: seconds after
    `created_at` at which `Spool.expire` removes an event.
    """

    max_bytes: int = 256 * 1024 * 1024
    max_age: float = 7 * 24 * 3600

    def __post_init__(self) -> None:
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int):
            raise TypeError(f"max_bytes must be an int, got {self.max_bytes!r}")
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {self.max_bytes}")
        if (
            isinstance(self.max_age, bool)
            or not isinstance(self.max_age, (int, float))
            or not (0 < self.max_age < math.inf)
        ):
            raise ValueError(f"max_age must be finite seconds > 0, got {self.max_age!r}")


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What `Spool.append` did with a batch.

    `stored`: how many events were written (durable now). `duplicates`: message ids already
    in the spool (or twice in the batch), left as they were. `refused`: events not written
    because their body did not fit under `max_bytes`; they are not durable, and the caller
    decides whether to keep them in memory or to drop and report them. Nothing is ever
    evicted to make room: a stored event leaves only through `ack` or `expire`.
    """

    stored: int
    duplicates: tuple[str, ...] = ()
    refused: tuple[SpooledEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """A snapshot of a spool.

    `count` and `bytes` (sum of bodies) of the stored events, `oldest_created_at` (None when
    empty), `file_bytes` (the database and its WAL on disk), and counters since the spool
    was opened: events `refused` for lack of room, `expired`, and `duplicates` ignored.
    """

    count: int
    bytes: int
    oldest_created_at: float | None
    file_bytes: int
    refused: int
    expired: int
    duplicates: int


class SpoolError(EnchargeError, RuntimeError):
    """The spool failed: an I/O error, a full disk, or use after a fork. It stays usable."""


class SpoolLockedError(SpoolError):
    """Another process (or another `Spool` in this process) holds the spool file.

    The file is recognised by its device and inode, so a hard link or another spelling of
    its path is refused too (`same_file`: that is how this one was found).
    Attributes: `path`, the spool file; `holder_pid`, the pid recorded by the holder, or None.
    """

    def __init__(
        self,
        path: Path,
        holder_pid: int | None,
        *,
        pattern: str | None = None,
        same_file: bool = False,
    ) -> None:
        self.path = path
        self.holder_pid = holder_pid
        if holder_pid == os.getpid():
            holder = "another Spool in this process"
        elif holder_pid is not None:
            holder = f"process {holder_pid}"
        else:
            holder = "another process"
        if pattern is not None:
            what = f"every spool file matching {pattern!r} (up to {path}) is locked"
        elif same_file:
            what = (
                f"spool {str(path)!r} is the same file (device and inode) as one {holder} "
                "holds under another path (a hard link, or another spelling of the path)"
            )
        else:
            what = f"spool {str(path)!r} is locked by {holder} (its lock file is {path}.lock)"
        super().__init__(
            f"{what}. Each process needs its own spool file: put '{{slot}}' in the path "
            "(the first free slot number: files are reused after a restart) or '{pid}' "
            "(the process id), e.g. '/var/lib/app/encharge-{slot}.spool'"
        )


class SpoolClosedError(SpoolError):
    """The spool is closed (or closing)."""


class SpoolCorruptError(SpoolError):
    """The spool file turned out unreadable while in use.

    It was moved aside to `moved_to` (kept, never deleted) and an empty spool replaced it;
    the call that raised did nothing. Events stored before are in the moved file.
    """

    def __init__(self, message: str, moved_to: Path) -> None:
        super().__init__(message)
        self.moved_to = moved_to
