"""What the emulator received: accepted events, rejected requests, duplicates."""

from __future__ import annotations

import bisect
import copy
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .._constants import (
    EMULATOR_MAX_EVENT_BYTES,
    EMULATOR_MAX_EVENTS,
    EMULATOR_MAX_REJECTED,
    EMULATOR_REJECTED_BODY_BYTES,
)

__all__ = ["BoundedRecords", "EventRecord", "RecordStore", "RejectedRecord", "Stats"]


@dataclass(frozen=True)
class EventRecord:
    """One accepted event, as it arrived.

    `seq` numbers every request the ingest endpoint handled (accepted or not), so
    records of both kinds can be put back in arrival order. `duplicate` is true when
    an accepted event with the same `Idempotency-Key` came before. `fault` names an
    injected fault that hid the answer from the client ("drop_after", "slow_body").
    """

    seq: int
    body: dict[str, Any]
    idempotency_key: str | None
    user_agent: str | None
    received_at: float
    received_monotonic: float
    duplicate: bool = False
    fault: str | None = None

    @property
    def name(self) -> str | None:
        """The event's `name`, if it is a string."""
        name = self.body.get("name")
        return name if isinstance(name, str) else None

    @property
    def type(self) -> str | None:
        """The event's `type` ("alias", "group"), if any."""
        kind = self.body.get("type")
        return kind if isinstance(kind, str) else None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy."""
        return {
            "seq": self.seq,
            "body": copy.deepcopy(self.body),
            "idempotency_key": self.idempotency_key,
            "user_agent": self.user_agent,
            "received_at": self.received_at,
            "received_monotonic": self.received_monotonic,
            "duplicate": self.duplicate,
            "fault": self.fault,
        }


@dataclass(frozen=True)
class RejectedRecord:
    """One request to the ingest endpoint that was not accepted.

    `status` is the status answered, or None when the connection was dropped before
    any answer. `fault` names the injected fault behind it, if any. `body` is the
    parsed JSON body when it parsed, else None; a body longer than the kept prefix
    (1 KiB) is not parsed: `body` is then the prefix as text (undecodable bytes
    replaced) and `body_truncated` is true. `body_size` is the size received, in bytes.
    `path`, `user_agent` and `idempotency_key` are cut to 256 characters.
    """

    seq: int
    method: str
    path: str
    status: int | None
    error: str
    body: Any
    idempotency_key: str | None
    user_agent: str | None
    received_at: float
    received_monotonic: float
    fault: str | None = None
    body_size: int = 0
    body_truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy."""
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "error": self.error,
            "body": copy.deepcopy(self.body),
            "idempotency_key": self.idempotency_key,
            "user_agent": self.user_agent,
            "received_at": self.received_at,
            "received_monotonic": self.received_monotonic,
            "fault": self.fault,
            "body_size": self.body_size,
            "body_truncated": self.body_truncated,
        }


@dataclass(frozen=True)
class Stats:
    """Counts since start (or the last reset).

    `accepted` and `rejected` count every request, also those whose records were
    dropped since to keep memory bounded: `events_dropped` and `rejected_dropped` say
    how many (the oldest go first).
    """

    accepted: int
    rejected: int
    duplicates: int
    faults: dict[str, int]
    events_dropped: int = 0
    rejected_dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy."""
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "faults": dict(self.faults),
            "events_dropped": self.events_dropped,
            "rejected_dropped": self.rejected_dropped,
        }


_R = TypeVar("_R", EventRecord, RejectedRecord)


class BoundedRecords(Generic[_R]):
    """Records in arrival order, at most `max_count` of them and `max_bytes` of bodies:
    past either bound, the oldest go (and are counted in `dropped`)."""

    def __init__(self, max_count: int, max_bytes: int | None = None) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.records: deque[_R] = deque()
        self._sizes: deque[int] = deque()
        self.bytes = 0
        self.total = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: _R, size: int) -> None:
        self.records.append(record)
        self._sizes.append(size)
        self.bytes += size
        self.total += 1
        while len(self.records) > self.max_count or (
            self.max_bytes is not None and self.bytes > self.max_bytes and len(self.records) > 1
        ):
            self.records.popleft()
            self.bytes -= self._sizes.popleft()
            self.dropped += 1

    def page(self, after: int, limit: int) -> list[_R]:
        """Up to `limit` records with seq > `after`, oldest first."""
        start = bisect.bisect_right(self.records, after, key=_seq)
        return [self.records[i] for i in range(start, min(start + limit, len(self.records)))]

    def clear(self) -> None:
        self.records.clear()
        self._sizes.clear()
        self.bytes = self.total = self.dropped = 0


def _seq(record: EventRecord | RejectedRecord) -> int:
    return record.seq


@dataclass
class RecordStore:
    """Accepted and rejected records in arrival order, bounded, with duplicate tracking."""

    max_events: int = EMULATOR_MAX_EVENTS
    max_event_bytes: int = EMULATOR_MAX_EVENT_BYTES
    max_rejected: int = EMULATOR_MAX_REJECTED
    events: BoundedRecords[EventRecord] = field(init=False)
    rejected: BoundedRecords[RejectedRecord] = field(init=False)
    duplicates: Counter[str] = field(default_factory=Counter)
    _seen_keys: set[str] = field(default_factory=set)
    _seq: int = 0

    def __post_init__(self) -> None:
        self.events = BoundedRecords(self.max_events, self.max_event_bytes)
        # Rejected records are bounded in count; each keeps a bounded prefix of its body.
        self.rejected = BoundedRecords(self.max_rejected)

    def next_seq(self) -> int:
        """Return the next arrival number (1, 2, ...)."""
        self._seq += 1
        return self._seq

    def is_duplicate(self, idempotency_key: str | None) -> bool:
        """Whether an event with this key was already accepted."""
        return idempotency_key is not None and idempotency_key in self._seen_keys

    def accept(self, record: EventRecord, size: int) -> None:
        """Keep an accepted event (`size`: its body's bytes), counting it if it is a duplicate."""
        self.events.add(record, size)
        if record.idempotency_key is not None:
            if record.duplicate:
                self.duplicates[record.idempotency_key] += 1
            self._seen_keys.add(record.idempotency_key)

    def reject(self, record: RejectedRecord) -> None:
        """Keep a rejected request."""
        self.rejected.add(record, min(record.body_size, EMULATOR_REJECTED_BODY_BYTES))

    def clear(self) -> None:
        """Forget everything and restart numbering at 1."""
        self.events.clear()
        self.rejected.clear()
        self.duplicates.clear()
        self._seen_keys.clear()
        self._seq = 0
