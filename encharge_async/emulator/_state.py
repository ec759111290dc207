"""Everything one emulator knows, shared by its HTTP app and its Python API."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterable

from .._constants import EMULATOR_MAX_EVENT_BYTES, EMULATOR_MAX_EVENTS, EMULATOR_MAX_REJECTED
from ._faults import FaultInjector, Faults
from ._model import PeopleModel
from ._records import EventRecord, RecordStore, RejectedRecord, Stats

__all__ = ["EmulatorState"]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer")
    if value < 1:
        raise ValueError(f"{name} must be >= 1")
    return value


class EmulatorState:
    """Write keys, records, the people model, fault dice and event waiters."""

    def __init__(
        self,
        write_keys: Iterable[str],
        *,
        max_body_bytes: int,
        faults: Faults,
        seed: int | None,
        max_events: int = EMULATOR_MAX_EVENTS,
        max_event_bytes: int = EMULATOR_MAX_EVENT_BYTES,
        max_rejected: int = EMULATOR_MAX_REJECTED,
        inspect_token: str | None = None,
    ) -> None:
        keys = tuple(write_keys)
        if not keys:
            raise ValueError("at least one write key is needed")
        if not all(isinstance(key, str) and key for key in keys):
            raise ValueError("write keys must be non-empty strings")
        self.max_body_bytes = _positive_int("max_body_bytes", max_body_bytes)
        if inspect_token is not None and (not isinstance(inspect_token, str) or not inspect_token):
            raise ValueError("inspect_token must be a non-empty string (or None)")
        self._write_keys = tuple(key.encode("utf-8") for key in keys)
        self._inspect_token = None if inspect_token is None else inspect_token.encode("utf-8")
        #: Host names (lower-case, no port) requests may carry; None: any (set at start).
        self.allowed_hosts: frozenset[str] | None = None
        self.store = RecordStore(
            max_events=_positive_int("max_events", max_events),
            max_event_bytes=_positive_int("max_event_bytes", max_event_bytes),
            max_rejected=_positive_int("max_rejected", max_rejected),
        )
        self.model = PeopleModel()
        self.injector = FaultInjector(faults, seed)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __repr__(self) -> str:  # never show the write keys or the inspection token
        return f"<EmulatorState events={len(self.store.events)}>"

    @property
    def inspect_token_required(self) -> bool:
        """Whether /_emulator/ needs `Authorization: Bearer <token>`."""
        return self._inspect_token is not None

    def check_inspect_token(self, authorization: str | None) -> bool:
        """Whether `authorization` (the header) carries the inspection token, if one is set."""
        if self._inspect_token is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode("latin-1") if scheme.lower() == "bearer" else b""
        return hmac.compare_digest(given, self._inspect_token)

    def check_write_key(self, token: str | None) -> str | None:
        """Return why `token` is refused ("Missing ..." / "Invalid ..."), or None."""
        if not token:
            return "Missing Encharge write key."
        given = token.encode("latin-1")
        # Compare with every key, so the time taken does not say which one nearly matched.
        matches = [hmac.compare_digest(given, key) for key in self._write_keys]
        return None if any(matches) else "Invalid Encharge write key."

    def accept(self, record: EventRecord, size: int) -> None:
        """Keep an accepted event (`size`: its body's bytes), apply it to the people model
        and wake waiters."""
        self.store.accept(record, size)
        self.model.apply(record.body, record.seq)
        count = self.store.events.total
        for wanted, future in self._waiters:
            if count >= wanted and not future.done():
                future.set_result(None)

    def reject(self, record: RejectedRecord) -> None:
        """Keep a rejected request."""
        self.store.reject(record)

    def stats(self) -> Stats:
        """Return the counts so far."""
        return Stats(
            accepted=self.store.events.total,
            rejected=self.store.rejected.total,
            duplicates=sum(self.store.duplicates.values()),
            faults=self.injector.counts(),
            events_dropped=self.store.events.dropped,
            rejected_dropped=self.store.rejected.dropped,
        )

    def reset(self) -> None:
        """Forget records, people, objects and fault counts; re-seed the fault dice."""
        self.store.clear()
        self.model.clear()
        self.injector.reset()

    async def wait_for_events(self, count: int, timeout: float) -> list[EventRecord]:
        """Wait until `count` events were accepted; return those kept.

        Raises TimeoutError if fewer arrived within `timeout` seconds.
        """
        if self.store.events.total < count:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (count, future)
            self._waiters.append(entry)
            try:
                await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                got = self.store.events.total
                raise TimeoutError(
                    f"{got} of {count} events were accepted within {timeout} s"
                ) from None
            finally:
                self._waiters.remove(entry)
        return list(self.store.events.records)
