"""When to retry and how long to wait: backoff from tenacity, Retry-After from the server."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any

import tenacity

from ._constants import BACKOFF_INITIAL, BACKOFF_MAX, RETRY_AFTER_MAX
from ._events import Event
from ._types import RetryWait

__all__ = ["RetryPolicy", "default_wait", "parse_retry_after"]


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

    def backoff(self, event: Event, retry_after: float | None) -> float:
        """The wait before the next attempt, ignoring the retry budget."""
        if retry_after is not None:
            return retry_after  # the server's Retry-After beats our own guess
        state = getattr(event, "_retry_state", None)
        if state is None:
            state = event._retry_state = tenacity.RetryCallState(self._retrying, None, (), {})
        state.attempt_number = event.attempts
        return max(0.0, float(self.wait(state)))

    def next_delay(self, event: Event, now: float, retry_after: float | None) -> float | str:
        """The delay before the next attempt of `event`, or why it gets no more attempts."""
        if event.attempts > self.max_retries:
            return f"gave up after {event.attempts} attempts (max_retries={self.max_retries})"
        delay = self.backoff(event, retry_after)
        if now + delay > event._deadline:
            return (
                f"gave up after {event.attempts} attempts: the next one would be past "
                f"max_retry_time={self.max_retry_time:g}s"
            )
        return delay
