"""Fixtures for the emulator tests: a running emulator, an HTTP client, a poster."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio

from encharge_async.emulator import Emulator

# The plugin's fixture, as a user gets it from the pytest11 entry point.
from encharge_async.pytest_plugin import encharge_emulator

__all__ = ["encharge_emulator"]

KEY = "k-test"

Post = Callable[..., Awaitable[httpx.Response]]


# One emulator and one client per test module, reset before each test: starting and
# stopping uvicorn costs a few tenths of a second. Modules that use them run their tests
# on the module's event loop (`pytestmark = MODULE_LOOP`), where the server runs.
MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_emulator() -> AsyncIterator[Emulator]:
    async with Emulator(write_key=KEY, seed=7) as emulator:
        yield emulator


@pytest_asyncio.fixture(loop_scope="module")
async def emu(shared_emulator: Emulator) -> AsyncIterator[Emulator]:
    shared_emulator.reset()
    shared_emulator.faults.clear()
    yield shared_emulator
    shared_emulator.faults.clear()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as http:
        yield http


@pytest.fixture
def post(emu: Emulator, client: httpx.AsyncClient) -> Post:
    """POST `body` as JSON to the emulator's ingest URL with the write key."""

    async def _post(
        body: Any = None,
        *,
        key: str | None = KEY,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        url: str | None = None,
        timeout: float = 5.0,
    ) -> httpx.Response:
        sent = {"Content-Type": "application/json"}
        if key is not None:
            sent["X-Encharge-Token"] = key
        sent.update(headers or {})
        data = content if content is not None else json.dumps(body).encode()
        return await client.post(url or emu.url, content=data, headers=sent, timeout=timeout)

    return _post
