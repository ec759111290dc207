"""The one door into the pipeline: from the client's loop, waiting for room, or from a thread.

`put_nowait` is the caller's hot path: a thread check, then the queue (or the spool, while
events are diverted there). A call from another thread is handed to the client's loop in
batches (only the first of a burst wakes it). `put` waits for room (`overflow="block"`).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from threading import get_ident

import anyio

from ._events import DROPPED, FILTERED, Entry
from ._exceptions import ClientClosedError, QueueFullError
from ._ledger import Ledger
from ._queue import DeliveryQueue
from ._runtime import LoopBinding
from ._text import quote
from ._types import DropReason, Overflow

__all__ = ["DisabledIntake", "Intake", "ShapedIntake"]


class Intake:
    """Admits validated events into the queue, on the client's loop."""

    def __init__(
        self,
        queue: DeliveryQueue,
        ledger: Ledger,
        *,
        overflow: Overflow,
        enter: Callable[[], LoopBinding],
    ) -> None:
        self._queue = queue
        self._queue_put = queue.put_nowait
        self._ledger = ledger
        self._overflow = overflow
        # Starts the client on the running loop, or checks the caller is on the client's
        # loop; raises ClientClosedError / EventLoopError.
        self._enter = enter
        self._binding: LoopBinding | None = None
        # True from the start until closing begins or the runner ends; with the loop's
        # thread, it is the hot path's "on the client's running loop".
        self.accepting = False
        self._loop_thread = 0
        self._loop_running: Callable[[], bool] = _never
        self._handed_over: deque[Entry] = deque()
        self._take_scheduled = False
        # While events go through the spool rather than straight to memory: the spool's door.
        self.divert: Callable[[Entry], None] | None = None
        # Whether the spool can take events (so a full queue need not make anyone wait).
        self.can_spill: Callable[[], bool] = _never

    @property
    def handed_over(self) -> int:
        """Events other threads handed over that the loop has not taken yet."""
        return len(self._handed_over)

    def open(self, binding: LoopBinding, thread: int) -> None:
        self._binding = binding
        self._loop_thread = thread
        self._loop_running = binding.running
        self.accepting = True

    def put_nowait(self, entry: Entry) -> None:
        """The hot path: checks, bound test, queue. No locks, no I/O, no task."""
        if (
            not self.accepting or get_ident() != self._loop_thread or not self._loop_running()
        ) and self._not_on_loop(entry):
            return
        divert = self.divert
        if divert is None:
            self._queue_put(entry)
        else:
            divert(entry)

    def _not_on_loop(self, entry: Entry) -> bool:
        """Slow path: start the client, or hand the event over; True when handed over."""
        binding = self._binding
        if binding is not None and self.accepting:
            if get_ident() == self._loop_thread and binding.current() is not None:
                self._enter()  # the loop's thread, running another loop: refused
                return False
            # Another thread (a sync handler in a thread pool, or a thread running its
            # own loop), or the loop's own thread while the loop is stopped: the client's
            # loop takes the event from here (EventLoopError if that loop is closed).
            if self._overflow == "block" and self._queue.is_full(entry.size):
                raise QueueFullError(
                    "the queue is full and overflow='block': a call from another thread "
                    "cannot wait for room"
                )
            self._hand_over(binding, entry)
            return True
        self._enter()
        return False

    async def put(self, entry: Entry, timeout: float) -> None:
        """Accept `entry`, waiting up to `timeout` for room under `overflow="block"`.

        Raises:
            QueueFullError: no room within `timeout`, in memory or in the spool.
        """
        queue = self._queue
        size = entry.size
        with anyio.move_on_after(timeout):
            while True:
                self._enter()
                if self.divert is not None or (queue.is_full(size) and self.can_spill()):
                    self._divert(entry)  # the spool never makes anyone wait
                    if entry.state == DROPPED:
                        raise QueueFullError(
                            f"no room for event {quote(entry.name)}, in memory or in the spool"
                        )
                    return
                if not queue.is_full(size):
                    queue.put_nowait(entry)
                    return
                await queue.wait_for_departure()
        raise QueueFullError(
            f"no room in the queue within {timeout:g}s for event {quote(entry.name)}"
        )

    def _divert(self, entry: Entry) -> None:
        divert = self.divert
        if divert is None:
            queue_full = self._queue.overflow_to
            assert queue_full is not None
            queue_full(entry)
        else:
            divert(entry)

    def _hand_over(self, binding: LoopBinding, entry: Entry) -> None:
        self._handed_over.append(entry)
        if not self._take_scheduled:
            self._take_scheduled = True
            try:
                binding.call_soon_threadsafe(self.take_handed_over)
            except BaseException:
                self._take_scheduled = False
                with contextlib.suppress(ValueError):
                    self._handed_over.remove(entry)
                raise

    def take_handed_over(self) -> None:
        """On the loop: admit what other threads handed over (at close: drop it)."""
        # Cleared first: an event handed over from now on schedules another call.
        self._take_scheduled = False
        handed_over = self._handed_over
        queue = self._queue
        blocks = self._overflow == "block"
        while handed_over:
            entry = handed_over.popleft()
            if not self.accepting:
                queue.count_accepted(entry)
                self._ledger.record_dropped(entry, DropReason.SHUTDOWN)
            elif self.divert is not None:
                self.divert(entry)
            elif blocks and not self.can_spill() and queue.is_full(entry.size):
                # The calling thread has moved on: nobody is left to wait or to raise to.
                queue.count_accepted(entry)
                self._ledger.record_dropped(entry, DropReason.QUEUE_FULL)
            else:
                # On the loop now: past the checks of `put_nowait`.
                queue.put_nowait(entry)

    def close(self) -> None:
        self.accepting = False


def _never() -> bool:
    return False


class ShapedIntake(Intake):
    """With `before_send`: events it filtered out are counted here and go no further."""

    def put_nowait(self, entry: Entry) -> None:
        if entry.state == FILTERED:
            self._ledger.filtered += 1
            return
        super().put_nowait(entry)

    async def put(self, entry: Entry, timeout: float) -> None:
        if entry.state == FILTERED:
            self._ledger.filtered += 1
            return
        await super().put(entry, timeout)


class DisabledIntake(Intake):
    """`disabled=True`: events were validated by the builders; nothing is queued or sent."""

    def put_nowait(self, entry: Entry) -> None:
        if not self.accepting:
            raise ClientClosedError("the client is closed; create a new one")

    async def put(self, entry: Entry, timeout: float) -> None:
        self.put_nowait(entry)
