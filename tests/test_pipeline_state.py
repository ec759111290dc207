"""A stateful model of the pipeline, driven through AsyncEncharge's public API.

Hypothesis picks a client (overflow policy, small bounds) and runs rules against it: track
and identify for a few people, let some held requests go, script failures, flush. The
transport is the public recorder, holding every request: what is in flight stays in flight
until a rule releases it. After every step, the counters add up, agree with the hooks, and
each person's delivered events are in the order of the calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import tenacity
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from encharge_async import AsyncEncharge, DeliveryError, DropReason, Event, QueueFullError
from encharge_async.testing import EnchargeRecorder

from .conftest import ENDPOINT, WRITE_KEY

PEOPLE = ("ann", "bob", "cy")
SETTLE_TURNS = 20  # loop turns without change that make a step "settled"
MAX_TURNS = 2000  # a bound: a step that never settles fails

T = TypeVar("T")


class PipelineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.recorder = EnchargeRecorder()
        self.recorder.hold()
        self.client: AsyncEncharge | None = None
        self.delivered: list[str] = []
        self.errors: list[DeliveryError] = []
        self.drops: list[tuple[str, DropReason]] = []
        # Each accepted call's message id -> (person, call number), in call order.
        self.calls: dict[str, tuple[str, int]] = {}
        self.refused = 0  # calls refused with QueueFullError (overflow="block")

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def settle(self) -> None:
        """Run the loop until nothing changes for a few turns (bounded)."""
        assert self.client is not None
        last: object = None
        quiet = 0
        for _ in range(MAX_TURNS):
            await asyncio.sleep(0)
            now = (self.client.stats, self.recorder.received, self.recorder.held)
            quiet = quiet + 1 if now == last else 0
            if quiet >= SETTLE_TURNS:
                return
            last = now
        pytest.fail(f"the pipeline did not settle: {self.client.stats}")

    @initialize(
        overflow=st.sampled_from(["drop_newest", "drop_oldest", "block"]),
        max_queue_size=st.integers(1, 4),
        max_concurrency=st.integers(1, 3),
    )
    def start(self, overflow: Any, max_queue_size: int, max_concurrency: int) -> None:
        def on_drop(event: Event, reason: DropReason) -> None:
            self.drops.append((event.message_id, reason))

        def on_delivered(event: Event) -> None:
            self.delivered.append(event.message_id)

        self.client = AsyncEncharge(
            WRITE_KEY,
            endpoint=ENDPOINT,
            transport=self.recorder,
            overflow=overflow,
            max_queue_size=max_queue_size,
            max_concurrency=max_concurrency,
            max_retries=1,
            retry_wait=tenacity.wait_none(),
            shutdown_timeout=5,
            on_delivered=on_delivered,
            on_error=self.errors.append,
            on_drop=on_drop,
        )
        self.run(self.client.__aenter__())

    # -- rules ------------------------------------------------------------------------------

    def _call(self, person: str, kind: str) -> None:
        client = self.client
        assert client is not None

        async def call() -> None:
            try:
                if kind == "track":
                    mid = client.track_nowait("Step", user_id=person, properties={"n": 1})
                else:
                    mid = client.identify_nowait(user_id=person)
            except QueueFullError:  # overflow="block": a *_nowait call cannot wait for room
                self.refused += 1
                return
            self.calls[mid] = (person, len(self.calls))
            await self.settle()

        self.run(call())

    @rule(person=st.sampled_from(PEOPLE))
    def track(self, person: str) -> None:
        self._call(person, "track")

    @rule(person=st.sampled_from(PEOPLE))
    def identify(self, person: str) -> None:
        self._call(person, "identify")

    @precondition(lambda self: self.recorder.held > 0)
    @rule(count=st.integers(1, 3))
    def release_some(self, count: int) -> None:
        # At most the held ones: a credit left over would let a later request through
        # unseen by the model (harmless, but it would blur what the step did).
        self.recorder.release(min(count, self.recorder.held))
        self.run(self.settle())

    @rule(
        status=st.sampled_from([400, 503]),
        attempts=st.sampled_from([None, 1]),
    )
    def fail_next(self, status: int, attempts: int | None) -> None:
        self.recorder.fail_next(status, attempts=attempts)

    @rule()
    def flush(self) -> None:
        client = self.client
        assert client is not None

        async def flush() -> None:
            self.recorder.release()
            result = await client.flush(timeout=5)
            assert result.complete, result
            stats = client.stats
            assert (stats.queued, stats.in_flight) == (0, 0)
            self.recorder.hold()

        self.run(flush())

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def counters_add_up_and_match_the_hooks(self) -> None:
        if self.client is None:
            return
        stats = self.client.stats
        assert stats.spooled == 0
        assert stats.enqueued == (
            stats.delivered + stats.failed + stats.dropped + stats.queued + stats.in_flight
        ), stats
        assert stats.enqueued == len(self.calls)  # refused calls are not accepted
        assert (stats.delivered, stats.failed, stats.dropped) == (
            len(self.delivered),
            len(self.errors),
            len(self.drops),
        )
        assert stats.in_flight == self.recorder.held  # every request in flight is held

    @invariant()
    def each_persons_events_are_delivered_in_call_order(self) -> None:
        accepted = [request.message_id for request in self.recorder.events]
        # What the recorder accepted, the hook reported (people in parallel may swap).
        assert sorted(accepted) == sorted(self.delivered)
        for order in (accepted, self.delivered):
            last: dict[str, int] = {}
            for mid in order:
                person, number = self.calls[mid]
                assert number > last.get(person, -1), (person, number, last)
                last[person] = number

    @invariant()
    def every_event_ends_once(self) -> None:
        ended = self.delivered + [e.message_id for e in self.errors] + [m for m, _ in self.drops]
        assert len(ended) == len(set(ended))
        assert set(ended) <= set(self.calls)

    def teardown(self) -> None:
        try:
            if self.client is not None:
                self.recorder.release()
                result = self.run(self.client.aclose())
                assert result.dropped == 0, result
                self.counters_add_up_and_match_the_hooks()
        finally:
            self.loop.close()


PipelineMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pipeline_state_machine = PipelineMachine.TestCase
