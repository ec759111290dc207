"""Read-only snapshots of what the client has done: `Stats` and `FlushResult`."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ErrorInfo", "FlushResult", "Stats"]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The last failed request: its HTTP `status` (None for a network error or a timeout),
    a short `reason` (never the write key) and when it happened (`at`, `time.time()`)."""

    status: int | None
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters since the client was created (or since `os.fork()`, in a child process).

    `enqueued` counts every call that returned a message id (an event refused at the door
    by a full queue included); each one ends as `delivered`, `failed` or `dropped`, or is
    still `queued` (waiting, including between retries), `in_flight` or in the spool.
    `retried` counts retry attempts; `queued_bytes` is the serialised size of `queued`.
    `spooled` counts the events held by the spool (0 without one); those of this process
    that are not also in memory count in it and not in `queued`. `filtered` counts the
    events `before_send` filtered out (not sent, not in `enqueued`).
    `concurrency_limit` is how many requests may be in flight right now: it adapts between
    a floor and `max_concurrency` to the endpoint's latency and refusals (0 for a disabled
    client, which sends nothing).
    """

    enqueued: int
    delivered: int
    failed: int
    dropped: int
    retried: int
    queued: int
    in_flight: int
    queued_bytes: int
    spooled: int = 0
    filtered: int = 0
    last_error: ErrorInfo | None = None
    failing_since: float | None = None
    concurrency_limit: int = 0

    @property
    def failing(self) -> bool:
        """Whether requests to Encharge are failing right now."""
        return self.failing_since is not None


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What `flush()` or `aclose()` achieved for the events enqueued before it was called.

    `pending` is how many of those were still undelivered when it returned (a timeout);
    `complete` is True when none were left. For `aclose()`, `spooled` is how many
    undelivered events the spool keeps for the next start instead of dropping them.
    """

    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    pending: int = 0
    spooled: int = 0

    @property
    def complete(self) -> bool:
        return self.pending == 0
