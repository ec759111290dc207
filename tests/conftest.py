from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import tenacity

from encharge_async import AsyncEncharge

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


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    import anyio

    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polling a plain predicate is the point
            await anyio.sleep(0.005)
