"""The bridge between a client's memory queue and its durable spool (`spool=`).

Events normally live in memory. They go through the spool when they cannot stay there:
- the memory queue is full (instead of being dropped);
- the endpoint has been failing for longer than `spool_after` seconds;
- the spool holds events from an earlier process (they go first, to keep per-person order);
- with `spool_mode="always"`, every event is also written before `await track()` returns.

While the spool *spills* (any of the first three), new events are appended to it and a
feeder task loads them back, oldest first, as the memory queue has room: insertion order is
the order of arrival, so per-person order holds across memory, disk and restarts. Once on
disk, a spilled event is remembered by a small stub (its id, place and waiter) and read
back from the disk into a new entry, by a `SpoolReader` (`_spool_reader.py`).

A `SpoolWriter` (`_spool_writer.py`) appends and acknowledges in rounds (append first,
then ack), so an event that is delivered before its append lands is appended and then
removed, not left behind. At shutdown, what could not be delivered in time is kept in (or
written to) the spool for the next start instead of being dropped.

The bridge talks to the pipeline through its public parts only: the queue (accept what
comes back, room), the ledger (drops), the intake (diverting) and the dispatcher (the
endpoint's health), wired by the pipeline.

What it holds for the counters (`Stats.spooled`): the events whose only live copy is the
spool, so that each event counts in exactly one of `queued`, `in_flight` and `spooled`.
Those are this client's spilled events (`spilled`), its events kept in the file when the
spool was given up on or at shutdown (`kept`), and the events an earlier process left that
are not read back yet (`leftover`). The pipeline counts those in `enqueued` too, from the
opening: this client has taken them over (with the ones that turn out unreadable, which
count as failed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import anyio

from ._constants import SPOOL_MAX_PENDING
from ._events import DELIVERED, FAILED, FROM_EARLIER, SPOOLED, Entry
from ._exceptions import DeliveryError
from ._ledger import Ledger
from ._queue import DeliveryQueue
from ._spool import Spool, SpooledEvent, SpoolError, SpoolLimits
from ._spool_reader import OnDisk, SpoolReader, entry_of
from ._spool_writer import SpoolWriter, close_spool
from ._types import DropReason

__all__ = ["Spooler"]

logger = logging.getLogger("encharge_async")


class Spooler:
    """Owns the spool of one client: the spilling state and the books of where its events
    are, the feeder task (reading events back through a `SpoolReader`) and the writer
    (`SpoolWriter`)."""

    def __init__(
        self,
        spool: str | os.PathLike[str] | Spool,
        *,
        queue: DeliveryQueue,
        ledger: Ledger,
        always: bool,
        limits: SpoolLimits,
        max_queue_size: int,
        outage_in_memory: int,
        on_divert_change: Callable[[], None],
    ) -> None:
        self._queue = queue
        self._ledger = ledger
        self._max_queue_size = max_queue_size
        # During an outage, what is read back into memory at most: enough to notice the
        # endpoint is back.
        self._outage_in_memory = outage_in_memory
        # Tells the intake whether events now go through the spool (`diverting`).
        self._divert_changed = on_divert_change
        self._target = spool
        self._limits = limits
        self.always = always
        self.spool: Spool | None = spool if isinstance(spool, Spool) else None
        # Until the spool is open we cannot know whether it holds older events: spill.
        self.spilling = True
        self.usable = True
        self.outage = False
        self.writer = SpoolWriter(
            appended=self._after_append, acked=self._after_ack, failed=self._give_up
        )
        # Ours, on disk (or pending), not in memory; `OnDisk` once only the disk has it.
        self.spilled: dict[str, Entry | OnDisk] = {}
        # Ours, in memory AND on disk (always mode), or finished but not yet acked: the
        # feeder must not load these again.
        self.resident: set[str] = set()
        # Ours, neither in memory nor spilled: left in the file for the next start (the
        # spool was given up on before they were read back, or kept at shutdown).
        self.kept = 0
        self.reader = SpoolReader()
        self._feeder_wakeup = anyio.Event()
        self._opened: anyio.Event | None = None
        self.open_error: SpoolError | None = None
        # Events an earlier process left that are not read back yet (flush() waits for them),
        # and those that could not be read back (failed).
        self.leftover = 0
        self.unreadable = 0

    # -- called by the pipeline, on its loop ------------------------------------------------

    @property
    def diverting(self) -> bool:
        """Whether new events go through the spool rather than straight to memory."""
        return self.usable and (self.spilling or self.always)

    @property
    def spilled_count(self) -> int:
        return len(self.spilled)

    @property
    def unnumbered(self) -> int:
        """Events an earlier process left that count in `Stats.enqueued` but not in the
        queue's numbering (it numbers them as they are read back)."""
        return self.leftover + self.unreadable

    @property
    def spooled(self) -> int:
        """Events whose only live copy is the spool (`Stats.spooled`); see the module."""
        return len(self.spilled) + self.kept + self.leftover

    def take_overflow(self, entry: Entry) -> bool:
        """The memory queue is full: keep `entry` in the spool instead, if it is usable."""
        if not self.usable:
            return False
        self.take(entry)
        return True

    def take(self, entry: Entry) -> None:
        """Accept `entry` through the spool (while the pipeline diverts, or on overflow)."""
        queue = self._queue
        if not self.spilling and queue.is_full(entry.size):
            self.start_spilling()
        if self.spilling:
            queue.count_accepted(entry)
            if len(self.writer.pending) >= max(self._max_queue_size, SPOOL_MAX_PENDING):
                # The disk is not keeping up (the writer appends all that waits in one go):
                # a memory bound applies to what waits for it.
                self._ledger.record_dropped(entry, DropReason.QUEUE_FULL)
                return
            self.spilled[entry.message_id] = entry
        else:
            queue.accept_returning(entry)
            self.resident.add(entry.message_id)
        entry.spooled = SPOOLED
        self.writer.append(entry)

    def finished(self, entry: Entry, state: int) -> None:
        """An event that went through the spool ended; delivered or failed ones leave it."""
        if state in (DELIVERED, FAILED):
            self.writer.ack(entry.message_id)

    def commit_of(self, entry: Entry) -> anyio.Event:
        """Set once `entry` (taken in always mode) is on disk."""
        return self.writer.commit_of(entry)

    def start_spilling(self) -> None:
        if self.usable and not self.spilling:
            logger.info("spilling new events to the spool %s", self._describe())
            self.spilling = True
            self._divert_changed()

    def set_outage(self, outage: bool) -> None:
        """The endpoint has been failing for longer than spool_after (or has recovered)."""
        if outage == self.outage:
            return
        self.outage = outage
        if outage:
            self.start_spilling()
        self._feeder_wakeup.set()

    # -- tasks --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Open the spool, then run the writer and the feeder until cancelled."""
        if not await self.open():
            return
        assert self.spool is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.writer.run, self.spool)
            tg.start_soon(self._feeder)

    async def open(self) -> bool:
        """Open the spool once (both `__aenter__` and the runner may ask); True when usable.

        A failure is kept in `open_error`, and the client goes on in memory only.
        """
        if self._opened is not None:
            await self._opened.wait()
            return self.usable
        self._opened = anyio.Event()
        try:
            return await self._open()
        finally:
            self._opened.set()

    async def _open(self) -> bool:
        if self.spool is None:
            assert not isinstance(self._target, Spool)
            try:
                self.spool = await Spool.open(self._target, limits=self._limits)
            except SpoolError as exc:
                self.open_error = exc
                await self._give_up(str(exc))
                return False
        for path in self.spool.moved_aside:
            logger.error("an unreadable spool file was moved aside to %s", path)
        for spooled in await self.spool.expire():
            entry = entry_of(spooled)
            if entry is not None:
                self._queue.count_accepted(entry)
                self._ledger.record_dropped(entry, DropReason.EXPIRED)
        stats = await self.spool.stats()
        self.leftover = stats.count
        if stats.count:
            logger.info("resuming %d event(s) left in the spool %s", stats.count, self._describe())
        return True

    async def _give_up(self, reason: str) -> None:
        """Memory only from now on: spilled events go back to the memory queue.

        Those whose only copy is on disk are read back if the disk still reads; if not,
        they stay in the spool file for the next start, and are counted there (`kept`).
        """
        logger.error(
            "the spool %s cannot be used, events stay in memory only: %s", self._describe(), reason
        )
        self.usable = False
        self.spilling = False
        spilled = list(self.spilled.values())
        self.spilled.clear()
        self.kept += len(spilled)  # until they are back in memory
        self.resident.clear()
        self.writer.stop()
        self._divert_changed()
        on_disk = {item.message_id: item for item in spilled if isinstance(item, OnDisk)}
        read_back: dict[str, Entry] = {}
        if on_disk and self.spool is not None:
            read_back = await self.reader.read_back(self.spool, on_disk)
        for item in spilled:
            entry = item if isinstance(item, Entry) else read_back.get(item.message_id)
            if entry is not None:
                entry.spooled = 0
                self.kept -= 1
                self._queue.accept_returning(entry)
        left = len(on_disk) - len(read_back)
        if left:
            logger.error(
                "%d spilled event(s) could not be read back; they stay in the spool file %s "
                "for the next start",
                left,
                self._describe(),
            )

    def _after_ack(self, acks: list[str]) -> None:
        # During a read, the feeder forgets them once it has looked at what it read.
        if not self.reader.acked_during_read(acks):
            self.resident.difference_update(acks)

    def _after_append(self, batch: list[Entry], refused: tuple[SpooledEvent, ...]) -> None:
        refused_ids = {spooled.message_id for spooled in refused}
        for entry in batch:
            message_id = entry.message_id
            if message_id in refused_ids:
                entry.spooled = 0
                self.resident.discard(message_id)
                if self.spilled.pop(message_id, None) is not None:
                    # Not in memory either: nowhere left to keep it.
                    self._ledger.record_dropped(entry, DropReason.SPOOL_FULL)
            elif message_id in self.spilled:
                # On disk now: free the memory, read it back from there.
                self.spilled[message_id] = OnDisk(message_id, entry.seq, entry.waiter)
        self._feeder_wakeup.set()

    async def _feeder(self) -> None:
        """Loads spilled events back into memory, oldest first, as the queue has room."""
        assert self.spool is not None
        while self.usable:
            if not self.spilling:
                await self._feeder_wakeup.wait()
                self._feeder_wakeup = anyio.Event()
                continue
            room = self._room()
            if room <= 0:
                with anyio.move_on_after(1.0):  # also re-checks the outage window
                    await self._queue.wait_for_departure()
                continue
            generation = self.writer.generation
            page, acked = await self.reader.next_page(self.spool, room)
            if not self.usable:
                return  # given up on meanwhile: what was spilled is back in memory
            for spooled in page:
                if spooled.message_id in self.resident or spooled.message_id in acked:
                    continue
                known = self.spilled.pop(spooled.message_id, None)
                if isinstance(known, Entry):
                    entry = known
                else:
                    read = entry_of(spooled)  # left by an earlier process, or spilled
                    if read is None:
                        self._forget_unreadable(spooled, known)
                        continue
                    entry = read
                    if known is not None:
                        entry.spooled = SPOOLED
                        entry.seq, entry.waiter = known.seq, known.waiter
                    else:
                        entry.spooled = FROM_EARLIER
                        self.leftover = max(0, self.leftover - 1)
                self.resident.add(spooled.message_id)
                self._queue.accept_returning(entry)
            self.resident.difference_update(acked)
            if page or generation != self.writer.generation:
                continue  # an append landed meanwhile: read again before deciding
            if self.outage:
                # Drained, but the endpoint is still down: wait for new spilled events (the
                # writer wakes us) or the end of the outage.
                await self._feeder_wakeup.wait()
                self._feeder_wakeup = anyio.Event()
                continue
            self._stop_spilling()

    def _stop_spilling(self) -> None:
        """The disk holds nothing older than what is still being appended: back to memory.

        Spilled events not read back are the ones still pending or being appended (their
        bodies are still here): they join the memory queue now, in order, and stay in the
        spool's books (appended, then acknowledged when they end) like always-mode events.
        """
        for item in self.spilled.values():  # insertion order: the order of arrival
            assert isinstance(item, Entry)  # the disk had everything else
            self.resident.add(item.message_id)
            self._queue.accept_returning(item)
        self.spilled.clear()
        self.spilling = False
        self._divert_changed()
        logger.info("the spool %s is drained; events stay in memory", self._describe())

    def _room(self) -> int:
        limit = self._max_queue_size
        if self.outage:
            # While the endpoint is down, keep just enough in memory to notice it is back.
            limit = min(limit, self._outage_in_memory)
        return limit - self._queue.count

    def _forget_unreadable(self, spooled: SpooledEvent, ours: OnDisk | None) -> None:
        """A stored event that is not a valid event (a damaged or edited file): it fails,
        never sent. `ours`: what memory kept of it, if this process spilled it."""
        logger.error(
            "the spool %s holds an invalid event (message id %.60r); it is removed, not sent",
            self._describe(),
            spooled.message_id,
        )
        self.writer.ack(spooled.message_id)
        if ours is not None:
            self._ledger.record_unreadable(ours.seq, ours.waiter, ours.message_id)
        elif self.leftover > 0:
            self.leftover -= 1
            self.unreadable += 1
            self._ledger.record_unreadable()

    # -- shutdown -----------------------------------------------------------------------------

    async def close(self, left: list[Entry]) -> tuple[int, list[Entry]]:
        """Keep undelivered events (memory leftovers and spilled ones) for the next start.

        Returns how many events the spool holds when closed, and the undelivered events
        that could not be kept (the caller reports them as dropped). Callers waiting on a
        kept event's outcome are told it was kept.
        """
        spilled = list(self.spilled.values())
        self.spilled.clear()
        undelivered = left + [item for item in spilled if isinstance(item, Entry)]
        if self.spool is None:
            return 0, undelivered  # the caller drops them at once
        # In the spool's keeping until the caller has dropped those it could not keep.
        self.kept += len(left) + len(spilled)
        if not self.usable:
            # Given up on, but still open (and locked): close it, keeping what it holds.
            with anyio.CancelScope(shield=True):
                await close_spool(self.spool)
            self.kept -= len(undelivered)
            return 0, undelivered
        held, lost = await self.writer.keep(self.spool, undelivered)
        self.kept -= len(lost)
        lost_ids = {entry.message_id for entry in lost}
        kept: list[Entry | OnDisk] = [item for item in spilled if isinstance(item, OnDisk)]
        kept += [entry for entry in undelivered if entry.message_id not in lost_ids]
        for item in kept:
            if item.waiter is not None:
                item.waiter.error = DeliveryError(
                    "not delivered before shutdown; kept in the spool for the next start",
                    message_id=item.message_id,
                    event=item if isinstance(item, Entry) else None,
                )
                item.waiter.done.set()
        return held, lost

    def _describe(self) -> str:
        if self.spool is not None:
            return str(self.spool.path)
        return str(self._target) if not isinstance(self._target, Spool) else repr(self._target)
