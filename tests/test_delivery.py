"""Delivery: headers, concurrency, retries, Retry-After, permanent failures, wait=True, hooks."""

from __future__ import annotations

import json
import logging
import ssl
from typing import Any

import anyio
import httpx
import pytest
import respx
import tenacity

import encharge_async
from encharge_async import DeliveryError, Event, ValidationError
from encharge_async.testing import EnchargeRecorder

from .conftest import ENDPOINT, WRITE_KEY, ClientFactory, Recorder, wait_until

pytestmark = pytest.mark.anyio


async def test_headers(make_client: ClientFactory, recorder: Recorder) -> None:
    async with make_client() as client:
        mid = await client.track("E", user_id=1, wait=True)
    (request,) = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == ENDPOINT
    assert request.headers["x-encharge-token"] == WRITE_KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == encharge_async.USER_AGENT
    assert request.headers["idempotency-key"] == mid
    assert request.headers["content-length"] == str(len(request.content))


async def test_sending_starts_without_flush(make_client: ClientFactory, recorder: Recorder) -> None:
    client = make_client()
    client_started = await client.__aenter__()
    await client_started.track("E", user_id=1)
    await wait_until(lambda: len(recorder.requests) == 1)
    assert client.stats.delivered == 1
    await client.aclose()


@pytest.mark.slow
async def test_concurrency_is_bounded_and_used(make_client: ClientFactory) -> None:
    active = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await anyio.sleep(0.02)  # a slow server, on purpose: requests overlap
        active -= 1
        return httpx.Response(200)

    recorder = Recorder(slow)
    async with make_client(transport=httpx.MockTransport(recorder), max_concurrency=4) as client:
        for i in range(40):
            await client.track("E", user_id=i)
        result = await client.flush(timeout=10)
    assert result.delivered == 40
    assert peak == 4


@pytest.mark.slow
@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_statuses_are_retried_with_the_same_idempotency_key(
    make_client: ClientFactory, status: int
) -> None:
    answers = iter([status, status, 200])
    recorder = Recorder(lambda request: httpx.Response(next(answers), json={"error": "busy"}))
    async with make_client(transport=httpx.MockTransport(recorder)) as client:
        mid = await client.track("E", user_id=1, wait=True)
    assert len(recorder.requests) == 3
    assert {r.headers["idempotency-key"] for r in recorder.requests} == {mid}
    assert {r.content for r in recorder.requests} == {recorder.requests[0].content}
    stats = client.stats
    assert (stats.delivered, stats.retried, stats.failed) == (1, 2, 0)


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow connect"),
        httpx.ReadError("reset by peer"),
        httpx.RemoteProtocolError("server disconnected"),
        httpx.ReadTimeout("slow read"),
        ConnectionResetError("reset by a transport that does not map errors"),
        OSError("name resolution failed"),
    ],
)
@pytest.mark.slow
async def test_transport_errors_are_retried(make_client: ClientFactory, error: Exception) -> None:
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        return httpx.Response(200)

    async with make_client(transport=httpx.MockTransport(Recorder(flaky))) as client:
        await client.track("E", user_id=1, wait=True)
    assert calls == 2
    assert client.stats.retried == 1


async def test_a_request_over_timeout_is_abandoned_and_retried(make_client: ClientFactory) -> None:
    calls = 0

    async def stall_once(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await anyio.sleep(30)  # stalls past the client's timeout, on purpose
        return httpx.Response(200)

    transport = httpx.MockTransport(Recorder(stall_once))
    async with make_client(transport=transport, timeout=0.05) as client:
        await client.track("E", user_id=1, wait=True, timeout=10)
    assert calls == 2
    assert client.stats.delivered == 1


@pytest.mark.slow
@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422, 301])
async def test_other_statuses_are_permanent(make_client: ClientFactory, status: int) -> None:
    errors: list[DeliveryError] = []
    recorder = Recorder(lambda request: httpx.Response(status, json={"error": "nope"}))
    async with make_client(transport=httpx.MockTransport(recorder), on_error=errors.append) as c:
        mid = await c.track("Signup", user_id=1)
        result = await c.flush(timeout=5)
    assert len(recorder.requests) == 1
    assert result.failed == 1
    assert c.stats.failed == 1
    assert c.stats.retried == 0
    (error,) = errors
    assert (error.status, error.message_id, error.attempts) == (status, mid, 1)
    assert error.body == '{"error":"nope"}'
    assert error.event is not None
    assert error.event.name == "Signup"
    assert f"HTTP {status}" in str(error)


@pytest.mark.slow
async def test_wait_true_raises_delivery_error(make_client: ClientFactory) -> None:
    recorder = Recorder(
        lambda request: httpx.Response(401, json={"error": f"Invalid key {WRITE_KEY}"})
    )
    async with make_client(transport=httpx.MockTransport(recorder)) as client:
        with pytest.raises(DeliveryError) as info:
            await client.track("E", user_id=1, wait=True)
    error = info.value
    assert error.status == 401
    assert WRITE_KEY not in str(error)
    assert WRITE_KEY not in error.body
    assert "***" in error.body


