"""The event model: the public, read-only `Event`, and the queue's `Entry` that carries it.

`Entry` subclasses `Event` so that the pipeline's scheduling state travels with the event
without a second object per event (and without a reference cycle between two); hooks
receive it as an `Event`, whose attributes are all read-only. Only the pipeline's modules
touch an entry's scheduling fields.
"""

from __future__ import annotations

import itertools
import os
import uuid
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

from . import _json
from ._ordering import ordering_keys
from ._text import quote

if TYPE_CHECKING:
    import anyio

__all__ = [
    "DELIVERED",
    "DROPPED",
    "FAILED",
    "FILTERED",
    "FROM_EARLIER",
    "IN_FLIGHT",
    "QUEUED",
    "SPOOLED",
    "Entry",
    "Event",
    "Waiter",
    "next_number",
]

# Entry states; ints keep the worker's comparisons cheap.
QUEUED: Final = 0
IN_FLIGHT: Final = 1
DELIVERED: Final = 2
FAILED: Final = 3
DROPPED: Final = 4
# Never queued: `before_send` filtered it out.
FILTERED: Final = 5

# Entry.spooled: not through the spool, through it (this process's), or read back from
# what an earlier process left in it.
SPOOLED: Final = 1
FROM_EARLIER: Final = 2


def _message_id_prefix() -> str:
    # 24 characters of a UUID4 (random per process), followed by a 12-digit number:
    # unique, UUID-shaped, and far cheaper than uuid4() per event.
    return str(uuid.uuid4())[:24]


_prefix = _message_id_prefix()
# Process-wide event numbers, the tail of generated message ids. From 10**11 the ids are
# 36 characters long (the shape of a UUID) for the first 9 * 10**11 events.
next_number = itertools.count(10**11).__next__


def _reset_message_ids_after_fork() -> None:
    # A new prefix keeps the child's ids apart from the parent's; the numbers may go on.
    global _prefix
    _prefix = _message_id_prefix()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(after_in_child=_reset_message_ids_after_fork)


class Event:
    """One event accepted by the client. Hooks receive it; every attribute is read-only.

    `message_id` (also the `Idempotency-Key` header), `name` (the event name, or "alias" /
    "group"), `body` (the JSON sent, bytes), `size` (len of `body`) and `attempts`
    (requests made for it so far).
    """

    __slots__ = ("_attempts", "_body", "_message_id", "_name")

    def __init__(
        self, name: str, body: bytes, message_id: str | None = None, attempts: int = 0
    ) -> None:
        self._name = name
        self._body = body
        # A generated id is kept as its number, spelled out when asked for.
        self._message_id: str | int = next_number() if message_id is None else message_id
        self._attempts = attempts

    @property
    def name(self) -> str:
        """The event name (`"identify"` for identify, `"alias"` / `"group"` for those)."""
        return self._name

    if TYPE_CHECKING:

        @property
        def body(self) -> bytes:
            """The JSON body sent to Encharge."""
            return self._body

    else:
        # A C-level getter: the pipeline reads it several times per event (docs/performance.md).
        body = property(attrgetter("_body"), doc="The JSON body sent to Encharge.")

    @property
    def size(self) -> int:
        """Bytes of `body`."""
        return len(self._body)

    @property
    def attempts(self) -> int:
        """Requests made for this event so far (by this process and, for an event read back
        from the spool, the earlier ones)."""
        return self._attempts

    @property
    def message_id(self) -> str:
        """The event's unique id, sent as the `Idempotency-Key` header on every attempt."""
        message_id = self._message_id
        if message_id.__class__ is int:
            return f"{_prefix}{message_id}"
        return message_id  # type: ignore[return-value]  # a str: mypy does not narrow __class__

    @property
    def ordering_keys(self) -> tuple[str, ...]:
        """The identifiers ordering this event (`u:<userId>`, `e:<email>`, `o:<type>:<id>`)."""
        return ordering_keys(self.payload)

    @property
    def payload(self) -> dict[str, Any]:
        """The event body decoded from JSON (a new dict on each access)."""
        result: dict[str, Any] = _json.loads(self._body)
        return result

    def __repr__(self) -> str:
        return f"<Event {quote(self._name)} message_id={self.message_id!r} size={self.size}>"


class Waiter:
    """A caller awaiting its event's outcome (`wait=True`): set when it is known."""

    __slots__ = ("done", "error")

    def __init__(self, done: anyio.Event) -> None:
        self.done = done
        self.error: Exception | None = None


class Entry(Event):
    """An event on its way through the pipeline, with the state that schedules it.

    `seq` is its place in the client's acceptance order (0 until accepted): flush() and the
    retry heap compare it. `lanes` are its ordering lanes (see `_ordering`), `waiting` how
    many of them it does not head yet. `deadline` bounds its retries in this process.
    """

    __slots__ = (
        "deadline",
        "first_attempt_at",
        "lanes",
        "retry_state",
        "seq",
        "spooled",
        "state",
        "waiter",
        "waiting",
    )

    def __init__(
        self,
        name: str,
        body: bytes,
        lanes: tuple[int, ...],
        message_id: str | None = None,
        attempts: int = 0,
    ) -> None:
        # Event.__init__, inlined: this runs on the caller's line for every event.
        self._name = name
        self._body = body
        self._message_id = next_number() if message_id is None else message_id
        self._attempts = attempts
        self.lanes = lanes
        self.seq = 0
        self.state = QUEUED
        self.waiter: Waiter | None = None
        self.spooled = 0  # SPOOLED, FROM_EARLIER

    # The rest of the scheduling state is set when the entry joins the ordering, in a
    # worker: the caller's line only pays for what the door needs.
    def admitted(self) -> None:
        """Called once, as the entry joins the per-person ordering (its lanes)."""
        self.waiting = 0
        self.deadline = 0.0
        self.first_attempt_at = 0.0
        self.retry_state: Any = None

    def begin_attempt(self, now: float, max_retry_time: float) -> bool:
        """Count a new request for this event; True when it is a retry.

        The retry budget starts at this process's first attempt, also for an event an
        earlier process had already tried (read back from the spool).
        """
        if self.first_attempt_at == 0.0:
            self.first_attempt_at = now
            self.deadline = now + max_retry_time
        self._attempts += 1
        return self._attempts > 1
