"""The delivery queue: bounds, overflow policy, acceptance order, bytes and ordering lanes.

Every event enters through `put_nowait` (or `put`, which waits for room), so the queue's
counters move in one place. Accepted events are *admitted* into the per-person lanes by the
workers (`take`), off the caller's line; an event that heads all its lanes is *ready*.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from ._constants import QUEUE_PRUNE_SLACK
from ._events import DROPPED, IN_FLIGHT, QUEUED, Entry
from ._exceptions import QueueFullError
from ._ordering import Lanes
from ._text import quote
from ._types import DropReason, Overflow

if TYPE_CHECKING:
    from ._ledger import Ledger

__all__ = ["DeliveryQueue"]


class DeliveryQueue:
    """Events accepted and not finished: queued (waiting, or parked for a retry) or in flight.

    `accepted` counts every event offered to it, including those dropped at the door, so
    that `accepted == delivered + failed + dropped + queued + in_flight (+ spooled)`; with
    a spool, the pipeline's `enqueued` also counts what an earlier process left in it
    (`Stats` has the exact identity).
    """

    def __init__(
        self, ledger: Ledger, *, max_size: int, max_bytes: int, overflow: Overflow
    ) -> None:
        self._ledger = ledger
        self._max_size = max_size
        self._max_bytes = max_bytes
        self._overflow = overflow
        self.accepted = 0
        self.count = 0
        self.bytes = 0
        self.in_flight: set[Entry] = set()
        # Queued events in the order drop_oldest and shutdown take them; entries of events
        # that have left are skipped and pruned (cheaper than an OrderedDict).
        self._order: deque[Entry] = deque()
        self._lanes: Lanes[Entry] = Lanes()
        # Accepted, not yet admitted into the lanes; heading all their lanes; idle workers,
        # the most recently idle woken first (its connection is the warmest: light traffic
        # keeps one or two connections alive instead of cycling through all of them).
        self._incoming: deque[Entry] = deque()
        self._ready: deque[Entry] = deque()
        self._idle: deque[anyio.Event] = deque()
        self._space: anyio.Event | None = None
        # Where events go when the queue is full, before the overflow policy applies (the
        # spool, while it is usable); returns False when it cannot take the event.
        self.overflow_to: Callable[[Entry], bool] | None = None

    @property
    def order_entries(self) -> int:
        """Entries in the acceptance-order deque, departed ones not yet pruned included."""
        return len(self._order)

    # -- intake -------------------------------------------------------------------------------

    def is_full(self, size: int) -> bool:
        return self.count >= self._max_size or self.bytes + size > self._max_bytes

    def put_nowait(self, entry: Entry) -> bool:
        """Accept `entry`, or apply the overflow policy; True when it was queued.

        Raises:
            QueueFullError: the queue is full under `overflow="block"`, or the event of a
                caller waiting for its outcome was dropped (`drop_newest`).
        """
        size = len(entry.body)
        if (self.count >= self._max_size or self.bytes + size > self._max_bytes) and not (
            self._make_room(entry, size)
        ):
            return False
        self.accepted += 1
        entry.seq = self.accepted
        self._order.append(entry)
        self.count += 1
        self.bytes += size
        self._incoming.append(entry)
        if self._idle:
            self._idle.pop().set()
        return True

    def accept_returning(self, entry: Entry) -> None:
        """Queue an event that comes back from the spool, whatever the bounds.

        It keeps its place in acceptance order (`seq`) if this process accepted it before.
        """
        if not entry.seq:
            self.accepted += 1
            entry.seq = self.accepted
        entry.state = QUEUED
        self._order.append(entry)
        self.count += 1
        self.bytes += len(entry.body)
        self._incoming.append(entry)
        if self._idle:
            self._idle.pop().set()

    def count_accepted(self, entry: Entry) -> None:
        """Number an event accepted elsewhere (the spool) in this queue's acceptance order."""
        self.accepted += 1
        entry.seq = self.accepted

    def _make_room(self, entry: Entry, size: int) -> bool:
        if self.overflow_to is not None and self.overflow_to(entry):
            return False  # the spool took it instead
        if self._overflow == "drop_oldest":
            # An empty queue always has room: max_event_bytes <= max_queue_bytes.
            while self.count and self.is_full(size):
                oldest = self._oldest()
                self.unqueue(oldest)
                self._ledger.record_dropped(oldest, DropReason.QUEUE_FULL)
            return True
        if self._overflow == "block":
            raise QueueFullError(
                "the queue is full and overflow='block': the *_nowait methods cannot wait for "
                "room; await the async method instead"
            )
        self.count_accepted(entry)
        self._ledger.record_dropped(entry, DropReason.QUEUE_FULL)
        if entry.waiter is not None:
            raise QueueFullError(
                f"the queue is full; event {quote(entry.name)} (message id {entry.message_id}) "
                "was dropped"
            )
        return False

    def _oldest(self) -> Entry:
        order = self._order
        while order[0].state != QUEUED:
            order.popleft()
        return order[0]

    async def wait_for_departure(self) -> None:
        """Return once an event leaves the queue (or closing begins); callers bound it."""
        if self._space is None:
            self._space = anyio.Event()
        await self._space.wait()

    def wake_waiters_for_room(self) -> None:
        if self._space is not None:
            self._space.set()
            self._space = None

    # -- workers --------------------------------------------------------------------------------

    def next_ready(self) -> Entry | None:
        """The next event that heads all its lanes, admitting new arrivals first."""
        incoming = self._incoming
        if incoming:
            admit = self._lanes.admit
            ready = self._ready
            while incoming:
                entry = incoming.popleft()
                # One dropped meanwhile (drop_oldest) never joins its lanes.
                if entry.state == QUEUED:
                    entry.admitted()
                    if admit(entry):
                        ready.append(entry)
        return self._ready.popleft() if self._ready else None

    async def wait_for_work(self) -> None:
        wakeup = anyio.Event()
        self._idle.append(wakeup)
        await wakeup.wait()

    def start(self, entry: Entry) -> None:
        """The event is about to be sent: no longer queued, in flight."""
        self.unqueue(entry)
        entry.state = IN_FLIGHT
        self.in_flight.add(entry)

    def landed(self, entry: Entry) -> None:
        """The event's request is over (whatever came of it)."""
        self.in_flight.discard(entry)

    def park(self, entry: Entry) -> None:
        """Queue an event again while it waits for its retry (it keeps its lanes)."""
        entry.state = QUEUED
        self._order.appendleft(entry)  # the oldest: first to go under drop_oldest
        self.count += 1
        self.bytes += len(entry.body)

    def unqueue(self, entry: Entry) -> None:
        """Take a queued event out of the queue's count (before it changes state)."""
        self.count -= 1
        self.bytes -= len(entry.body)
        order = self._order
        if order[0] is entry:  # mostly: events leave in the order they came
            order.popleft()
            while order and order[0].state != QUEUED:
                order.popleft()
        elif len(order) > 2 * self.count + QUEUE_PRUNE_SLACK:
            # Entries of events that left behind a head that stays (a retry, a person's
            # earlier event): prune them, amortised O(1), so the deque stays O(queued).
            self._order = deque(
                dict.fromkeys(e for e in order if e.state == QUEUED and e is not entry)
            )
        self.wake_waiters_for_room()

    def make_ready(self, entry: Entry) -> None:
        """A parked event falls due: to the workers (a dropped one just leaves its lanes)."""
        if entry.state == DROPPED:
            self.release(entry)
        else:
            self._push_ready(entry)

    def release(self, entry: Entry) -> None:
        """Take a finished event out of the ordering, letting its successors go."""
        pending = [entry]
        while pending:
            for unblocked in self._lanes.release(pending.pop()):
                if unblocked.state == DROPPED:
                    pending.append(unblocked)
                else:
                    self._push_ready(unblocked)

    def _push_ready(self, entry: Entry) -> None:
        self._ready.append(entry)
        if self._idle:
            self._idle.pop().set()

    # -- shutdown -------------------------------------------------------------------------------

    def take_all(self) -> list[Entry]:
        """Empty the queue: every event in flight or queued, in flight first, then by age."""
        queued = dict.fromkeys(entry for entry in self._order if entry.state == QUEUED)
        left = [*self.in_flight, *queued]
        self.in_flight.clear()
        self._order.clear()
        self.count = 0
        self.bytes = 0
        self._incoming.clear()
        self._ready.clear()
        self._lanes.clear()
        return left