async def test_max_retries_bounds_attempts(make_client: ClientFactory) -> None:
    recorder = Recorder(lambda request: httpx.Response(500))
    async with make_client(transport=httpx.MockTransport(recorder), max_retries=3) as client:
        with pytest.raises(DeliveryError, match=r"gave up after 4 attempts \(max_retries=3\)"):
            await client.track("E", user_id=1, wait=True)
    assert len(recorder.requests) == 4
    assert client.stats.retried == 3
    assert client.stats.failed == 1


async def test_zero_retries(make_client: ClientFactory) -> None:
    recorder = Recorder(lambda request: httpx.Response(503))
    async with make_client(transport=httpx.MockTransport(recorder), max_retries=0) as client:
        with pytest.raises(DeliveryError, match="gave up after 1 attempts"):
            await client.track("E", user_id=1, wait=True)
    assert len(recorder.requests) == 1


async def test_max_retry_time_is_a_deadline(make_client: ClientFactory) -> None:
    recorder = Recorder(lambda request: httpx.Response(500))
    async with make_client(
        transport=httpx.MockTransport(recorder),
        max_retry_time=1,
        retry_wait=tenacity.wait_fixed(5),
    ) as client:
        with pytest.raises(DeliveryError, match="past max_retry_time=1s"):
            await client.track("E", user_id=1, wait=True)
    assert len(recorder.requests) == 1


