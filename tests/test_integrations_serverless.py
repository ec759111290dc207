"""flush_after: a serverless handler returns only once its events are delivered (bounded)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import tenacity

from encharge_async import AsyncEncharge, ConfigurationError, Encharge
from encharge_async.integrations.serverless import flush_after
from encharge_async.testing import EnchargeRecorder

from .conftest import ENDPOINT, WRITE_KEY


class LambdaContext:
    """The part of AWS Lambda's context object that flush_after reads."""

    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class Held(httpx.AsyncBaseTransport):
    """Holds every request until released (bounded), then answers 200."""

    def __init__(self) -> None:
        self.released = threading.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import anyio

        with anyio.fail_after(10):
            while not self.released.is_set():  # noqa: ASYNC110 - a thread sets it
                await anyio.sleep(0.01)
        return httpx.Response(200, json={})


@pytest.fixture
def recorder() -> EnchargeRecorder:
    return EnchargeRecorder()


@pytest.fixture
def encharge(recorder: EnchargeRecorder) -> Iterator[Encharge]:
    client = Encharge(
        WRITE_KEY, endpoint=ENDPOINT, transport=recorder, retry_wait=tenacity.wait_none()
    )
    yield client
    client.close(timeout=2)


def test_a_sync_handler_returns_once_its_events_are_delivered(
    encharge: Encharge, recorder: EnchargeRecorder
) -> None:
    @flush_after(encharge, timeout=5)
    def handler(event: dict[str, Any], context: object) -> dict[str, int]:
        for i in range(20):
            encharge.track("Signed up", email=f"user{i}@example.com")
        return {"statusCode": 200}

    assert handler.__name__ == "handler"
    assert handler({}, LambdaContext(30_000)) == {"statusCode": 200}
    assert len(recorder.events) == 20  # delivered before the handler returned


@pytest.mark.slow
def test_a_raising_handler_flushes_too(encharge: Encharge, recorder: EnchargeRecorder) -> None:
    @flush_after(encharge)
    def handler(event: dict[str, Any], context: object) -> None:
        encharge.track("Signed up", email="jon@example.com")
        raise KeyError("email")

    with pytest.raises(KeyError, match="email"):
        handler({}, None)
    assert len(recorder.events) == 1


@pytest.mark.slow
def test_the_flush_ends_before_the_invocation_deadline(caplog: pytest.LogCaptureFixture) -> None:
    held = Held()
    client = Encharge(WRITE_KEY, endpoint=ENDPOINT, transport=held)

    @flush_after(client, timeout=30)
    def handler(event: dict[str, Any], context: LambdaContext) -> str:
        client.track("Signed up", email="jon@example.com")
        return "done"

    try:
        with caplog.at_level(logging.WARNING, logger="encharge_async"):
            # 0.6 s left: the flush gets 0.1 s of its 30, and returns with the event pending.
            assert handler({}, LambdaContext(600)) == "done"
        assert "1 Encharge event(s) still pending after the flush" in caplog.text
    finally:
        held.released.set()
        client.close(timeout=5)
    assert client.stats.delivered == 1  # still queued, delivered later


def test_a_failing_flush_is_logged_not_raised(
    encharge: Encharge, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(timeout: float | None = None) -> None:
        raise TimeoutError("the client's background thread did not answer")

    monkeypatch.setattr(encharge, "flush", broken)

    @flush_after(encharge)
    def handler() -> int:
        return 42

    with caplog.at_level(logging.ERROR, logger="encharge_async"):
        assert handler() == 42
    assert "flushing the Encharge client after the handler failed" in caplog.text


@pytest.mark.asyncio
async def test_an_async_handler_with_the_async_client(recorder: EnchargeRecorder) -> None:
    async with AsyncEncharge(
        WRITE_KEY, endpoint=ENDPOINT, transport=recorder, retry_wait=tenacity.wait_none()
    ) as encharge:

        @flush_after(encharge, timeout=5)
        async def handler(event: dict[str, Any], context: object) -> str:
            for i in range(10):
                await encharge.track("Signed up", email=f"user{i}@example.com")
            return "ok"

        assert handler.__name__ == "handler"
        assert await handler({}, LambdaContext(30_000)) == "ok"
        assert len(recorder.events) == 10


@pytest.mark.asyncio
async def test_an_async_handler_with_the_sync_client(
    encharge: Encharge, recorder: EnchargeRecorder
) -> None:
    @flush_after(encharge, timeout=5)
    async def handler() -> str:
        encharge.track("Signed up", email="jon@example.com")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await handler()
    assert len(recorder.events) == 1


def test_misuse_is_refused_when_decorating(recorder: EnchargeRecorder) -> None:
    client = AsyncEncharge(WRITE_KEY, endpoint=ENDPOINT, transport=recorder)

    def plain() -> None:
        pass

    with pytest.raises(TypeError, match="needs an async def handler"):
        flush_after(client)(plain)
    with pytest.raises(TypeError, match="must be an Encharge or AsyncEncharge"):
        flush_after("not a client")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="timeout"):
        flush_after(client, timeout=-1)
