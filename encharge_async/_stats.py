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

    Each event the client took counts in `enqueued`, and at every moment in exactly one of
    `delivered`, `failed`, `dropped` (its outcome), `queued` (waiting, including between
    retries), `in_flight` or `spooled`:
    `enqueued == delivered + failed + dropped + queued + in_flight + spooled`.

    `enqueued` counts every call that returned a message id (an event refused at the door
    by a full queue included) and, with a spool, the events an earlier process left in it,
    from when the client opens the spool (those that expired there count as `dropped`).
    `spooled` counts the events whose only live copy
    is the spool: spilled to disk and not in memory (a full queue, an outage), kept there
    at shutdown, or left by an earlier process and not read back yet (0 without a spool).
    An event both in memory and on disk (with `spool_mode="always"`, each event that is
    not spilled) counts where its memory copy is, in `queued` or `in_flight`. A spooled
    event that cannot be read back (a damaged file) counts as `failed`, without an
    `on_error` call.
    `retried` counts retry attempts; `queued_bytes` is the serialised size of `queued`.
    `filtered` counts the events `before_send` filtered out (not sent, not in `enqueued`).
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