async def test_default_backoff_is_full_jitter_exponential() -> None:
    wait = encharge_async._retry.default_wait()  # white-box: the default, unit-tested
    state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0), (50, 30.0)]:
        state.attempt_number = attempt
        delays = [wait(state) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jitter spreads over the window


@pytest.mark.slow
async def test_retry_after_is_honoured(make_client: ClientFactory) -> None:
    times: list[float] = []

    def limited(request: httpx.Request) -> httpx.Response:
        times.append(anyio.current_time())
        if len(times) == 1:
            return httpx.Response(503, headers={"Retry-After": "0.3"})
        return httpx.Response(200)

    async with make_client(transport=httpx.MockTransport(Recorder(limited))) as client:
        await client.track("E", user_id=1, wait=True)
    assert times[1] - times[0] >= 0.29


@pytest.mark.slow
async def test_429_pauses_every_sender(make_client: ClientFactory) -> None:
    log: list[tuple[float, str]] = []

    def limited(request: httpx.Request) -> httpx.Response:
        log.append((anyio.current_time(), json.loads(request.content)["user"]["userId"]))
        if len(log) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.3"})
        return httpx.Response(200)

    transport = httpx.MockTransport(Recorder(limited))
    async with make_client(transport=transport, max_concurrency=1) as client:
        await client.track("E", user_id="first")
        for i in range(5):
            await client.track("E", user_id=f"other-{i}")
        result = await client.flush(timeout=10)
    assert result.delivered == 6
    first_time = log[0][0]
    assert all(when - first_time >= 0.29 for when, _ in log[1:])
    assert sorted(user for _, user in log[1:]) == sorted(
        ["first"] + [f"other-{i}" for i in range(5)]
    )


@pytest.mark.slow
async def test_unexpected_transport_exception_fails_the_event_not_the_worker(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def buggy(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in a custom transport")
        return httpx.Response(200)

    async with make_client(transport=httpx.MockTransport(Recorder(buggy))) as client:
        with pytest.raises(DeliveryError, match="RuntimeError: bug in a custom transport"):
            await client.track("E", user_id=1, wait=True)
        await client.track("E", user_id=2, wait=True)
    assert calls == 2
    assert client.stats.delivered == 1
    assert client.stats.failed == 1


async def test_hook_exceptions_do_not_hurt_delivery(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*args: Any) -> None:
        raise ValueError("hook bug")

    recorder = Recorder(lambda request: httpx.Response(400 if b"Bad" in request.content else 200))
    async with make_client(
        transport=httpx.MockTransport(recorder),
        on_delivered=explode,
        on_error=explode,
        on_drop=explode,
        max_queue_size=1,
    ) as client:
        client.track_nowait("Good", user_id=1)
        client.track_nowait("Dropped", user_id=2)
        await client.flush(timeout=5)
        await client.track("Bad", user_id=3)
        await client.flush(timeout=5)
        await client.track("Good", user_id=4, wait=True)
    stats = client.stats
    assert (stats.delivered, stats.failed, stats.dropped) == (2, 1, 1)
    hook_logs = [r for r in caplog.records if "hook raised" in r.getMessage()]
    assert {r.getMessage().split()[0] for r in hook_logs} == {"on_delivered", "on_error", "on_drop"}


async def test_hooks_receive_events(make_client: ClientFactory) -> None:
    delivered: list[Event] = []
    async with make_client(on_delivered=delivered.append) as client:
        ids = [await client.track("E", user_id=i) for i in range(3)]
    assert sorted(e.message_id for e in delivered) == sorted(ids)


async def test_large_error_bodies_are_truncated(make_client: ClientFactory) -> None:
    recorder = Recorder(lambda request: httpx.Response(400, content=b"x" * 100_000))
    async with make_client(transport=httpx.MockTransport(recorder)) as client:
        with pytest.raises(DeliveryError) as info:
            await client.track("E", user_id=1, wait=True)
    assert info.value.body == "x" * 500 + "..."


@pytest.mark.slow
async def test_wait_true_times_out_without_losing_the_event(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    async with make_client(transport=held) as client:
        with pytest.raises(TimeoutError):
            await client.track("E", user_id=1, wait=True, timeout=0.05)
        held.release()
        result = await client.flush(timeout=5)
    assert result.delivered == 1


async def test_cancelled_waiter_is_not_retried_and_event_still_delivered(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    async with make_client(transport=held) as client:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: client.track("E", user_id=1, wait=True, timeout=10))
                await held.wait_for_requests(1)
                scope.cancel()
        assert scope.cancelled_caught
        held.release()
        await client.flush(timeout=5)
    assert held.received == 1
    assert client.stats.delivered == 1


async def test_default_transport_with_respx_and_tls_verification() -> None:
    with respx.mock(assert_all_called=True) as router:
        route = router.post(ENDPOINT).mock(return_value=httpx.Response(200, json={}))
        async with encharge_async.AsyncEncharge(
            WRITE_KEY, endpoint=ENDPOINT, max_concurrency=3
        ) as client:
            for i in range(6):
                await client.track("E", user_id=i)
            await client.track("E", user_id=9, wait=True)
            await client.flush(timeout=5)
            # One single-connection transport per worker, all verifying TLS certificates
            # (white-box: the transports and their TLS settings are not public).
            assert len(client._pipeline.dispatcher.transports) == 3
            for transport in client._pipeline.dispatcher.transports:
                assert isinstance(transport, httpx.AsyncHTTPTransport)
                assert transport._pool._max_connections == 1
                context = transport._pool._ssl_context
                assert context is not None
                assert context.verify_mode == ssl.CERT_REQUIRED
                assert context.check_hostname
    assert route.call_count == 7
    assert route.calls[0].request.headers["x-encharge-token"] == WRITE_KEY


async def test_logs_are_quiet_by_default_and_never_hold_payloads(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="encharge_async")
    recorder = Recorder(lambda request: httpx.Response(500))
    async with make_client(transport=httpx.MockTransport(recorder), max_retries=2) as client:
        await client.track("E", user_id=1, properties={"secret-payload": "value-xyz"})
        await client.flush(timeout=5)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "value-xyz" not in text
    # One WARNING for the failure (a count, the latest reason); the retries are DEBUG.
    (warning,) = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert warning.levelno == logging.WARNING
    assert "1 event(s) failed for good" in warning.getMessage()
    assert "gave up after 3 attempts" in warning.getMessage()
    # Per event, at DEBUG, with structured fields for log pipelines.
    (record,) = [r for r in caplog.records if "gave up" in r.getMessage() and r is not warning]
    assert record.levelno == logging.DEBUG
    assert record.status == 500  # type: ignore[attr-defined]
    assert record.attempt == 3  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.parametrize("timeout", [-1, "x", float("nan"), float("inf")])
async def test_bad_flush_and_aclose_timeouts_are_validation_errors(
    make_client: ClientFactory, timeout: Any
) -> None:
    async with make_client() as client:
        await client.track("E", user_id="1")
        with pytest.raises(ValidationError, match="timeout must be a finite number"):
            await client.flush(timeout=timeout)
        with pytest.raises(ValidationError, match="timeout must be a finite number"):
            await client.aclose(timeout=timeout)
        assert (await client.flush(timeout=5)).delivered == 1


async def test_wait_timeout_says_what_timed_out(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    async with make_client(transport=held) as client:
        with pytest.raises(TimeoutError, match=r"no outcome for event \S+ within 0s"):
            await client.track("E", user_id="1", wait=True, timeout=0)
        held.release()


async def test_a_timeout_is_checked_even_when_the_call_does_not_wait(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    async with make_client() as client:
        with pytest.raises(ValidationError, match="timeout must be a finite number"):
            await client.track("E", user_id="1", timeout=-1)
        assert await client.track("E", user_id="2", timeout=5)
        assert (await client.flush(timeout=5)).delivered == 1
    assert len(recorder.requests) == 1
