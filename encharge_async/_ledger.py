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
from ._events import DELIVERED, DROPPED, FAILED, Entry, Event
from ._exceptions import DeliveryError
from ._stats import FlushResult
from ._types import DropReason, OnDelivered, OnDrop, OnError

__all__ = ["FlushWaiter", "Ledger"]

logger = logging.getLogger("encharge_async")


class FlushWaiter:
    """Counts down the events a flush() waits for: those accepted up to `target`."""

    __slots__ = ("delivered", "done", "dropped", "failed", "remaining", "target")

    def __init__(self, target: int, remaining: int) -> None:
        self.target = target
        self.remaining = remaining
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


class Ledger:
    """Outcome counters, flush waiters and hooks of one client."""

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
        self._drops_unreported = 0
        self._last_drop_warning = -DROP_WARNING_INTERVAL

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
        logger.warning(
            "%s",
            error,
            extra={
                "message_id": entry.message_id,
                "status": error.status,
                "attempt": entry.attempts,
            },
        )
        if self._on_error is not None:
            self._call_hook("on_error", self._on_error, error)

    def record_dropped(self, entry: Entry, reason: DropReason) -> None:
        """Count and report a dropped event (the queue has already let go of it)."""
        if entry.waiter is not None:
            entry.waiter.error = DeliveryError(
                f"dropped ({reason.value})",
                message_id=entry.message_id,
                attempts=entry.attempts,
                event=entry,
            )
        self._finish(entry, DROPPED)
        self._warn_drops(reason)
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

    # -- flush --------------------------------------------------------------------------------

    async def wait_for(self, target: int, outstanding: int, timeout: float) -> FlushResult:
        """Wait until `outstanding` events accepted up to `target` have ended, or `timeout`."""
        if outstanding <= 0:
            return FlushResult()
        waiter = FlushWaiter(target, outstanding)
        self._flush_waiters.append(waiter)
        try:
            with anyio.move_on_after(timeout):
                await waiter.done.wait()
        finally:
            self._flush_waiters.remove(waiter)
        return waiter.result()

    # -- reporting ----------------------------------------------------------------------------

    def _warn_drops(self, reason: DropReason) -> None:
        """One warning per DROP_WARNING_INTERVAL, however many events are dropped."""
        self._drops_unreported += 1
        now = time.monotonic()
        if now - self._last_drop_warning >= DROP_WARNING_INTERVAL:
            logger.warning(
                "dropped %d event(s) (latest reason: %s); see stats.dropped and on_drop",
                self._drops_unreported,
                reason.value,
            )
            self._drops_unreported = 0
            self._last_drop_warning = now

    def _call_hook(self, name: str, hook: Any, *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            logger.exception("%s hook raised; the event is unaffected", name)
