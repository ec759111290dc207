from __future__ import annotations

import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
import tenacity

from encharge_async import AsyncEncharge, Stats
from encharge_async.testing import EnchargeRecorder

WRITE_KEY = "wk_secret_0123456789abcdef"
ENDPOINT = "https://ingest.example.test/v1/"

Handler = Callable[[httpx.Request], "httpx.Response | Awaitable[httpx.Response]"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Recorder:
    """An in-memory Encharge: records every request, answers through `respond`."""

    def __init__(self, respond: Handler | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.respond = respond

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.respond is None:
            return httpx.Response(200, json={})
        response = self.respond(request)
        if not isinstance(response, httpx.Response):
            response = await response
        return response

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]

    def names(self) -> list[str]:
        return [b.get("name") or b["type"] for b in self.bodies]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


ClientFactory = Callable[..., AsyncEncharge]


@pytest.fixture
async def make_client(recorder: Recorder) -> AsyncIterator[ClientFactory]:
    """Build clients that talk to `recorder` and never really sleep between retries."""
    clients: list[AsyncEncharge] = []

    def make(**kwargs: Any) -> AsyncEncharge:
        kwargs.setdefault("write_key", WRITE_KEY)
        kwargs.setdefault("endpoint", ENDPOINT)
        kwargs.setdefault("retry_wait", tenacity.wait_none())
        kwargs.setdefault("shutdown_timeout", 5)
        if "transport" not in kwargs:
            kwargs["transport"] = httpx.MockTransport(recorder)
        client = AsyncEncharge(**kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


POLL_INTERVAL = 0.002
"""How often `wait_until` looks: short, so a test waits no longer than it must."""


def _describe(predicate: Callable[[], object]) -> str:
    """The predicate's source line (a lambda, mostly), for the failure message."""
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)


async def wait_until(
    predicate: Callable[[], object], timeout: float = 5.0, *, what: str | None = None
) -> None:
    """Poll `predicate` until it holds; fail the test, saying what, after `timeout` seconds."""
    deadline = anyio.current_time() + timeout
    while not predicate():
        if anyio.current_time() >= deadline:
            pytest.fail(f"not true after {timeout:g}s: {what or _describe(predicate)}")
        await anyio.sleep(POLL_INTERVAL)


async def wait_drained(client: AsyncEncharge, timeout: float = 20.0) -> None:
    """Wait until nothing is spooled, queued or in flight (a spool's backlog included)."""

    def drained() -> bool:
        stats = client.stats
        return not (stats.spooled or stats.queued or stats.in_flight)

    await wait_until(drained, timeout, what="the client drained (spool included)")


def block_until(
    predicate: Callable[[], object], timeout: float = 5.0, *, what: str | None = None
) -> None:
    """`wait_until` for plain functions (sync clients, other threads, subprocesses)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"not true after {timeout:g}s: {what or _describe(predicate)}")
        time.sleep(POLL_INTERVAL)


@pytest.fixture
def held() -> EnchargeRecorder:
    """The public recorder, holding every request until the test calls `held.release()`."""
    recorder = EnchargeRecorder()
    recorder.hold()
    return recorder


def assert_adds_up(stats: Stats) -> None:
    """Each event counts in exactly one term, the spool's included."""
    assert stats.enqueued == (
        stats.delivered
        + stats.failed
        + stats.dropped
        + stats.queued
        + stats.in_flight
        + stats.spooled
    ), stats
