"""A stateful model of the pipeline, driven through AsyncEncharge's public API.

Hypothesis picks a client (overflow policy, small bounds, no spool or a spool in either
mode) and runs rules against it: track and identify for a few people, let some held
requests go, script failures, flush, and (with a spool) restart: close at once, keeping
what is undelivered in the spool, and start a new client on it. The transport is the
public recorder, holding every request: what is in flight stays in flight until a rule
releases it. After every step, the counters add up exactly
(`enqueued == delivered + failed + dropped + queued + in_flight + spooled`), agree with
the hooks, and each person's delivered events are in the order of the calls, across
memory, disk and restarts.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
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

from .conftest import ENDPOINT, WRITE_KEY, assert_adds_up

PEOPLE = ("ann", "bob", "cy")
SETTLE_TURNS = 20  # loop turns without change that make a step "settled"
SETTLE_BOUND = 10.0  # seconds: a step that never settles fails

T = TypeVar("T")


class PipelineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.recorder = EnchargeRecorder()
        self.recorder.hold()
        self.client: AsyncEncharge | None = None
        self.directory = Path(tempfile.mkdtemp())
        self.options: dict[str, Any] = {}
        self.spool_mode: str | None = None
        # Each client's counters start at zero: where the hooks' lists stood at its start,
        # and how many events it took over from the spool (counted in its `enqueued`).
        self.base = (0, 0, 0, 0)
        self.resumed = 0
        self.delivered: list[str] = []
        self.errors: list[DeliveryError] = []
        self.drops: list[tuple[str, DropReason]] = []
        # Each accepted call's message id -> (person, call number), in call order.
        self.calls: dict[str, tuple[str, int]] = {}
        self.refused = 0  # calls refused with QueueFullError (overflow="block")

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def spool_busy(self) -> bool:
        """White-box: the spool's thread is writing or reading (the loop looks idle then)."""
        assert self.client is not None
        spooler = self.client._pipeline.spooler
        return spooler is not None and (spooler.writer.busy or spooler.reader.loading)

    async def settle(self) -> None:
        """Run the loop until nothing changes for a few turns (bounded)."""
        assert self.client is not None
        last: object = None
        quiet = 0
        deadline = self.loop.time() + SETTLE_BOUND
        while self.loop.time() < deadline:
            busy = self.spool_busy()
            # Waiting for the spool's thread: give it time rather than spin.
            await asyncio.sleep(0.001 if busy else 0)
            now = (self.client.stats, self.recorder.received, self.recorder.held, busy)
            quiet = quiet + 1 if now == last and not busy else 0
            if quiet >= SETTLE_TURNS:
                return
            last = now
        pytest.fail(f"the pipeline did not settle: {self.client.stats}")

    @initialize(
        overflow=st.sampled_from(["drop_newest", "drop_oldest", "block"]),
        max_queue_size=st.integers(1, 4),
        max_concurrency=st.integers(1, 3),
        spool_mode=st.sampled_from([None, "overflow", "always"]),
        # A short one: two failures in a row make an outage, and new events go to disk.
        spool_after=st.sampled_from([0.001, 60.0]),
    )
    def start(
        self,
        overflow: Any,
        max_queue_size: int,
        max_concurrency: int,
        spool_mode: str | None,
        spool_after: float,
    ) -> None:
        def on_drop(event: Event, reason: DropReason) -> None:
            self.drops.append((event.message_id, reason))

        def on_delivered(event: Event) -> None:
            self.delivered.append(event.message_id)

        self.spool_mode = spool_mode
        self.options = {
            "overflow": overflow,
            "max_queue_size": max_queue_size,
            "max_concurrency": max_concurrency,
            "on_delivered": on_delivered,
            "on_error": self.errors.append,
            "on_drop": on_drop,
        }
        if spool_mode is not None:
            self.options.update(
                spool=self.directory / "events.spool",
                spool_mode=spool_mode,
                spool_after=spool_after,
            )
        self.run(self.open_client())

    async def open_client(self, carried: int = 0) -> None:
        """A new client; `carried`: the events the last one kept in the spool."""
        self.base = (len(self.calls), len(self.delivered), len(self.errors), len(self.drops))
        self.client = AsyncEncharge(
            WRITE_KEY,
            endpoint=ENDPOINT,
            transport=self.recorder,
            max_retries=1,
            retry_wait=tenacity.wait_none(),
            shutdown_timeout=5,
            **self.options,
        )
        await self.client.__aenter__()
        # What the earlier client kept in the spool: this one's from the opening on.
        self.resumed = carried
        assert self.client.stats.enqueued == carried, self.client.stats
        await self.settle()

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

    @rule(person=st.sampled_from(PEOPLE), count=st.integers(2, 6))
    def burst(self, person: str, count: int) -> None:
        """Several calls in a row, without letting the loop run: fills the queue (a spool
        takes the overflow)."""
        client = self.client
        assert client is not None

        async def burst() -> None:
            for _ in range(count):
                try:
                    mid = client.track_nowait("Step", user_id=person, properties={"n": 1})
                except QueueFullError:
                    self.refused += 1
                    continue
                self.calls[mid] = (person, len(self.calls))
            await self.settle()

        self.run(burst())

    @rule(
        status=st.sampled_from([400, 503]),
        attempts=st.sampled_from([None, 1, 2]),
    )
    def fail_next(self, status: int, attempts: int | None) -> None:
        if self.spool_mode is not None and attempts is None:
            # With a spool, a retryable failure is retried past max_retries (the spool keeps
            # what fails for long): one that never ends would only be kept at close. Two
            # failed attempts, released in two steps, make an outage (spool_after=0.001).
            attempts = 2
        self.recorder.fail_next(status, attempts=attempts)

    @precondition(lambda self: self.spool_mode is not None)
    @rule()
    def restart(self) -> None:
        """Close at once (held requests are cancelled): what is undelivered stays in the
        spool, and a new client on the same file resumes it."""
        client = self.client
        assert client is not None

        async def restart() -> None:
            result = await client.aclose(timeout=0)
            stats = client.stats
            assert result.dropped == 0, result
            assert (stats.queued, stats.in_flight) == (0, 0), stats
            assert stats.spooled == result.spooled, (stats, result)  # ours and any leftover
            self.counters_add_up_and_match_the_hooks()
            await self.open_client(result.spooled)

        self.run(restart())

    @precondition(lambda self: self.spool_mode is not None and self.recorder.held > 0)
    @rule()
    def outage(self) -> None:
        """An event fails twice, some time apart: with spool_after=0.001, an outage (new
        events go to disk until a request succeeds)."""

        async def outage() -> None:
            self.recorder.fail_next(503, attempts=2)
            for _ in range(2):
                if self.recorder.held:
                    self.recorder.release(self.recorder.held)
                    await self.settle()
                await asyncio.sleep(0.002)  # longer than spool_after between the failures

        self.run(outage())

    @rule()
    def flush(self) -> None:
        client = self.client
        assert client is not None

        async def flush() -> None:
            self.recorder.release()
            result = await client.flush(timeout=5)
            assert result.complete, result
            stats = client.stats
            assert (stats.queued, stats.in_flight, stats.spooled) == (0, 0, 0), stats
            self.recorder.hold()

        self.run(flush())

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def counters_add_up_and_match_the_hooks(self) -> None:
        if self.client is None:
            return
        stats = self.client.stats
        if self.spool_mode is None:
            assert stats.spooled == 0
        assert_adds_up(stats)
        calls, delivered, errors, drops = self.base
        # Refused calls are not accepted; events resumed from the spool are.
        assert stats.enqueued == len(self.calls) - calls + self.resumed
        assert (stats.delivered, stats.failed, stats.dropped) == (
            len(self.delivered) - delivered,
            len(self.errors) - errors,
            len(self.drops) - drops,
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
                assert (result.dropped, result.spooled) == (0, 0), result
                self.counters_add_up_and_match_the_hooks()
        finally:
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)


PipelineMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pipeline_state_machine = pytest.mark.slow(PipelineMachine.TestCase)
