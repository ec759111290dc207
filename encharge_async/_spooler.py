"""The bridge between a client's memory queue and its durable spool (`spool=`).

Events normally live in memory. They go through the spool when they cannot stay there:
- the memory queue is full (instead of being dropped);
- the endpoint has been failing for longer than `spool_after` seconds;
- the spool holds events from an earlier process (they go first, to keep per-person order);
- with `spool_mode="always"`, every event is also written before `await track()` returns.

While the spool *spills* (any of the first three), new events are appended to it and a
feeder task loads them back, oldest first, as the memory queue has room: insertion order is
the order of arrival, so per-person order holds across memory, disk and restarts. Spilled
events keep their `Event` object in memory without its body, for flush() and waiters.

A writer task appends and acknowledges in rounds (append first, then ack), so an event
that is delivered before its append lands is appended and then removed, not left behind.
At shutdown, what could not be delivered in time is kept in (or written to) the spool for
the next start instead of being dropped.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import anyio

from ._constants import SPOOL_CLOSE_TIMEOUT, SPOOL_LOAD_PAGE
from ._events import DELIVERED, FAILED, Event, lanes_of, sequence
from ._spool import Spool, SpooledEvent, SpoolError, SpoolLimits
from ._types import DropReason

if TYPE_CHECKING:
    from ._client import AsyncEncharge

__all__ = ["Spooler"]

logger = logging.getLogger("encharge_async")


class Spooler:
    """Owns the spool of one client: the writer and feeder tasks and the spilling state."""

    def __init__(
        self,
        client: AsyncEncharge,
        spool: str | os.PathLike[str] | Spool,
        *,
        always: bool,
        limits: SpoolLimits,
    ) -> None:
        self._client = client
        self._target = spool
        self._limits = limits
        self.always = always
        self.spool: Spool | None = spool if isinstance(spool, Spool) else None
        # Until the spool is open we cannot know whether it holds older events: spill.
        self.spilling = True
        self.usable = True
        self.outage = False
        self.pending: list[Event] = []  # accepted, to append
        self.writing: list[Event] = []  # the batch being appended right now
        self.spilled: dict[str, Event] = {}  # ours, on disk (or pending), not in memory
        # Ours, in memory AND on disk (always mode), or finished but not yet acked: the
        # feeder must not load these again.
        self.resident: set[str] = set()
        self.acks: list[str] = []
        self.count = 0  # events in the spool, pending appends included
        self.generation = 0  # append rounds done
        self.cursor: int | None = None
        self.next_commit = anyio.Event()  # set when `pending` is on disk
        self.current_commit = anyio.Event()  # set when `writing` is on disk
        self._writer_wakeup = anyio.Event()
        self._feeder_wakeup = anyio.Event()
        self._opened: anyio.Event | None = None
        self._loading = False
        self._acked_while_loading: set[str] = set()
        self.open_error: SpoolError | None = None

    # -- called by the client, on its loop ----------------------------------------------------

    def take(self, event: Event) -> None:
        """Accept `event` through the spool (the client calls this while it diverts)."""
        client = self._client
        if not self.spilling and client._is_full(event):
            self.start_spilling()
        if self.spilling:
            if len(self.pending) >= client._max_queue_size:
                # The disk is not keeping up: the memory bound applies to what waits for it.
                client._drop(event, DropReason.QUEUE_FULL)
                return
            client._enqueued += 1
            event.seq = next(sequence)
            self.spilled[event.message_id] = event
            self._client._spilled_count = len(self.spilled)
        else:
            client._accept(event)
            self.resident.add(event.message_id)
        event._spooled = True
        self.pending.append(event)
        self.count += 1
        self._writer_wakeup.set()

    def finished(self, event: Event, state: int) -> None:
        """An event that went through the spool ended; delivered or failed ones leave it."""
        if state in (DELIVERED, FAILED):
            self.acks.append(event.message_id)
            self.count -= 1
            self._writer_wakeup.set()

    def start_spilling(self) -> None:
        if self.usable and not self.spilling:
            logger.info("spilling new events to the spool %s", self._describe())
            self.spilling = True
            self._client._update_divert()

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
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer)
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
        client = self._client
        if self.spool is None:
            assert not isinstance(self._target, Spool)
            try:
                self.spool = await Spool.open(self._target, limits=self._limits)
            except SpoolError as exc:
                self.open_error = exc
                self._give_up(str(exc))
                return False
        for path in self.spool.moved_aside:
            logger.error("an unreadable spool file was moved aside to %s", path)
        for spooled in await self.spool.expire():
            client._drop(_event_of(spooled), DropReason.EXPIRED)
        stats = await self.spool.stats()
        self.count += stats.count
        if stats.count:
            logger.info("resuming %d event(s) left in the spool %s", stats.count, self._describe())
        return True

    def _give_up(self, reason: str) -> None:
        """Memory only from now on: spilled events go back to the memory queue if they can."""
        client = self._client
        logger.error(
            "the spool %s cannot be used, events stay in memory only: %s", self._describe(), reason
        )
        self.usable = False
        self.spilling = False
        spilled = list(self.spilled.values())
        self.spilled.clear()
        client._spilled_count = 0
        self.pending.clear()
        self.resident.clear()
        self.current_commit.set()
        self.next_commit.set()
        client._update_divert()
        for event in spilled:
            event._spooled = False
            if event.body:
                client._accept(event)
            else:  # its body is only on the disk we can no longer read
                client._drop(event, DropReason.SPOOL_ERROR)

    async def _writer(self) -> None:
        assert self.spool is not None
        while self.usable:
            await self._writer_wakeup.wait()
            self._writer_wakeup = anyio.Event()
            while self.usable and (self.pending or self.acks):
                batch, self.current_commit = self.pending, self.next_commit
                self.pending, self.next_commit = [], anyio.Event()
                acks, self.acks = self.acks, []
                if batch:
                    self.writing = batch
                    try:
                        result = await self.spool.append(
                            [SpooledEvent.from_event(event) for event in batch]
                        )
                    except SpoolError as exc:
                        self.writing = []
                        self._give_up(f"writing failed: {exc}")
                        return
                    self.writing = []
                    self._after_append(batch, result.refused)
                    self.current_commit.set()
                    self._feeder_wakeup.set()
                if acks:
                    try:
                        await self.spool.ack(acks)
                    except SpoolError as exc:  # they are only sent again next start
                        logger.error("acknowledging spooled events failed: %s", exc)
                    if self._loading:
                        # A read that started before this ack may still return them: the
                        # feeder must recognise them as ours until it has looked.
                        self._acked_while_loading.update(acks)
                    else:
                        self.resident.difference_update(acks)

    def _after_append(self, batch: list[Event], refused: tuple[SpooledEvent, ...]) -> None:
        client = self._client
        refused_ids = {spooled.message_id for spooled in refused}
        for event in batch:
            if event.message_id in refused_ids:
                self.count -= 1
                event._spooled = False
                self.resident.discard(event.message_id)
                spilled = self.spilled.pop(event.message_id, None)
                if spilled is not None:  # not in memory either: nowhere left to keep it
                    client._spilled_count = len(self.spilled)
                    client._drop(spilled, DropReason.SPOOL_FULL)
            elif event.message_id in self.spilled:
                event.body = b""  # on disk now: free the memory, reload it from there
        self.generation += 1

    async def _feeder(self) -> None:
        """Loads spilled events back into memory, oldest first, as the queue has room."""
        assert self.spool is not None
        client = self._client
        while self.usable:
            if not self.spilling:
                await self._feeder_wakeup.wait()
                self._feeder_wakeup = anyio.Event()
                continue
            room = self._room()
            if room <= 0:
                if client._space is None:
                    client._space = anyio.Event()
                with anyio.move_on_after(1.0):  # also re-checks the outage window
                    await client._space.wait()
                continue
            generation = self.generation
            self._loading = True
            try:
                page = await self.spool.load(limit=min(room, SPOOL_LOAD_PAGE), after=self.cursor)
            finally:
                self._loading = False
            acked, self._acked_while_loading = self._acked_while_loading, set()
            for spooled in page:
                self.cursor = spooled.seq
                if spooled.message_id in self.resident or spooled.message_id in acked:
                    continue
                event = self.spilled.pop(spooled.message_id, None)
                if event is None:  # left by an earlier process
                    event = _event_of(spooled)
                    event._spooled = True
                else:
                    event.body = spooled.body
                self.resident.add(spooled.message_id)
                client._accept(event)
            self.resident.difference_update(acked)
            client._spilled_count = len(self.spilled)
            if page or generation != self.generation:
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
        client = self._client
        for event in self.spilled.values():  # insertion order: the order of arrival
            self.resident.add(event.message_id)
            client._accept(event)
        self.spilled.clear()
        client._spilled_count = 0
        self.spilling = False
        client._update_divert()
        logger.info("the spool %s is drained; events stay in memory", self._describe())

    def _room(self) -> int:
        client = self._client
        limit = client._max_queue_size
        if self.outage:
            # While the endpoint is down, keep just enough in memory to notice it is back.
            limit = min(limit, 2 * client._max_concurrency)
        return limit - client._queued_count

    # -- shutdown -----------------------------------------------------------------------------

    async def close(self, undelivered: list[Event]) -> tuple[int, list[Event]]:
        """Keep undelivered events (memory leftovers and spilled ones) for the next start.

        Returns how many events the spool holds when closed, and the undelivered events
        that could not be kept (the caller reports them as dropped).
        """
        if self.spool is None or not self.usable:
            return 0, undelivered
        # A cancelled append may or may not have landed: appending again is harmless. The
        # events still being written are the newest: after what the spool holds. Those in
        # memory are older than anything the spool holds and has not handed back yet (the
        # feeder reads oldest first): in front, so that the next start keeps the order.
        newest = {event.message_id: event for event in [*self.writing, *self.pending]}
        in_memory = [
            event
            for event in undelivered
            if event.message_id not in newest and event.message_id not in self.spilled
        ]
        in_memory.sort(key=lambda event: event.seq)
        lost: list[Event] = list(undelivered)
        held = 0
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(SPOOL_CLOSE_TIMEOUT):
                try:
                    refused: set[str] = set()
                    for batch, front in ((list(newest.values()), False), (in_memory, True)):
                        events = [SpooledEvent.from_event(e) for e in batch if e.body]
                        if events:
                            result = await self.spool.append(events, front=front)
                            refused.update(spooled.message_id for spooled in result.refused)
                    # Events without a body are spilled ones: on disk already.
                    lost = [e for e in undelivered if e.message_id in refused]
                    if self.acks:
                        await self.spool.ack(self.acks)
                        self.acks = []
                    held = self.count = (await self.spool.stats()).count
                except SpoolError as exc:
                    logger.error("could not keep undelivered events in the spool: %s", exc)
            try:
                await self.spool.close(timeout=SPOOL_CLOSE_TIMEOUT)
            except SpoolError as exc:  # pragma: no cover - close() only logs in practice
                logger.error("closing the spool failed: %s", exc)
        return held, lost

    def _describe(self) -> str:
        if self.spool is not None:
            return str(self.spool.path)
        return str(self._target) if not isinstance(self._target, Spool) else repr(self._target)


def _event_of(spooled: SpooledEvent) -> Event:
    event = Event(spooled.name, spooled.body, lanes_of(spooled.keys), spooled.message_id)
    event.attempts = spooled.attempts
    return event
