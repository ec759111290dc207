"""The spool's queries: append, acknowledge, load, expire, count. Everything here runs in
the spool's own thread; the file, its connection and their safety are `Database`'s
(`_database.py`)."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final, TypeVar

from ._database import Database, UnusableError
from ._model import (
    AppendResult,
    SpoolCorruptError,
    SpooledEvent,
    SpoolLimits,
    SpoolStats,
)

__all__ = ["Store"]

_T = TypeVar("_T")

# Ids per `IN (...)`: old SQLite builds allow 999 variables per statement.
_CHUNK: Final = 500
# Free pages past this many (8 MiB at 4 KiB pages) go back to the file system after a delete.
_SHRINK_FREE_PAGES = 2048

# Text comes back as bytes and is decoded here, so that a damaged row is recognised as such.
_COLUMNS: Final = (
    "seq, CAST(message_id AS BLOB), CAST(name AS BLOB), body, CAST(keys AS BLOB), created_at,"
    " attempts"
)
_INSERT: Final = (
    "INSERT OR IGNORE INTO events (message_id, name, body, keys, created_at, attempts)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)

_INSERT_AT: Final = (
    "INSERT OR IGNORE INTO events (seq, message_id, name, body, keys, created_at, attempts)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)

_Row = tuple[int, bytes, bytes, bytes, bytes, float, int]


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _decode_keys(text: bytes) -> tuple[str, ...]:
    keys = json.loads(text)
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise TypeError(f"keys are not a list of strings: {keys!r}")
    return tuple(keys)


def _to_events(rows: list[_Row]) -> list[SpooledEvent]:
    """Rows as events; UnusableError when a row is garbage (a damaged page, a foreign writer)."""
    events = []
    known_keys: dict[bytes, tuple[str, ...]] = {}  # one person's events share their keys
    for seq, message_id, name, body, keys, created_at, attempts in rows:
        try:
            decoded = known_keys.get(keys)
            if decoded is None:
                decoded = known_keys[keys] = _decode_keys(keys)
            if type(body) is not bytes or type(created_at) is not float:
                raise TypeError(f"body {type(body).__name__}, created_at {created_at!r}")
            if type(attempts) is not int:
                raise TypeError(f"attempts {attempts!r}")
            events.append(
                SpooledEvent(
                    message_id.decode(), name.decode(), body, decoded, created_at, attempts, seq
                )
            )
        except (AttributeError, TypeError, ValueError) as exc:  # ValueError: bad UTF-8 or JSON
            raise UnusableError(f"row {seq!r} is unreadable: {exc!r}") from exc
    return events


class Store:
    """The events of one spool file, and their counters. Not thread-safe: one thread uses it."""

    def __init__(self, database: Database, limits: SpoolLimits, clock: Callable[[], float]) -> None:
        self._db = database
        self.path: Path = database.path
        self.limits = limits
        self.count: int = database.counted[0]
        self.bytes: int = database.counted[1]
        self.refused = 0
        self.expired = 0
        self.duplicates = 0
        self._clock = clock

    @classmethod
    def open(
        cls,
        template: str,
        *,
        limits: SpoolLimits,
        synchronous: str,
        integrity_check: bool,
        max_slots: int,
        clock: Callable[[], float],
    ) -> Store:
        """Lock and open the spool, setting an unreadable file aside for a fresh one.

        Raises SpoolLockedError, or SpoolError when the file cannot be opened or created.
        """
        database = Database.open(
            template, synchronous=synchronous, integrity_check=integrity_check, max_slots=max_slots
        )
        return cls(database, limits, clock)

    @property
    def moved_aside(self) -> list[Path]:
        """Unreadable files set aside for an empty spool."""
        return self._db.moved_aside

    def _run(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return self._db.run(op)
        except SpoolCorruptError:
            self.count, self.bytes = self._db.counted  # the empty spool that replaced it
            raise

    @staticmethod
    def _maybe_shrink(conn: sqlite3.Connection) -> None:
        """After a delete: give the free pages back to the file system when there are many."""
        if conn.execute("PRAGMA freelist_count").fetchone()[0] >= _SHRINK_FREE_PAGES:
            # Each step of this pragma frees one page, and execute() steps once: a script
            # runs it to the end (in a transaction of its own).
            conn.executescript("PRAGMA incremental_vacuum;")

    # -- operations ------------------------------------------------------------------------

    def append(self, events: Sequence[SpooledEvent], *, front: bool = False) -> AppendResult:
        """Store `events` in one transaction; see `AppendResult` and `Spool.append`."""

        def op(conn: sqlite3.Connection) -> AppendResult:
            self._db.set_sync(conn)
            room = self.limits.max_bytes - self.bytes
            stored = stored_bytes = 0
            duplicates: list[str] = []
            refused: list[SpooledEvent] = []
            conn.execute("BEGIN IMMEDIATE")
            # In front: explicit seqs below the smallest one stored (seqs may go negative).
            lowest = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0] if front else None
            next_front = (1 if lowest is None else lowest) - len(events)
            for event in events:
                size = len(event.body)
                if front:
                    # Put in front = moved there, if it was stored already (atomic here).
                    old = conn.execute(
                        "SELECT length(body) FROM events WHERE message_id = ?", (event.message_id,)
                    ).fetchone()
                    if old is not None:
                        conn.execute("DELETE FROM events WHERE message_id = ?", (event.message_id,))
                        stored -= 1
                        stored_bytes -= old[0]
                if size <= room - stored_bytes:
                    keys = json.dumps(event.keys, separators=(",", ":"), ensure_ascii=False)
                    row = (event.message_id, event.name, event.body, keys)
                    if front:
                        inserted = conn.execute(
                            _INSERT_AT, (next_front, *row, event.created_at, event.attempts)
                        ).rowcount
                        next_front += 1
                    else:
                        inserted = conn.execute(
                            _INSERT, (*row, event.created_at, event.attempts)
                        ).rowcount
                    if inserted:
                        stored += 1
                        stored_bytes += size
                        continue
                elif (
                    conn.execute(
                        "SELECT 1 FROM events WHERE message_id = ?", (event.message_id,)
                    ).fetchone()
                    is None
                ):
                    refused.append(event)
                    continue
                duplicates.append(event.message_id)
            conn.execute("COMMIT")
            self.count += stored
            self.bytes += stored_bytes
            self.refused += len(refused)
            self.duplicates += len(duplicates)
            return AppendResult(stored, tuple(duplicates), tuple(refused))

        return self._run(op)

    def ack(self, message_ids: Sequence[str]) -> None:
        """Delete these events (ids not in the spool are ignored)."""
        unique = list(dict.fromkeys(message_ids))

        def op(conn: sqlite3.Connection) -> None:
            # A lost ack (power cut) only means a repeat delivery, which the Idempotency-Key
            # covers, so deletes skip the fsync; the next append's fsync covers them anyway.
            self._db.set_sync(conn, "NORMAL")
            count = size = 0
            conn.execute("BEGIN IMMEDIATE")
            for chunk in _chunks(unique):
                where = f"WHERE message_id IN ({','.join('?' * len(chunk))})"
                n, b = conn.execute(
                    f"SELECT count(*), coalesce(sum(length(body)), 0) FROM events {where}", chunk
                ).fetchone()
                if n:
                    conn.execute(f"DELETE FROM events {where}", chunk)
                    count += n
                    size += b
            conn.execute("COMMIT")
            self.count -= count
            self.bytes -= size
            if count:
                self._maybe_shrink(conn)

        self._run(op)

    def load(self, limit: int, after: int) -> list[SpooledEvent]:
        """Up to `limit` events with seq > `after`, in insertion order."""

        def op(conn: sqlite3.Connection) -> list[SpooledEvent]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
            return _to_events(rows)

        return self._run(op)

    def expire(self, limit: int | None) -> list[SpooledEvent]:
        """Delete and return (oldest first) up to `limit` events older than `max_age`."""
        cutoff = self._clock() - self.limits.max_age

        def op(conn: sqlite3.Connection) -> list[SpooledEvent]:
            self._db.set_sync(conn, "NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE created_at < ? ORDER BY seq LIMIT ?",
                (cutoff, -1 if limit is None else limit),
            ).fetchall()
            events = _to_events(rows)
            if events:
                conn.execute(
                    "DELETE FROM events WHERE created_at < ? AND seq <= ?", (cutoff, events[-1].seq)
                )
            conn.execute("COMMIT")
            self.count -= len(events)
            self.bytes -= sum(len(event.body) for event in events)
            self.expired += len(events)
            if events:
                self._maybe_shrink(conn)
            return events

        return self._run(op)

    def stats(self) -> SpoolStats:
        """Counts, bytes, the oldest `created_at`, the size on disk and the drop counters."""

        def op(conn: sqlite3.Connection) -> SpoolStats:
            oldest = conn.execute("SELECT min(created_at) FROM events").fetchone()[0]
            file_bytes = 0
            for suffix in ("", "-wal"):
                with contextlib.suppress(FileNotFoundError):
                    file_bytes += os.stat(f"{self.path}{suffix}").st_size
            return SpoolStats(
                self.count,
                self.bytes,
                oldest,
                file_bytes,
                self.refused,
                self.expired,
                self.duplicates,
            )

        return self._run(op)

    def close(self) -> None:
        """Close the connection (SQLite checkpoints and removes the WAL), release the lock."""
        self._db.close()
