"""The spool's reader side: reading stored events back into entries, oldest first.

`SpoolReader` keeps the feeder's place in the file (a cursor on the spool's insertion
order), tells which acknowledgements raced a read (a row read before its ack landed must
still be recognised as ours), validates each stored event like a new one, and reads back
the spilled events whose only copy is on disk when the spool is given up on.

The `Spooler` owns it and decides when to read and where entries go.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio

from ._builders import entry_from_wire
from ._constants import SPOOL_CLOSE_TIMEOUT, SPOOL_LOAD_PAGE
from ._events import Entry, Waiter
from ._exceptions import ValidationError
from ._spool import Spool, SpooledEvent, SpoolError

__all__ = ["OnDisk", "SpoolReader", "entry_of"]

logger = logging.getLogger("encharge_async")


@dataclass(slots=True)
class OnDisk:
    """A spilled event whose only copy is on disk: what memory keeps of it."""

    message_id: str
    seq: int
    waiter: Waiter | None


class SpoolReader:
    """Reads one spool forward, page by page, and reads spilled events back on demand."""

    def __init__(self) -> None:
        self.cursor: int | None = None  # the last row read
        self._loading = False
        self._acked_while_loading: set[str] = set()

    @property
    def loading(self) -> bool:
        return self._loading

    def acked_during_read(self, acks: list[str]) -> bool:
        """Remember `acks` if a read is under way (it may still return them); False when
        none is, and the caller may forget them at once."""
        if self._loading:
            self._acked_while_loading.update(acks)
        return self._loading

    async def next_page(self, spool: Spool, limit: int) -> tuple[list[SpooledEvent], set[str]]:
        """The next `limit` rows at most, and the ids acknowledged while they were read."""
        self._loading = True
        try:
            page = await spool.load(limit=min(limit, SPOOL_LOAD_PAGE), after=self.cursor)
        finally:
            self._loading = False
        acked, self._acked_while_loading = self._acked_while_loading, set()
        if page:
            self.cursor = page[-1].seq
        return page, acked

    @staticmethod
    async def read_back(spool: Spool, on_disk: dict[str, OnDisk]) -> dict[str, Entry]:
        """The entries of these spilled events, read from the whole file within a bound;
        those it cannot read (a failing disk, a damaged row) are missing."""
        found: dict[str, Entry] = {}
        after: int | None = None
        try:
            with anyio.fail_after(SPOOL_CLOSE_TIMEOUT):
                while len(found) < len(on_disk):
                    page = await spool.load(limit=SPOOL_LOAD_PAGE, after=after)
                    if not page:
                        break
                    for spooled in page:
                        after = spooled.seq
                        stub = on_disk.get(spooled.message_id)
                        entry = entry_of(spooled) if stub is not None else None
                        if stub is not None and entry is not None:
                            entry.seq, entry.waiter = stub.seq, stub.waiter
                            found[stub.message_id] = entry
        except (SpoolError, TimeoutError) as exc:
            logger.error("reading spilled events back from the spool failed: %s", exc)
        return found


def entry_of(spooled: SpooledEvent) -> Entry | None:
    """The entry of a stored event, validated like a new one (None when it is not valid)."""
    try:
        return entry_from_wire(
            spooled.name, spooled.body, spooled.message_id, max(0, spooled.attempts)
        )
    except ValidationError:
        return None
