"""`Spool`: the async face of the store. Every SQLite call runs in the spool's own thread."""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar

import anyio
import anyio.lowlevel

from ._model import (
    AppendResult,
    SpoolClosedError,
    SpooledEvent,
    SpoolError,
    SpoolLimits,
    SpoolStats,
    check_event,
)
from ._store import Store
from ._thread import SpoolThread

__all__ = ["Spool"]

logger = logging.getLogger("encharge_async.spool")

_T = TypeVar("_T")
_thread_numbers = itertools.count(1)


def _close_abandoned(thread: SpoolThread, store: Store) -> None:
    warnings.warn(
        f"spool {str(store.path)!r} was never closed: call `await spool.close()`",
        ResourceWarning,
        stacklevel=1,
    )
    thread.submit(store.close)
    thread.stop()


class Spool:
    """A durable, embedded, write-ahead store of accepted events (SQLite in WAL mode).

    Create it with `await Spool.open(path)`; use it from one event loop at a time (asyncio
    or trio). Calls run one at a time, in the order they are made, in the spool's thread.
    Attributes: `path` (the file, after `{pid}` / `{slot}` expansion), `limits`, and
    `moved_aside` (unreadable files set aside since it was opened).
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_finalizer",
        "_pid",
        "_store",
        "_thread",
        "limits",
        "path",
    )

    def __init__(self, store: Store, thread: SpoolThread) -> None:
        """Private: use `Spool.open`."""
        self._store = store
        self._thread = thread
        self._closed = False
        self._pid = os.getpid()
        self.path: Path = store.path
        self.limits: SpoolLimits = store.limits
        # Forgotten without close(): warn, and close it in the background. Not at exit: the
        # OS releases the lock, and the next open recovers the WAL.
        self._finalizer = weakref.finalize(self, _close_abandoned, thread, store)
        self._finalizer.atexit = False

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        limits: SpoolLimits = SpoolLimits(),  # noqa: B008 - frozen, so sharing it is safe
        synchronous: Literal["full", "normal"] = "full",
        integrity_check: bool = True,
        max_slots: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> Spool:
        """Open (or create) the spool at `path`, locked for this process until `close()`.

        `path` may hold `{pid}` (replaced by the process id) and `{slot}` (the first of
        0 .. `max_slots` - 1 whose file no other process holds: after a restart, workers pick
        up their predecessors' files). Missing directories are created (0700), the files are
        owner-only (0600). `synchronous="full"` (the default) makes `append` survive a power
        cut; `"normal"` only a crash of the process, for a fraction of the cost.
        `integrity_check` runs SQLite's `quick_check` on open (it reads the whole file).
        `clock` gives wall-clock seconds for `expire`.

        A file that is not a readable spool of this version (not SQLite, truncated, another
        schema, a newer schema version) is logged as an error, renamed
        `<path>.corrupt-<UTC timestamp>` (with its -wal and -shm) and replaced by an empty spool.

        Raises:
            SpoolLockedError: another process, or another `Spool` here, holds the file.
            SpoolError: the file cannot be opened or created (permissions, disk, ...).
            TypeError, ValueError: a bad argument.
        """
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        if not isinstance(limits, SpoolLimits):
            raise TypeError(f"limits must be a SpoolLimits, got {type(limits).__name__}")
        if isinstance(max_slots, bool) or not isinstance(max_slots, int) or max_slots < 1:
            raise ValueError(f"max_slots must be an int >= 1, got {max_slots!r}")
        thread = SpoolThread(f"encharge-spool-{next(_thread_numbers)}")
        try:
            store = await thread.call(
                partial(
                    Store.open,
                    os.fspath(path),
                    limits=limits,
                    synchronous=synchronous.upper(),
                    integrity_check=integrity_check,
                    max_slots=max_slots,
                    clock=clock,
                )
            )
        except BaseException:
            thread.stop()
            thread.join(1.0)  # idle after the failed call: it ends at once
            raise
        spool = cls(store, thread)
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            await spool.close()  # cancelled while opening: do not leak the file lock
            raise
        return spool

    @property
    def moved_aside(self) -> tuple[Path, ...]:
        """Unreadable spool files set aside (renamed, kept) since this spool was opened."""
        return tuple(self._store.moved_aside)

    async def _call(self, fn: Callable[[], _T]) -> _T:
        if self._closed:
            raise SpoolClosedError(f"spool {str(self.path)!r} is closed")
        if os.getpid() != self._pid:
            raise SpoolError(
                f"spool {str(self.path)!r} was opened in process {self._pid}, before a fork; "
                "open a spool (with its own file) in each process after the fork"
            )
        return await self._thread.call(fn)

    async def append(self, events: Sequence[SpooledEvent], *, front: bool = False) -> AppendResult:
        """Store `events` in one transaction, durable (committed) when this returns.

        Idempotent: an event whose `message_id` is already stored is left as it is and
        reported in `duplicates`. An event whose body does not fit in the room left under
        `limits.max_bytes` is not stored and comes back in `refused`; the others are stored.
        The events' `seq` is ignored. With `front=True` they are stored, in their order,
        before everything already there (`load` returns them first), moved there if they
        were stored already: for events older than what the spool holds.

        Raises:
            TypeError, ValueError: an element is not a well-formed `SpooledEvent` (nothing
                is stored).
            SpoolClosedError: the spool is closed.
            SpoolCorruptError: the file became unreadable; it was set aside for an empty
                spool, and nothing was stored: append again.
            SpoolError: SQLite failed (full disk, I/O error); nothing was stored.
        """
        batch = [check_event(event) for event in events]
        if not batch:
            return AppendResult(0)
        return await self._call(partial(self._store.append, batch, front=front))

    async def ack(self, message_ids: Sequence[str]) -> None:
        """Delete these events: delivered, or failed for good. Unknown ids are ignored.

        Committed without an fsync (a power cut may bring an acked event back: delivered
        again with the same Idempotency-Key); the next `append` makes it durable.

        Raises:
            TypeError: `message_ids` is a single string rather than a sequence of them.
            SpoolClosedError, SpoolCorruptError, SpoolError: as for `append`.
        """
        if isinstance(message_ids, (str, bytes)):
            raise TypeError("ack() takes a sequence of message ids, not a single string")
        ids = list(message_ids)
        if not ids:
            return
        await self._call(partial(self._store.ack, ids))

    async def load(self, *, limit: int, after: int | None = None) -> list[SpooledEvent]:
        """Up to `limit` stored events, oldest first (insertion order), each with its `seq`.

        Page through a big spool with `after=<the last event's seq>`; an empty list means
        the end. A seq is never reused, so events appended meanwhile show up on later pages.

        Raises:
            ValueError: `limit` < 1 or `after` < 0.
            SpoolClosedError, SpoolCorruptError, SpoolError: as for `append`.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int >= 1, got {limit!r}")
        if after is None:
            after = -(2**63)  # events put in front have seqs below 1
        elif isinstance(after, bool) or not isinstance(after, int):
            raise ValueError(f"after must be a seq (an int) or None, got {after!r}")
        return await self._call(partial(self._store.load, limit, after))

    async def expire(self, *, limit: int | None = None) -> list[SpooledEvent]:
        """Remove and return the events older than `limits.max_age` (by `created_at`).

        Oldest first; at most `limit` of them when given (call again until it returns
        fewer). The caller reports them as dropped: nothing else removes them.

        Raises:
            ValueError: `limit` < 1.
            SpoolClosedError, SpoolCorruptError, SpoolError: as for `append`.
        """
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ValueError(f"limit must be an int >= 1 or None, got {limit!r}")
        return await self._call(partial(self._store.expire, limit))

    async def stats(self) -> SpoolStats:
        """Count and bytes stored, the oldest `created_at`, size on disk, drop counters.

        Raises:
            SpoolClosedError, SpoolCorruptError, SpoolError: as for `append`.
        """
        return await self._call(self._store.stats)

    async def close(self, *, timeout: float = 5.0) -> None:
        """Finish the calls already made, close the file and release its lock.

        Returns within about `timeout` seconds: past it, a warning is logged and closing
        goes on in the background. Idempotent. In a child process forked after `open`, it
        only marks this object closed (the file and lock are the parent's).

        Raises:
            ValueError: `timeout` is not a finite number > 0.
        """
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not (0 < timeout < math.inf)
        ):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        if os.getpid() != self._pid:
            return
        try:
            await self._thread.call(self._store.close, timeout=timeout)
        except TimeoutError:
            logger.warning(
                "spool %s: closing took over %s s; it goes on in the background", self.path, timeout
            )
            self._thread.stop()
            return
        except Exception as exc:  # pragma: no cover - closing a sqlite3 connection or an fd
            logger.warning("spool %s: error while closing: %s", self.path, exc)
        self._thread.stop()
        self._thread.join(1.0)  # it has nothing left to do: this returns at once

    async def __aenter__(self) -> Spool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Spool {str(self.path)!r} {state}>"
