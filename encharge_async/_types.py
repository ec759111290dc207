"""Type aliases of the public API."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

if TYPE_CHECKING:
    from tenacity import RetryCallState

    from ._events import Event
    from ._exceptions import DeliveryError

__all__ = [
    "BeforeSend",
    "DropReason",
    "OnDelivered",
    "OnDrop",
    "OnError",
    "Overflow",
    "RetryWait",
    "SpoolMode",
]

Overflow: TypeAlias = Literal["drop_newest", "drop_oldest", "block"]
SpoolMode: TypeAlias = Literal["overflow", "always"]


class DropReason(str, enum.Enum):
    """Why an event was dropped without being delivered."""

    QUEUE_FULL = "queue_full"
    """The queue was at its size or byte bound (see the `overflow` policy)."""
    SHUTDOWN = "shutdown"
    """The client closed and the event could not be delivered within `shutdown_timeout`
    (nor kept in the spool, when there is one)."""
    SPOOL_FULL = "spool_full"
    """The spool was at its byte bound and the event could not stay in memory either."""
    SPOOL_ERROR = "spool_error"
    """The spool failed (disk error) while holding the event's only copy."""
    EXPIRED = "expired"
    """The event waited in the spool for longer than its `spool_max_age`."""
    NOT_CLOSED = "not_closed"
    """The client was never closed: its event loop ended (`asyncio.run()` returning) and the
    event could not be delivered within `shutdown_timeout` on the way out."""


BeforeSend: TypeAlias = "Callable[[dict[str, Any]], dict[str, Any] | None]"
OnDelivered: TypeAlias = "Callable[[Event], object]"
OnError: TypeAlias = "Callable[[DeliveryError], object]"
OnDrop: TypeAlias = "Callable[[Event, DropReason], object]"
RetryWait: TypeAlias = "Callable[[RetryCallState], float]"
