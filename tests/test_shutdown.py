"""aclose(): drain within the bound, cut backoff short, drop and report what is left."""

from __future__ import annotations

import anyio
import httpx
import pytest
import tenacity

from encharge_async import ClientClosedError, DeliveryError, DropReason, FlushResult
from encharge_async.testing import EnchargeRecorder

from .conftest import ClientFactory, Recorder, wait_until

pytestmark = pytest.mark.anyio


async def test_aclose_drains_the_queue(make_client: ClientFactory, recorder: Recorder) -> None:
    client = make_client(max_concurrency=4)
    for i in range(200):
        await client.track("E", user_id=i % 10)
    result = await client.aclose()
    assert result == FlushResult(delivered=200, failed=0, dropped=0, pending=0)
    assert len(recorder.requests) == 200


@pytest.mark.slow
async def test_shutdown_deadline_drops_and_reports_the_rest(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    drops: list[DropReason] = []
    client = make_client(
        transport=held,
        max_concurrency=2,
        shutdown_timeout=0.2,
        on_drop=lambda event, reason: drops.append(reason),
    )
    for i in range(50):
        await client.track("E", user_id=i)
    await held.wait_for_requests(2)
    result = await client.aclose()
    assert result.dropped == 50
    assert result.delivered == 0
    assert drops == [DropReason.SHUTDOWN] * 50
    # The two in-flight requests were cancelled, not left running (nor answered).
    assert (held.held, held.received, held.requests) == (0, 2, [])
    stats = client.stats
    assert (stats.enqueued, stats.dropped, stats.queued, stats.in_flight) == (50, 50, 0, 0)


@pytest.mark.slow
async def test_backoff_sleeps_are_cut_short_on_shutdown(make_client: ClientFactory) -> None:
    # Fails, is parked for 60 s; at aclose() it is retried at once, fails again, and gets
    # one last attempt before the deadline instead of another 60 s. That last attempt is due
    # `timeout` before the deadline: the immediate retry must have failed by then, and the
    # last attempt must be answered within `timeout`. Both get 0.75 s (with 1.2 s and 1 s,
    # the retry had 0.2 s, which a loaded machine overran: the event was dropped).
    answers = iter([500, 500, 200])
    recorder = Recorder(lambda request: httpx.Response(next(answers)))
    client = make_client(
        transport=httpx.MockTransport(recorder),
        retry_wait=tenacity.wait_fixed(60),
        shutdown_timeout=1.5,
        timeout=0.75,
    )
    await client.track("E", user_id=1)
    # The first attempt failed; the retry is parked for 60 s.
    await wait_until(lambda: len(recorder.requests) == 1 and client.stats.in_flight == 0)
    assert client.stats.queued == 1
    result = await client.aclose()
    assert result.delivered == 1
    assert len(recorder.requests) == 3


@pytest.mark.slow
async def test_retry_after_pause_is_cut_short_on_shutdown(make_client: ClientFactory) -> None:
    answers = iter([429, 200, 200])
    recorder = Recorder(
        lambda request: httpx.Response(next(answers), headers={"Retry-After": "100"})
    )
    client = make_client(
        transport=httpx.MockTransport(recorder), max_concurrency=1, shutdown_timeout=1.5, timeout=1
    )
    await client.track("E", user_id=1)
    await wait_until(lambda: len(recorder.requests) == 1 and client.stats.in_flight == 0)
    await client.track("E", user_id=2)  # waits behind the 100 s pause
    result = await client.aclose()
    assert result.delivered == 2
    assert len(recorder.requests) == 3


async def test_aclose_is_idempotent_and_concurrent_callers_agree(
    make_client: ClientFactory,
) -> None:
    client = make_client()
    await client.track("E", user_id=1)
    results: list[FlushResult] = []

    async def close() -> None:
        results.append(await client.aclose())

    async with anyio.create_task_group() as tg:
        tg.start_soon(close)
        tg.start_soon(close)
    assert results[0] == results[1] == FlushResult(delivered=1)
    assert await client.aclose() == results[0]


async def test_calls_after_close_raise(make_client: ClientFactory) -> None:
    async with make_client() as client:
        await client.track("E", user_id=1)
    with pytest.raises(ClientClosedError, match="closed"):
        await client.track("E", user_id=1)
    with pytest.raises(ClientClosedError):
        client.identify_nowait(user_id=1)
    with pytest.raises(ClientClosedError):
        async with client:
            pass  # pragma: no cover
    assert await client.flush() == FlushResult()


async def test_closing_an_unstarted_client_closes_its_transport() -> None:
    closed = False

    class Transport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            raise AssertionError("no request expected")  # pragma: no cover

        async def aclose(self) -> None:
            nonlocal closed
            closed = True

    from encharge_async import AsyncEncharge

    client = AsyncEncharge("k", transport=Transport())
    assert await client.aclose() == FlushResult()
    assert closed
    with pytest.raises(ClientClosedError):
        await client.track("E", user_id=1)


async def test_a_failing_transport_close_is_logged_not_raised(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    class Transport(httpx.MockTransport):
        async def aclose(self) -> None:
            raise OSError("close failed")

    async with make_client(transport=Transport(Recorder())) as client:
        await client.track("E", user_id=1)
    assert client.stats.delivered == 1
    assert any("closing the HTTP transport failed" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
async def test_blocked_callers_are_released_when_closing(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    client = make_client(
        transport=held,
        max_concurrency=1,
        max_queue_size=1,
        overflow="block",
        shutdown_timeout=0.1,  # "flying" is never answered: dropped at the deadline
    )
    await client.track("flying", user_id=1)
    await held.wait_for_requests(1)
    await client.track("queued", user_id=2)
    outcome: list[BaseException] = []

    async def blocked() -> None:
        try:
            await client.track("blocked", user_id=3, timeout=30)
        except ClientClosedError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(blocked)
        await anyio.wait_all_tasks_blocked()  # the call waits for room
        tg.start_soon(client.aclose)
    assert len(outcome) == 1


@pytest.mark.slow
async def test_waiters_learn_their_event_was_dropped_at_shutdown(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    client = make_client(transport=held, shutdown_timeout=0.1)
    errors: list[DeliveryError] = []

    async def waiter() -> None:
        try:
            await client.track("E", user_id=1, wait=True, timeout=30)
        except DeliveryError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await held.wait_for_requests(1)
        await client.aclose()
    assert len(errors) == 1
    assert "dropped (shutdown)" in str(errors[0])


async def test_flush_reports_pending_on_timeout(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    async with make_client(transport=held, max_concurrency=1) as client:
        for i in range(3):
            await client.track("E", user_id=i)
        result = await client.flush(timeout=0.05)
        assert result == FlushResult(pending=3)
        assert not result.complete
        held.release()
        result = await client.flush(timeout=5)
        assert result == FlushResult(delivered=3)
        assert result.complete


@pytest.mark.slow
async def test_flush_does_not_wait_for_later_events(make_client: ClientFactory) -> None:
    early_gate = anyio.Event()
    late_gate = anyio.Event()

    async def gated(request: httpx.Request) -> httpx.Response:
        await (late_gate if b"late" in request.content else early_gate).wait()
        return httpx.Response(200)

    results: list[FlushResult] = []
    async with make_client(transport=httpx.MockTransport(Recorder(gated))) as client:
        await client.track("early", user_id=1)

        async def flush() -> None:
            results.append(await client.flush(timeout=5))
            late_gate.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(flush)
            await anyio.wait_all_tasks_blocked()  # flush() is now waiting for "early" only
            await client.track("late", user_id=2)
            early_gate.set()
    assert results == [FlushResult(delivered=1)]
    assert client.stats.delivered == 2


async def test_aclose_timeout_overrides_shutdown_timeout(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    client = make_client(transport=held, shutdown_timeout=3600)
    await client.track("E", user_id=1)
    with anyio.fail_after(10):  # would hang for an hour with the client's own timeout
        result = await client.aclose(timeout=0.05)
    assert result.dropped == 1


@pytest.mark.slow
async def test_cancelled_aclose_still_reports_what_it_did(make_client: ClientFactory) -> None:
    release = anyio.Event()

    async def gated(request: httpx.Request) -> httpx.Response:
        if b"slow" in request.content:
            await anyio.sleep(3600)  # a server that never answers, on purpose
        await release.wait()
        return httpx.Response(200)

    client = make_client(transport=httpx.MockTransport(Recorder(gated)), shutdown_timeout=3600)
    await client.track("fast", user_id=1)
    await client.track("slow", user_id=2)
    release.set()
    with anyio.move_on_after(0.2):
        await client.aclose()
    result = await client.aclose()  # closed already: what the cancelled close did
    assert (result.delivered, result.dropped) == (1, 1)


@pytest.mark.slow
async def test_a_fast_failing_endpoint_is_not_hammered_while_closing(
    make_client: ClientFactory,
) -> None:
    recorder = Recorder(lambda request: httpx.Response(503))
    client = make_client(
        transport=httpx.MockTransport(recorder),
        retry_wait=tenacity.wait_fixed(0.2),
        shutdown_timeout=0.5,
        timeout=10,  # longer than the shutdown window: no whole attempt "fits"
    )
    await client.track("E", user_id=1)
    await wait_until(lambda: len(recorder.requests) >= 1)
    result = await client.aclose()
    # The backoff (0.2 s) is kept while closing: about 4 attempts in the 0.5 s window. The
    # bound leaves room for a slow machine's timing, and back-to-back resends against an
    # endpoint that fails at once would make hundreds.
    assert len(recorder.requests) <= 10
    assert result.dropped == 1
