"""The retry rules, in one place: which failures are retried, after how long, and when to stop.

`decide` turns one failed attempt into `Retry(delay)` or `GiveUp(reason)`: statuses in
RETRYABLE_STATUS_CODES and network errors are retried, with the server's Retry-After when it
sent one, else tenacity's backoff (injectable, so tests never sleep); a 429 or 503 with
Retry-After pauses every sender (without one, the adaptive concurrency limit backs off).
A retry budget (`max_retries`, `max_retry_time`) bounds it, except while a usable spool
can keep the event.
"""

from __future__ import annotations

import email.utils
import enum
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tenacity

from ._constants import BACKOFF_INITIAL, BACKOFF_MAX, RETRY_AFTER_MAX, RETRYABLE_STATUS_CODES
from ._events import Entry
from ._types import RetryWait

__all__ = [
    "Attempt",
    "Failure",
    "GiveUp",
    "Retry",
    "RetryPolicy",
    "default_wait",
    "parse_retry_after",
]


class Failure(enum.Enum):
    """How a request failed without an HTTP answer."""

    NETWORK = "network"  # connect, read or write failed, or the server broke the protocol
    TIMEOUT = "timeout"
    REFUSED = "refused"  # the client's own configuration forbids it (plain http off loopback)
    BUG = "bug"  # the transport raised something else: not worth retrying


@dataclass(slots=True)
class Attempt:
    """What one request for an event came to: a status, or a failure without one."""

    status: int | None = None
    failure: Failure | None = None
    reason: str = ""
    body: str = ""
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def overloaded(self) -> bool:
        """Whether the answer says the endpoint is overloaded (429, 503, no answer in time):
        the concurrency limit backs off."""
        return self.status == 429 or self.status == 503 or self.failure is Failure.TIMEOUT


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float
    pause_all: bool  # the server asked everyone to slow down


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


def default_wait() -> RetryWait:
    """Exponential backoff with full jitter: uniform(0, min(BACKOFF_MAX, 0.5 s * 2**n))."""
    return tenacity.wait_random_exponential(multiplier=BACKOFF_INITIAL, max=BACKOFF_MAX)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, clamped to [0, RETRY_AFTER_MAX], or None.

    Reads `retry-after-ms`, then `retry-after` as seconds or as an HTTP date.
    """
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return _clamp(float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return _clamp(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return _clamp(when.timestamp() - (time.time() if now is None else now))


def _clamp(seconds: float) -> float | None:
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


class _NoRetrying(tenacity.BaseRetrying):
    """The retry object tenacity's wait strategies are handed; our worker owns the loop."""

    def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError


class RetryPolicy:
    """Decides whether a failed event is tried again, and after how long.

    The worker does not sleep inside a tenacity loop: a sleeping retry must not hold a
    delivery slot, so the event is parked and the slot goes to someone else. tenacity's wait
    strategy (injectable, so tests never sleep) gives the backoff.
    """

    def __init__(self, *, wait: RetryWait, max_retries: int, max_retry_time: float) -> None:
        self.wait = wait
        self.max_retries = max_retries
        self.max_retry_time = max_retry_time
        self._retrying = _NoRetrying()

    def decide(
        self, entry: Entry, attempt: Attempt, now: float, *, keep_trying: bool
    ) -> Retry | GiveUp:
        """What to do after a failed attempt of `entry`.

        `keep_trying`: a usable spool can keep the event, so a retryable failure is never
        given up on (the budget does not apply); only Encharge's refusals fail it.
        """
        if attempt.status is not None:
            retryable = attempt.status in RETRYABLE_STATUS_CODES
        else:
            retryable = attempt.failure is Failure.NETWORK or attempt.failure is Failure.TIMEOUT
        if not retryable:
            return GiveUp(attempt.reason)
        # A 429 without Retry-After is the concurrency limiter's to answer (it backs off):
        # pausing every sender as well cost a server capped at N in flight half its rate.
        pause_all = attempt.retry_after is not None and attempt.status in (429, 503)
        delay = self._backoff(entry, attempt.retry_after)
        if not keep_trying:
            exhausted = self._exhausted(entry, now + delay)
            if exhausted:
                return GiveUp(f"{attempt.reason}; {exhausted}" if attempt.reason else exhausted)
        return Retry(delay, pause_all)

    def _exhausted(self, entry: Entry, due: float) -> str:
        if entry.attempts > self.max_retries:
            return f"gave up after {entry.attempts} attempts (max_retries={self.max_retries})"
        if due > entry.deadline:
            return (
                f"gave up after {entry.attempts} attempts: the next one would be past "
                f"max_retry_time={self.max_retry_time:g}s"
            )
        return ""

    def _backoff(self, entry: Entry, retry_after: float | None) -> float:
        """The wait before the next attempt, ignoring the retry budget."""
        if retry_after is not None:
            return retry_after  # the server's Retry-After beats our own guess
        state = entry.retry_state
        if state is None:
            state = entry.retry_state = tenacity.RetryCallState(self._retrying, None, (), {})
        state.attempt_number = entry.attempts
        return max(0.0, float(self.wait(state)))
