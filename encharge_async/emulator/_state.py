"""Everything one emulator knows, shared by its HTTP app and its Python API."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterable

from ._faults import FaultInjector, Faults
from ._model import PeopleModel
from ._records import EventRecord, RecordStore, RejectedRecord, Stats


class EmulatorState:
    """Write keys, records, the people model, fault dice and event waiters."""

    def __init__(
        self,
        write_keys: Iterable[str],
        *,
        max_body_bytes: int,
        faults: Faults,
        seed: int | None,
    ) -> None:
        keys = tuple(write_keys)
        if not keys:
            raise ValueError("at least one write key is needed")
        if not all(isinstance(key, str) and key for key in keys):
            raise ValueError("write keys must be non-empty strings")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise TypeError("max_body_bytes must be an integer")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        self._write_keys = tuple(key.encode("utf-8") for key in keys)
        self.max_body_bytes = max_body_bytes
        self.store = RecordStore()
        self.model = PeopleModel()
        self.injector = FaultInjector(faults, seed)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __repr__(self) -> str:  # never show the write keys
        return f"<EmulatorState events={len(self.store.events)}>"

    def check_write_key(self, token: str | None) -> str | None:
        """Return why `token` is refused ("Missing ..." / "Invalid ..."), or None."""
        if not token:
            return "Missing Encharge write key."
        given = token.encode("latin-1")
        # Compare with every key, so the time taken does not say which one nearly matched.
        matches = [hmac.compare_digest(given, key) for key in self._write_keys]
        return None if any(matches) else "Invalid Encharge write key."

    def accept(self, record: EventRecord) -> None:
        """Keep an accepted event, apply it to the people model and wake waiters."""
        self.store.accept(record)
        self.model.apply(record.body, record.seq)
        count = len(self.store.events)
        for wanted, future in self._waiters:
            if count >= wanted and not future.done():
                future.set_result(None)

    def reject(self, record: RejectedRecord) -> None:
        """Keep a rejected request."""
        self.store.reject(record)

    def stats(self) -> Stats:
        """Return the counts so far."""
        return Stats(
            accepted=len(self.store.events),
            rejected=len(self.store.rejected),
            duplicates=sum(self.store.duplicates.values()),
            faults=self.injector.counts(),
        )

    def reset(self) -> None:
        """Forget records, people, objects and fault counts; re-seed the fault dice."""
        self.store.clear()
        self.model.clear()
        self.injector.reset()

    async def wait_for_events(self, count: int, timeout: float) -> list[EventRecord]:
        """Wait until `count` events were accepted; return them all.

        Raises TimeoutError if fewer arrived within `timeout` seconds.
        """
        if len(self.store.events) < count:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (count, future)
            self._waiters.append(entry)
            try:
                await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                got = len(self.store.events)
                raise TimeoutError(
                    f"{got} of {count} events were accepted within {timeout} s"
                ) from None
            finally:
                self._waiters.remove(entry)
        return list(self.store.events)
