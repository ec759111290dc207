"""What the emulator received: accepted events, rejected requests, duplicates."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


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
    parsed JSON body when it parsed, else None.
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
        }


@dataclass(frozen=True)
class Stats:
    """Counts since start (or the last reset)."""

    accepted: int
    rejected: int
    duplicates: int
    faults: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy."""
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "faults": dict(self.faults),
        }


@dataclass
class RecordStore:
    """Accepted and rejected records in arrival order, with duplicate tracking."""

    events: list[EventRecord] = field(default_factory=list)
    rejected: list[RejectedRecord] = field(default_factory=list)
    duplicates: Counter[str] = field(default_factory=Counter)
    _seen_keys: set[str] = field(default_factory=set)
    _seq: int = 0

    def next_seq(self) -> int:
        """Return the next arrival number (1, 2, ...)."""
        self._seq += 1
        return self._seq

    def is_duplicate(self, idempotency_key: str | None) -> bool:
        """Whether an event with this key was already accepted."""
        return idempotency_key is not None and idempotency_key in self._seen_keys

    def accept(self, record: EventRecord) -> None:
        """Keep an accepted event, counting it if it is a duplicate."""
        self.events.append(record)
        if record.idempotency_key is not None:
            if record.duplicate:
                self.duplicates[record.idempotency_key] += 1
            self._seen_keys.add(record.idempotency_key)

    def reject(self, record: RejectedRecord) -> None:
        """Keep a rejected request."""
        self.rejected.append(record)

    def clear(self) -> None:
        """Forget everything and restart numbering at 1."""
        self.events.clear()
        self.rejected.clear()
        self.duplicates.clear()
        self._seen_keys.clear()
        self._seq = 0
