"""The exceptions raised by encharge_async.

Every exception derives from `EnchargeError`, and each also subclasses the builtin that
matches its meaning, so `except ValueError` keeps working for bad input:

```
EnchargeError
├── ConfigurationError (ValueError)    bad constructor arguments or environment
├── ValidationError (ValueError)       an event that cannot be sent, raised at the caller's line
├── ClientClosedError (RuntimeError)   the client was closed (or is closing)
├── EventLoopError (RuntimeError)      the client was used from a second event loop
├── QueueFullError                     no room in the queue and the caller may not wait
├── DeliveryError                      Encharge refused the event for good, or it was dropped
└── SpoolError (RuntimeError)          the durable spool failed (disk, corrupt file, ...)
    └── SpoolLockedError               another process holds the spool file
```

`SpoolError` and `SpoolLockedError` live in the spool's own module and are exported from
`encharge_async` like the others.

No exception message ever contains the write key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._text import quote

if TYPE_CHECKING:
    from ._events import Event

__all__ = [
    "ClientClosedError",
    "ConfigurationError",
    "DeliveryError",
    "EnchargeError",
    "EventLoopError",
    "QueueFullError",
    "ValidationError",
]


class EnchargeError(Exception):
    """Base class of every error raised by encharge_async."""


class ConfigurationError(EnchargeError, ValueError):
    """The client was given an unusable configuration (missing key, bad endpoint, bad size)."""


class ValidationError(EnchargeError, ValueError):
    """An event is invalid; the message names the offending field."""


class ClientClosedError(EnchargeError, RuntimeError):
    """The client is closed or closing and accepts no more events."""


class EventLoopError(EnchargeError, RuntimeError):
    """The client was used from an event loop other than the one it runs on."""


class QueueFullError(EnchargeError):
    """The queue had no room, and waiting was not possible or timed out."""


class DeliveryError(EnchargeError):
    """An event was not delivered: a permanent rejection, retries exhausted, or dropped.

    Attributes:
        message_id: the event's message id (also its idempotency key).
        status: the last HTTP status received, or None when no response was received.
        body: the start of the last response body (may be empty).
        reason: a short description of why delivery failed.
        attempts: how many requests were made for this event.
        event: the event itself, when known.
    """

    def __init__(
        self,
        reason: str,
        *,
        message_id: str,
        status: int | None = None,
        body: str = "",
        attempts: int = 0,
        event: Event | None = None,
    ) -> None:
        self.reason = reason
        self.message_id = message_id
        self.status = status
        self.body = body
        self.attempts = attempts
        self.event = event
        name = f" {quote(event.name)}" if event is not None else ""
        detail = f"HTTP {status}: {reason}" if status is not None else reason
        if body:
            detail = f"{detail}: {body}"
        super().__init__(f"event{name} (message id {message_id}) was not delivered: {detail}")

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments need help to survive pickling (multiprocessing, Celery).
        return (
            _rebuild_delivery_error,
            (self.reason, self.message_id, self.status, self.body, self.attempts),
        )


def _rebuild_delivery_error(
    reason: str, message_id: str, status: int | None, body: str, attempts: int
) -> DeliveryError:
    return DeliveryError(reason, message_id=message_id, status=status, body=body, attempts=attempts)
