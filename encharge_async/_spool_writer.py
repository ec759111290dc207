"""The spool's writer side: appends accepted events and acknowledges ended ones, in rounds.

Each round appends what waits (one transaction, one commit for every event taken
meanwhile), then acknowledges what has ended: an event delivered before its append lands
is appended and then removed, not left behind. At shutdown it writes what could not be
delivered, in the order the next start needs.

The `Spooler` owns it and decides what goes to disk; the writer only writes, and tells the
spooler what came of each round (`appended`, `acked`, `failed`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from ._constants import SPOOL_CLOSE_TIMEOUT
from ._events import Entry
from ._spool import Spool, SpooledEvent, SpoolError

__all__ = ["SpoolWriter", "close_spool"]

logger = logging.getLogger("encharge_async")


class SpoolWriter:
    """Appends and acknowledges for one spool, in rounds, until stopped."""

    def __init__(
        self,
        *,
        appended: Callable[[list[Entry], tuple[SpooledEvent, ...]], None],
        acked: Callable[[list[str]], None],
        failed: Callable[[str], Awaitable[None]],
    ) -> None:
        # Told of each appended batch (with the events the spool refused), of each round of
        # acknowledged ids, and of a failed append (the spool is given up on).
        self._appended = appended
        self._acked = acked
        self._failed = failed
        self.pending: list[Entry] = []  # to append
        self.writing: list[Entry] = []  # the batch being appended right now
        self.acks: list[str] = []  # ended: to remove
        self.generation = 0  # append rounds done
        self.next_commit = anyio.Event()  # set when `pending` is on disk
        self.current_commit = anyio.Event()  # set when `writing` is on disk
        self._wakeup = anyio.Event()
        self._stopped = False

    @property
    def busy(self) -> bool:
        """Whether events wait to be appended, or are being appended."""
        return bool(self.pending or self.writing)

    def append(self, entry: Entry) -> None:
        self.pending.append(entry)
        self._wakeup.set()

    def ack(self, message_id: str) -> None:
        self.acks.append(message_id)
        self._wakeup.set()

    def commit_of(self, entry: Entry) -> anyio.Event:
        """Set once `entry` (appended) is on disk."""
        return self.current_commit if entry in self.writing else self.next_commit

    def stop(self) -> None:
        """The spool is given up on: nothing more is written, and nobody waits for a commit."""
        self._stopped = True
        self.pending.clear()
        self.current_commit.set()
        self.next_commit.set()
        self._wakeup.set()

    async def run(self, spool: Spool) -> None:
        while not self._stopped:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            while not self._stopped and (self.pending or self.acks):
                batch, self.current_commit = self.pending, self.next_commit
                self.pending, self.next_commit = [], anyio.Event()
                acks, self.acks = self.acks, []
                if batch:
                    self.writing = batch
                    try:
                        result = await spool.append(
                            [SpooledEvent.from_event(event) for event in batch]
                        )
                    except SpoolError as exc:
                        self.writing = []
                        await self._failed(f"writing failed: {exc}")
                        return
                    self.writing = []
                    self.generation += 1
                    self._appended(batch, result.refused)
                    self.current_commit.set()
                if acks:
                    try:
                        await spool.ack(acks)
                    except SpoolError as exc:  # they are only sent again next start
                        logger.error("acknowledging spooled events failed: %s", exc)
                    self._acked(acks)

    async def keep(self, spool: Spool, undelivered: list[Entry]) -> tuple[int, list[Entry]]:
        """At shutdown: write `undelivered` events, acknowledge what ended, close the spool.

        Returns how many events the spool holds, and the undelivered events it could not
        keep (refused, or the disk failed).
        """
        # A cancelled append may or may not have landed: appending again is harmless. The
        # events still being written are the newest: after what the spool holds. Those in
        # memory are older than anything the spool holds and has not handed back yet (the
        # feeder reads oldest first): in front, so that the next start keeps the order.
        newest = {event.message_id: event for event in [*self.writing, *self.pending]}
        in_memory = [event for event in undelivered if event.message_id not in newest]
        in_memory.sort(key=lambda event: event.seq)
        lost: list[Entry] = list(undelivered)
        held = 0
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(SPOOL_CLOSE_TIMEOUT):
                try:
                    refused: set[str] = set()
                    for batch, front in ((list(newest.values()), False), (in_memory, True)):
                        events = [SpooledEvent.from_event(e) for e in batch]
                        if events:
                            result = await spool.append(events, front=front)
                            refused.update(spooled.message_id for spooled in result.refused)
                    lost = [e for e in undelivered if e.message_id in refused]
                    if self.acks:
                        await spool.ack(self.acks)
                        self.acks = []
                    held = (await spool.stats()).count
                except SpoolError as exc:
                    logger.error("could not keep undelivered events in the spool: %s", exc)
            await close_spool(spool)
        return held, lost


async def close_spool(spool: Spool) -> None:
    """Close `spool` within its bound (shielded by the caller), logging a failure."""
    try:
        await spool.close(timeout=SPOOL_CLOSE_TIMEOUT)
    except SpoolError as exc:  # pragma: no cover - close() only logs in practice
        logger.error("closing the spool failed: %s", exc)
