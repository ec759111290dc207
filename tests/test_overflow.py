"""Queue bounds (count and bytes) and the three overflow policies."""

from __future__ import annotations

import json
import logging

import anyio
import httpx
import pytest

from encharge_async import DropReason, Event, QueueFullError
from encharge_async.testing import EnchargeRecorder

from .conftest import ClientFactory, Recorder, wait_until

pytestmark = pytest.mark.anyio

# `held` (conftest) is the public recorder holding every request until released: the queue
# fills up behind the event in flight. `wait_for_requests(1)` says that one is in flight.


async def test_drop_newest_counts_and_reports(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    drops: list[tuple[str, DropReason]] = []
    async with make_client(
        transport=held,
        max_concurrency=1,
        max_queue_size=3,
        on_drop=lambda event, reason: drops.append((event.name, reason)),
    ) as client:
        client.track_nowait("e0", user_id=0)
        await held.wait_for_requests(1)  # e0 is now in flight
        for i in range(1, 6):
            client.track_nowait(f"e{i}", user_id=i)
        stats = client.stats
        held.release()
        result = await client.flush(timeout=5)
    # e0 went in flight, e1-e3 filled the queue; e4, e5 were refused. A refused event counts
    # as enqueued (the call returned) and as dropped, so the counters add up.
    assert drops == [("e4", DropReason.QUEUE_FULL), ("e5", DropReason.QUEUE_FULL)]
    assert (stats.enqueued, stats.dropped, stats.queued) == (6, 2, 3)
    assert result.delivered == 4
    assert client.stats.dropped == 2


async def test_drop_oldest_evicts_oldest_queued(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    dropped: list[str] = []
    delivered: list[str] = []
    async with make_client(
        transport=held,
        max_concurrency=1,
        max_queue_size=3,
        overflow="drop_oldest",
        on_drop=lambda event, reason: dropped.append(event.name),
        on_delivered=lambda event: delivered.append(event.name),
    ) as client:
        await client.track("e0", user_id=0)
        await held.wait_for_requests(1)  # e0 is now in flight and cannot be evicted
        for i in range(1, 7):
            await client.track(f"e{i}", user_id=i)
        assert client.stats.queued == 3
        held.release()
        result = await client.flush(timeout=5)
    assert dropped == ["e1", "e2", "e3"]
    assert sorted(delivered) == ["e0", "e4", "e5", "e6"]
    assert result.delivered == 4
    assert result.dropped == 0  # the drops happened before flush() was called
    assert client.stats.dropped == 3


async def test_drop_oldest_keeps_the_ordering_of_the_survivors(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    delivered: list[str] = []
    async with make_client(
        transport=held,
        max_concurrency=1,
        max_queue_size=4,
        overflow="drop_oldest",
        on_delivered=lambda event: delivered.append(event.name),
    ) as client:
        await client.track("blocker", user_id="x")
        await held.wait_for_requests(1)
        for i in range(8):
            await client.track(f"p{i}", user_id="p")  # one person: lane-waiting events
        held.release()
        await client.flush(timeout=5)
    assert delivered == ["blocker", "p4", "p5", "p6", "p7"]


async def test_queue_bound_in_bytes(make_client: ClientFactory, held: EnchargeRecorder) -> None:
    async with make_client(
        transport=held, max_concurrency=1, max_queue_bytes=300, max_event_bytes=200
    ) as client:
        client.track_nowait("in flight", user_id=0)
        await held.wait_for_requests(1)
        for i in range(10):
            client.track_nowait("E", user_id=i, properties={"pad": "x" * 60})
        stats = client.stats
        held.release()
    assert stats.queued_bytes <= 300
    assert stats.queued == stats.queued_bytes // 100 or stats.queued >= 2
    assert stats.dropped == 10 - stats.queued


async def test_block_waits_for_room(make_client: ClientFactory, held: EnchargeRecorder) -> None:
    async with make_client(
        transport=held, max_concurrency=1, max_queue_size=2, overflow="block"
    ) as client:
        for i in range(3):
            await client.track("E", user_id=i)
        await held.wait_for_requests(1)
        assert client.stats.queued == 2
        waited: list[str] = []

        async def track() -> None:
            waited.append(await client.track("waited", user_id=99, timeout=5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(track)
            await anyio.wait_all_tasks_blocked()  # the call waits for room
            assert not waited
            held.release(1)
        assert waited
        held.release()
        await client.flush(timeout=5)
    assert client.stats.delivered == 4
    assert client.stats.dropped == 0


async def test_block_raises_queue_full_after_timeout(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    async with make_client(
        transport=held, max_concurrency=1, max_queue_size=1, overflow="block"
    ) as client:
        await client.track("flying", user_id=1)
        await held.wait_for_requests(1)
        await client.track("queued", user_id=2)
        with pytest.raises(QueueFullError, match=r"no room in the queue within 0\.05s"):
            await client.track("E", user_id=3, timeout=0.05)
        with pytest.raises(QueueFullError, match="cannot wait for room"):
            client.track_nowait("E", user_id=4)
        held.release()
    assert client.stats.delivered == 2
    assert client.stats.dropped == 0


async def test_wait_true_on_a_full_queue_raises(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    async with make_client(transport=held, max_concurrency=1, max_queue_size=1) as client:
        await client.track("flying", user_id=1)
        await held.wait_for_requests(1)
        await client.track("queued", user_id=2)
        with pytest.raises(QueueFullError, match="was dropped"):
            await client.track("E", user_id=3, wait=True)
        held.release()


async def test_drop_warning_is_rate_limited(
    make_client: ClientFactory, held: EnchargeRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="encharge_async")
    async with make_client(transport=held, max_concurrency=1, max_queue_size=1) as client:
        for i in range(500):
            client.track_nowait("E", user_id=i)
        held.release()
    warnings = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    # The first drop at once; the rest of the interval as one line with its count, at the
    # latest when the client closes: every drop is reported, in two lines, not 499.
    assert len(warnings) == 2
    assert "dropped 1 event(s)" in warnings[0]
    assert "dropped 498 event(s)" in warnings[1]
    assert client.stats.dropped == 499


async def test_on_drop_receives_the_event(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    seen: list[Event] = []
    async with make_client(
        transport=held,
        max_concurrency=1,
        max_queue_size=1,
        on_drop=lambda event, reason: seen.append(event),
    ) as client:
        client.track_nowait("a", user_id=1)
        mid = client.track_nowait("c", user_id=3, properties={"k": "v"})
        held.release()
    (event,) = seen
    assert event.message_id == mid
    assert event.payload["properties"] == {"k": "v"}


@pytest.mark.slow
async def test_drop_oldest_reaches_events_parked_or_paused(make_client: ClientFactory) -> None:
    """Evicted events waiting for a retry or sitting out a 429 pause are skipped, not sent."""
    answers = iter([429, 200, 200])
    # The pause must outlast the steps below however loaded the machine is; e3 and e4 then
    # wait it out too.
    recorder = Recorder(lambda request: httpx.Response(next(answers), headers={"Retry-After": "1"}))
    dropped: list[str] = []
    async with make_client(
        transport=httpx.MockTransport(recorder),
        max_concurrency=1,
        max_queue_size=2,
        overflow="drop_oldest",
        on_drop=lambda event, reason: dropped.append(event.name),
    ) as client:
        await client.track("e1", user_id=1)  # answered 429: parked for a retry
        await wait_until(lambda: client.stats.in_flight == 0 and client.stats.queued == 1)
        await client.track("e2", user_id=2)  # taken by the worker, waits out the pause
        await anyio.wait_all_tasks_blocked()
        await client.track("e3", user_id=3)  # evicts e1 (parked)
        await client.track("e4", user_id=4)  # evicts e2 (paused)
        result = await client.flush(timeout=5)
    assert dropped == ["e1", "e2"]
    assert result.delivered == 2
    assert sorted(json.loads(r.content)["name"] for r in recorder.requests) == ["e1", "e3", "e4"]


async def test_flush_counts_events_dropped_while_it_waits(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    async with make_client(
        transport=held, max_concurrency=1, max_queue_size=1, overflow="drop_oldest"
    ) as client:
        await client.track("flying", user_id=1)
        await held.wait_for_requests(1)
        await client.track("evicted", user_id=2)
        results = []

        async def flush() -> None:
            results.append(await client.flush(timeout=5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(flush)
            await anyio.wait_all_tasks_blocked()  # flush() waits
            await client.track("newcomer", user_id=3)
            held.release()
    assert results[0].dropped == 1
    assert results[0].delivered == 1
