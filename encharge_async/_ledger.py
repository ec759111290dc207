"""The ledger: where every event's outcome lands.

Delivered, failed for good, or dropped (with a reason): each outcome is counted here, once,
and from here reaches the caller waiting on it (`wait=True`), the `flush()` calls waiting for
it, the spool (which forgets the event), the hooks and the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio

from ._constants import DROP_WARNING_INTERVAL
from ._events import DELIVERED, DROPPED, FAILED, FROM_EARLIER, Entry, Event, Waiter
from ._exceptions import DeliveryError
from ._stats import ErrorInfo, FlushResult
from ._types import DropReason, OnDelivered, OnDrop, OnError

__all__ = ["FlushWaiter", "Ledger"]

logger = logging.getLogger("encharge_async")


class FlushWaiter:
    """Counts down the events a flush() waits for: those accepted up to `target`."""

    __slots__ = ("delivered", "done", "dropped", "earlier", "failed", "remaining", "target")

    def __init__(self, target: int, remaining: int, earlier: int = 0) -> None:
        self.target = target
        # Also waited for: this many events an earlier process left in the spool, which are
        # accepted (numbered) only as they are read back.
        self.earlier = earlier
        self.remaining = remaining + earlier
        self.delivered = self.failed = self.dropped = 0
        self.done = anyio.Event()

    def record(self, state: int) -> None:
        if state == DELIVERED:
            self.delivered += 1
        elif state == FAILED:
            self.failed += 1
        else:
            self.dropped += 1
        self.remaining -= 1
        if self.remaining <= 0:
            self.done.set()

    def result(self) -> FlushResult:
        return FlushResult(self.delivered, self.failed, self.dropped, max(self.remaining, 0))


class _Throttle:
    """One log line per interval for a kind of outcome, counting what it stands for.

    The first occurrence is logged at once; later ones within the interval are counted and
    logged with the next line (or by `flush` at close), so nothing goes unreported and a
    storm of failures is a few lines, not one per event.
    """

    __slots__ = ("_last", "_level", "_message", "latest", "pending")

    def __init__(self, level: int, message: str) -> None:
        self._level = level
        self._message = message  # formatted with (count, latest)
        self._last = -DROP_WARNING_INTERVAL
        self.pending = 0
        self.latest = ""

    def note(self, latest: str) -> None:
        self.pending += 1
        self.latest = latest
        now = time.monotonic()
        if now - self._last >= DROP_WARNING_INTERVAL:
            self._last = now
            self.flush()

    def flush(self) -> None:
        if self.pending:
            logger.log(self._level, self._message, self.pending, self.latest)
            self.pending = 0


class Ledger:
    """Outcome counters, flush waiters, hooks, log lines and health of one client."""

    def __init__(
        self,
        *,
        on_delivered: OnDelivered | None,
        on_error: OnError | None,
        on_drop: OnDrop | None,
    ) -> None:
        self._on_delivered = on_delivered
        self._on_error = on_error
        self._on_drop = on_drop
        self.delivered = self.failed = self.dropped = self.retried = 0
        self.filtered = 0  # by before_send: never queued
        self._flush_waiters: list[FlushWaiter] = []
        # Called with (event, seconds from its first attempt) as each event is delivered.
        self.delivery_listeners: list[Callable[[Event, float], None]] = []
        # Told of every event that went through the spool and ended (the spool forgets it).
        self.spool_listener: Callable[[Entry, int], None] | None = None
        self._drops = _Throttle(
            logging.WARNING,
            "dropped %d event(s) (latest reason: %s); see stats.dropped and on_drop",
        )
        self._failures = _Throttle(
            logging.WARNING,
            "%d event(s) failed for good and were not delivered (latest: %s); see on_error",
        )
        self._auth_reported = False
        # The health view: the last failed attempt (retried or not), and since when every
        # attempt has failed (None while the endpoint answers).
        self.last_error: ErrorInfo | None = None
        self.failing_since: float | None = None

    def add_delivery_listener(self, listener: Callable[[Event, float], None]) -> Callable[[], None]:
        """Call `listener(event, seconds since its first attempt)` as each event is
        delivered; returns the function that stops it."""
        listeners = self.delivery_listeners
        listeners.append(listener)

        def remove() -> None:
            if listener in listeners:
                listeners.remove(listener)

        return remove

    # -- outcomes -----------------------------------------------------------------------------

    def record_delivered(self, entry: Entry, now: float) -> None:
        self.failing_since = None  # the endpoint answers
        self._finish(entry, DELIVERED)
        if self.delivery_listeners:
            elapsed = now - entry.first_attempt_at
            for listener in self.delivery_listeners:
                self._call_hook("delivery listener", listener, entry, elapsed)
        if self._on_delivered is not None:
            self._call_hook("on_delivered", self._on_delivered, entry)

    def record_failed(self, entry: Entry, error: DeliveryError) -> None:
        if entry.waiter is not None:
            entry.waiter.error = error
        self._finish(entry, FAILED)
        logger.debug(
            "%s",
            error,
            extra={
                "message_id": entry.message_id,
                "status": error.status,
                "attempt": entry.attempts,
            },
        )
        if error.status in (401, 403) and not self._auth_reported:
            # Once per client: every event will fail the same way until the key is fixed.
            self._auth_reported = True
            logger.error(
                "Encharge refused the write key (HTTP %d): events are not delivered. Check "
                "that the key is the Ingest API *write* key (Encharge: Settings > Ingest API), "
                "not the REST API key, and that it belongs to this account",
                error.status,
            )
        self._failures.note(str(error)[:300])
        if self._on_error is not None:
            self._call_hook("on_error", self._on_error, error)

    def record_dropped(self, entry: Entry, reason: DropReason, *, logged: bool = False) -> None:
        """Count and report a dropped event (the queue has already let go of it).

        `logged`: the caller logs a line of its own covering this drop (shutdown does).
        """
        if entry.waiter is not None:
            entry.waiter.error = DeliveryError(
                f"dropped ({reason.value})",
                message_id=entry.message_id,
                attempts=entry.attempts,
                event=entry,
            )
        self._finish(entry, DROPPED)
        if not logged:
            self._drops.note(reason.value)
        if self._on_drop is not None:
            self._call_hook("on_drop", self._on_drop, entry, reason)

    def record_retry(self) -> None:
        self.retried += 1

    def _finish(self, entry: Entry, state: int) -> None:
        entry.state = state
        if entry.spooled and self.spool_listener is not None:
            self.spool_listener(entry, state)
        if state == DELIVERED:
            self.delivered += 1
        elif state == FAILED:
            self.failed += 1
        else:
            self.dropped += 1
        if entry.waiter is not None:
            entry.waiter.done.set()
        if self._flush_waiters:
            for waiter in self._flush_waiters:
                if entry.seq <= waiter.target:
                    waiter.record(state)
                elif entry.spooled == FROM_EARLIER and waiter.earlier > 0:
                    waiter.earlier -= 1
                    waiter.record(state)

    # -- flush --------------------------------------------------------------------------------

    async def wait_for(
        self, target: int, outstanding: int, timeout: float, *, earlier: int = 0
    ) -> FlushResult:
        """Wait until `outstanding` events accepted up to `target`, and `earlier` events an
        earlier process left in the spool, have ended; or `timeout`."""
        if outstanding + earlier <= 0:
            return FlushResult()
        waiter = FlushWaiter(target, outstanding, earlier)
        self._flush_waiters.append(waiter)
        try:
            with anyio.move_on_after(timeout):
                await waiter.done.wait()
        finally:
            self._flush_waiters.remove(waiter)
        return waiter.result()

    # -- reporting ----------------------------------------------------------------------------

    def record_unreadable(
        self, seq: int = 0, waiter: Waiter | None = None, message_id: str = ""
    ) -> None:
        """A spooled event could not be read back (a damaged or edited row): counted as
        failed, never sent. `seq`, `waiter`, `message_id`: those of this process's event;
        none for one an earlier process left (flush() calls waiting for it count it).
        There is no event to hand `on_error`; the spooler logs it."""
        self.failed += 1
        if waiter is not None:
            waiter.error = DeliveryError("unreadable in the spool", message_id=message_id)
            waiter.done.set()
        for flush in self._flush_waiters:
            if seq and seq <= flush.target:
                flush.record(FAILED)
            elif not seq and flush.earlier > 0:
                flush.earlier -= 1
                flush.record(FAILED)

    def report_pending(self) -> None:
        """Log what the throttled lines have counted and not said yet (at close)."""
        self._failures.flush()
        self._drops.flush()

    # -- health -------------------------------------------------------------------------------

    def attempt_failed(self, status: int | None, reason: str) -> None:
        now = time.time()
        self.last_error = ErrorInfo(status=status, reason=reason[:200], at=now)
        if self.failing_since is None:
            self.failing_since = now

    def _call_hook(self, name: str, hook: Any, *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            logger.exception("%s hook raised; the event is unaffected", name)
