"""The adaptive concurrency limiter's algorithm, fed synthetic samples (no clock, no network).

A `Pace` drives it like the workers do: it fills the limit (or a given demand) with
requests, then brings them back after a latency, one round trip at a time.
"""

from __future__ import annotations

import anyio
import pytest

from encharge_async._limiter import ConcurrencyLimiter, Signal


class Pace:
    """Rounds of requests through `limiter`: at most `demand` in flight, each `latency` long."""

    def __init__(self, limiter: ConcurrencyLimiter) -> None:
        self.limiter = limiter
        self.now = 0.0
        self.sent = 0
        self.refused = 0

    def round(
        self, latency: float, demand: int | None = None, refuse_above: int | None = None
    ) -> int:
        """Send as many requests as the limit (and demand) allows, all at `now`; bring them
        back after `latency`. Requests beyond `refuse_above` in flight are refused (429)."""
        limiter = self.limiter
        started = self.now
        slots = 0
        while (demand is None or slots < demand) and limiter.acquire():
            slots += 1
        self.sent += slots
        self.now += latency
        for i in range(slots):
            refused = refuse_above is not None and i >= refuse_above
            self.refused += refused
            limiter.done(Signal.OVERLOAD if refused else Signal.OK, started, self.now)
        # The workers that kept their slots find no more work in this model: give them back.
        limiter.in_flight = 0
        return slots


def test_starts_at_the_former_default_and_stays_within_bounds() -> None:
    assert ConcurrencyLimiter(256).limit == 16
    assert ConcurrencyLimiter(8).limit == 8  # capped by the ceiling
    assert ConcurrencyLimiter(1).limit == ConcurrencyLimiter(1).floor == 1
    limiter = ConcurrencyLimiter(64)
    pace = Pace(limiter)
    for _ in range(20):
        pace.round(0.1)
    assert limiter.limit == 64  # never above the ceiling
    for _ in range(20):
        pace.round(0.1, refuse_above=0)
    assert limiter.limit == limiter.floor == 4  # never below the floor


def test_slow_start_doubles_each_round_trip_while_latency_stays_low() -> None:
    limiter = ConcurrencyLimiter(256)
    pace = Pace(limiter)
    limits = []
    for _ in range(6):
        pace.round(0.1)
        limits.append(limiter.limit)
    # Each round trip with the limit used doubles it, up to the ceiling.
    assert limits == [32, 64, 128, 256, 256, 256]


def test_an_unused_limit_does_not_grow() -> None:
    limiter = ConcurrencyLimiter(256)
    pace = Pace(limiter)
    for _ in range(10):
        pace.round(0.1, demand=3)  # light traffic: 3 in flight, the limit is 16
    assert limiter.limit == 16
    pace.round(0.1, demand=8)  # half the limit used: it may grow
    pace.round(0.1, demand=8)
    assert limiter.limit == 32


def test_a_refusal_backs_off_multiplicatively_once_per_round_trip() -> None:
    limiter = ConcurrencyLimiter(256)
    pace = Pace(limiter)
    pace.round(0.1)
    assert limiter.limit == 32
    pace.round(0.1, refuse_above=24)  # 8 refusals in one round trip: one decrease
    assert limiter.limit == int(32 * 0.7)
    # Above the slow-start threshold now: it grows by its square root per round trip.
    before = limiter.limit
    pace.round(0.1)
    assert before < limiter.limit <= before + int(before**0.5) + 1


def test_against_a_concurrency_cap_few_requests_are_refused() -> None:
    limiter = ConcurrencyLimiter(256)
    pace = Pace(limiter)
    for _ in range(200):
        pace.round(0.1, refuse_above=24)
    assert pace.refused < pace.sent / 10
    assert 4 <= limiter.limit <= 40
    # Most of the cap is used: the throughput stays near what the server allows.
    assert pace.sent - pace.refused > 0.6 * 24 * 200


def test_a_latency_rise_backs_off_and_a_lasting_one_is_learnt() -> None:
    limiter = ConcurrencyLimiter(256)
    pace = Pace(limiter)
    for _ in range(3):
        pace.round(0.1)
    assert limiter.limit == 128
    # The server queues: 5x the minimum. A round is judged when the next one begins, so
    # the limit still grew once (to 256, all used) before the rise was seen.
    pace.round(0.5)
    pace.round(0.5)
    assert limiter.limit == int(256 * 0.7)
    # A lasting change (a new route): the minimum is forgotten after one or two windows,
    # and the limit grows again at the new latency.
    for _ in range(100):
        pace.round(0.5)
    assert limiter.min_latency == pytest.approx(0.5)
    assert limiter.limit == 256


def test_small_latency_jitter_is_not_a_rise() -> None:
    limiter = ConcurrencyLimiter(256)
    pace = Pace(limiter)
    for i in range(20):
        pace.round(0.100 + 0.004 * (i % 3))  # the event loop's scheduling delay
    assert limiter.limit == 256


def test_timeouts_back_off_but_other_failures_say_nothing() -> None:
    limiter = ConcurrencyLimiter(256)
    for _ in range(16):
        assert limiter.acquire()
    assert not limiter.acquire()
    limiter.done(Signal.NONE, 0.0, 0.1)  # a 400, a network error: no sample
    assert limiter.limit == 16
    limiter.done(Signal.OVERLOAD, 0.0, 10.0)  # a timeout
    assert limiter.limit == 11
    # Answers to requests sent before the decrease do not decrease it again.
    limiter.done(Signal.OVERLOAD, 0.0, 10.0)
    assert limiter.limit == 11


def test_a_worker_over_the_limit_gives_its_slot_back() -> None:
    limiter = ConcurrencyLimiter(256)
    for _ in range(16):
        limiter.acquire()
    kept = [limiter.done(Signal.OVERLOAD, 0.0, 1.0) for _ in range(16)]
    assert kept.count(True) == limiter.limit == 11
    assert limiter.in_flight == 11


@pytest.mark.anyio
async def test_waiters_are_woken_when_the_limit_grows_most_recent_first() -> None:
    limiter = ConcurrencyLimiter(256, initial=4)
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await limiter.wait()
        woken.append(n)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            assert limiter.acquire()
        for n in range(6):
            tg.start_soon(waiter, n)
            await anyio.wait_all_tasks_blocked()
        # A round trip at low latency with the limit used: 4 -> 8 frees four slots (the
        # worker that was answered keeps its own).
        assert limiter.done(Signal.OK, 0.0, 0.1)
        assert (limiter.limit, limiter.in_flight) == (8, 4)
        await anyio.wait_all_tasks_blocked()
        assert sorted(woken) == [2, 3, 4, 5]  # trio runs woken tasks in any order
        tg.cancel_scope.cancel()
