"""Adaptive concurrency: how many requests the workers may have in flight at once.

The Ingest API takes one event per request, so the number of requests in flight is the only
lever on throughput (Little's law: events/s = in flight / latency). No fixed number is right
at every latency, so the limit adapts between a floor and `max_concurrency` (the ceiling),
the way TCP's congestion window does (docs/design.md says why this scheme):

- time is cut into *rounds* of about one round trip: a round ends when a request sent
  after it began comes back;
- a round whose requests came back at about the minimum latency seen, with the limit
  used (at least half of it in flight at some point) and nothing refused, grows the limit:
  it doubles below the slow-start threshold, and grows by its square root above it;
- a refusal (429, 503) or a timeout, or a round whose average latency rose well above the
  minimum, multiplies the limit (or what was in flight, if less) by `ADAPTIVE_BACKOFF`
  and sets the slow-start threshold
  there; answers to requests sent before that decrease do not decrease it again.

The limiter is a plain state machine fed with times (`now`, when each request started),
so that its tests are deterministic; the dispatcher gives it the event loop's clock.
"""

from __future__ import annotations

import math
from collections import deque
from enum import Enum

import anyio

from ._constants import (
    ADAPTIVE_BACKOFF,
    ADAPTIVE_INITIAL_LIMIT,
    ADAPTIVE_LATENCY_SLACK,
    ADAPTIVE_LATENCY_TOLERANCE,
    ADAPTIVE_MIN_LATENCY_WINDOW,
    ADAPTIVE_MIN_LIMIT,
)

__all__ = ["ConcurrencyLimiter", "Signal"]


class Signal(Enum):
    """What an answer says about the endpoint's load."""

    OK = "ok"  # accepted: its latency is a sample
    OVERLOAD = "overload"  # 429, 503 or a timeout: back off
    NONE = "none"  # anything else (a network error, a 400): says nothing about load


class ConcurrencyLimiter:
    """Slots for requests in flight, `limit` of them, and the algorithm that sets `limit`."""

    def __init__(
        self,
        ceiling: int,
        *,
        floor: int = ADAPTIVE_MIN_LIMIT,
        initial: int = ADAPTIVE_INITIAL_LIMIT,
        backoff: float = ADAPTIVE_BACKOFF,
        tolerance: float = ADAPTIVE_LATENCY_TOLERANCE,
        slack: float = ADAPTIVE_LATENCY_SLACK,
        window: float = ADAPTIVE_MIN_LATENCY_WINDOW,
    ) -> None:
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self._limit = float(min(max(initial, self.floor), ceiling))
        self.limit = int(self._limit)
        self._threshold = float(ceiling)  # slow start below it
        self._backoff = backoff
        self._tolerance = tolerance
        self._slack = slack
        self._window = window
        self.in_flight = 0
        # Workers waiting for a slot, the most recent woken first (its connection is warm).
        self._waiters: deque[anyio.Event] = deque()
        # Requests started before this were sent under a limit already decreased for.
        self._recovery = -math.inf
        self._round_start = -math.inf
        self._round_sum = 0.0
        self._round_samples = 0
        self._round_peak = 0
        # The minimum latency: the smaller of this window's and the previous window's.
        self._window_end: float | None = None
        self._window_min = math.inf
        self._previous_min = math.inf

    @property
    def min_latency(self) -> float:
        """The smallest latency seen lately (inf before the first sample)."""
        return min(self._window_min, self._previous_min)

    # -- slots ----------------------------------------------------------------------------------

    def acquire(self) -> bool:
        """Take a slot if one is free."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        if self.in_flight > self._round_peak:
            self._round_peak = self.in_flight
        return True

    async def wait(self) -> None:
        """Wait until a slot may be free (the limit grew); callers then `acquire` again."""
        event = anyio.Event()
        self._waiters.append(event)
        await event.wait()

    def release(self) -> None:
        """Give back a slot that was not used (no work)."""
        self.in_flight -= 1

    def reset(self) -> None:
        """Forget slots and waiters (the workers are starting again); keep what was learnt."""
        self.in_flight = 0
        self._waiters.clear()

    def done(self, signal: Signal, started: float, now: float) -> bool:
        """A request started at `started` ended at `now` with `signal`; learn from it.

        Returns whether the caller keeps its slot for the next request (True while the
        limit allows it), else the slot is given back.
        """
        if signal is Signal.OK:
            self._sample(now - started, started, now)
        elif signal is Signal.OVERLOAD and started >= self._recovery:
            self._decrease(now)
        if self.in_flight > self.limit:
            self.in_flight -= 1
            return False
        return True

    # -- the algorithm --------------------------------------------------------------------------

    def _sample(self, latency: float, started: float, now: float) -> None:
        if self._window_end is None:
            self._window_end = now + self._window
        elif now >= self._window_end:
            self._previous_min = self._window_min
            self._window_min = math.inf
            self._window_end = now + self._window
        if latency < self._window_min:
            self._window_min = latency
        if started < self._recovery:
            return  # sent under the limit before the last decrease: not this round's
        self._round_sum += latency
        self._round_samples += 1
        if started >= self._round_start:
            self._end_round(now)

    def _end_round(self, now: float) -> None:
        average = self._round_sum / self._round_samples
        if average > min(self._window_min, self._previous_min) * self._tolerance + self._slack:
            self._decrease(now)
            return
        # At the ceiling (always, at a low max_concurrency) there is nothing to grow.
        if self._limit < self.ceiling and 2 * self._round_peak >= self.limit:
            limit = self._limit
            if limit < self._threshold:
                limit = min(2 * limit, max(self._threshold, limit + 1))
            else:
                limit += math.sqrt(limit)
            self._set(limit)
            self._wake()
        self._new_round(now)

    def _decrease(self, now: float) -> None:
        # From what was in flight, when that is below the limit (TCP's flight size): a
        # limit that had just grown was not what the endpoint refused.
        in_use = float(max(self._round_peak, self.in_flight))
        self._set(min(self._limit, in_use) * self._backoff)
        self._threshold = self._limit
        self._recovery = now
        self._new_round(now)

    def _new_round(self, now: float) -> None:
        self._round_start = now
        self._round_sum = 0.0
        self._round_samples = 0
        self._round_peak = self.in_flight

    def _set(self, limit: float) -> None:
        self._limit = min(max(limit, float(self.floor)), float(self.ceiling))
        self.limit = int(self._limit)

    def _wake(self) -> None:
        free = self.limit - self.in_flight
        waiters = self._waiters
        while free > 0 and waiters:
            waiters.pop().set()
            free -= 1
