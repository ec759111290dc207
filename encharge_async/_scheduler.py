"""Time in the pipeline: parked retries, the server's pause, and the shutdown deadline.

A retrying event is parked on a timer heap instead of sleeping in its worker, so that it
holds neither a delivery slot nor anyone else's events; the timer task hands it back to the
queue when it falls due. A 429 or a 503 with Retry-After pauses every sender until the
server's time is up. While the client closes, backoff and pauses are shortened so that one
last attempt still fits before the deadline, but an attempt is never repeated without its
backoff.
"""

from __future__ import annotations

import heapq
import logging

import anyio

from ._events import Entry
from ._queue import DeliveryQueue
from ._retry import Attempt, Retry

__all__ = ["Scheduler"]

logger = logging.getLogger("encharge_async")


class Scheduler:
    """The retry timer, the global pause and the shutdown deadline of one client."""

    def __init__(self, queue: DeliveryQueue, *, timeout: float) -> None:
        self._queue = queue
        self._timeout = timeout
        self._heap: list[tuple[float, int, Entry]] = []
        self._wakeup: anyio.Event | None = None
        self._paused_until = 0.0
        self._deadline: float | None = None  # set when closing begins
        self._closing: anyio.Event | None = None

    @property
    def closing(self) -> bool:
        return self._deadline is not None

    def start(self) -> None:
        """Called on the client's loop before the runner starts (anyio events need it)."""
        self._closing = anyio.Event()

    def park(self, entry: Entry, retry: Retry, attempt: Attempt, now: float) -> None:
        """Queue `entry` again, to be handed back to the workers after its delay."""
        delay = retry.delay
        if retry.pause_all:
            self._paused_until = max(self._paused_until, now + delay)
        due = now + delay if self._deadline is None else self._closing_due(now, delay)
        logger.debug(
            "message %s: attempt %d failed (%s), retrying in %.2fs",
            entry.message_id,
            entry.attempts,
            attempt.reason,
            due - now,
            extra={
                "message_id": entry.message_id,
                "status": attempt.status,
                "attempt": entry.attempts,
            },
        )
        self._queue.park(entry)
        heapq.heappush(self._heap, (due, entry.seq, entry))
        if self._heap[0][2] is entry and self._wakeup is not None:
            self._wakeup.set()

    def paused(self, now: float) -> bool:
        return self._paused_until > now

    async def wait_out_pause(self) -> None:
        """Sleep until the server's Retry-After pause ends (cut short during shutdown)."""
        assert self._closing is not None
        while True:
            now = anyio.current_time()
            until = self._paused_until
            if self._deadline is not None:
                until = min(until, max(now, self._deadline - self._timeout))
            if until <= now:
                return
            with anyio.move_on_after(until - now):
                if self._deadline is None:
                    await self._closing.wait()
                else:
                    await anyio.sleep(until - now)

    def begin_closing(self, now: float, deadline: float) -> None:
        """From now on, fit the last attempts before `deadline`; retry parked events now."""
        self._deadline = deadline
        assert self._closing is not None
        self._closing.set()
        # Parked retries are tried now rather than after the app has gone; if they fail
        # again, their backoff is shortened so one last attempt still fits.
        if self._heap:
            self._heap = [(now, seq, entry) for _, seq, entry in self._heap]
            heapq.heapify(self._heap)
            if self._wakeup is not None:
                self._wakeup.set()

    def _closing_due(self, now: float, delay: float) -> float:
        """During shutdown: when a retry asked for `now + delay` should happen instead.

        Shortened so that a last whole attempt fits before the deadline; when there is no
        time left for one, the backoff is kept: the event is then kept in the spool or
        dropped at the deadline, and a fast-failing endpoint is not hammered meanwhile.
        """
        assert self._deadline is not None
        latest = self._deadline - self._timeout
        if latest > now:
            return min(now + delay, latest)
        return now + delay

    def clear(self) -> None:
        self._heap.clear()

    async def run(self) -> None:
        """The timer task: moves parked retries back to the queue as they fall due."""
        heap = self._heap
        while True:
            now = anyio.current_time()
            heap = self._heap
            while heap and heap[0][0] <= now:
                self._queue.make_ready(heapq.heappop(heap)[2])
            self._wakeup = anyio.Event()
            if heap:
                with anyio.move_on_after(heap[0][0] - now):
                    await self._wakeup.wait()
            else:
                await self._wakeup.wait()
