"""The FastAPI app of the "impact on a real app" benchmark.

Each route answers one small JSON document; all but `/off` track one event per request:

- `/off`: no tracking (the baseline);
- `/encharge`: `await encharge.track(...)` with the default transport;
- `/encharge-aiohttp`: the same with the httpx-aiohttp transport;
- `/naive`: `await http.post(...)` to the sink inside the handler (one shared
  `httpx.AsyncClient`), the pattern the library replaces.

`/_stats` reports both clients' counters; `/_flush` waits (bounded) for their queues to
empty, so that one measurement's backlog does not spill into the next.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from httpx_aiohttp import AiohttpTransport

from encharge_async import AsyncEncharge

from ._common import WRITE_KEY, typical_event, typical_payload

ROUTES = ("/off", "/encharge", "/encharge-aiohttp", "/naive")
_FLUSH_TIMEOUT = 60.0


def create_app(sink_url: str) -> FastAPI:
    """The app, tracking to `sink_url` (a loopback HTTP sink)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.encharge = await stack.enter_async_context(
                AsyncEncharge(WRITE_KEY, endpoint=sink_url)
            )
            app.state.encharge_aiohttp = await stack.enter_async_context(
                AsyncEncharge(WRITE_KEY, endpoint=sink_url, transport=AiohttpTransport())
            )
            app.state.http = await stack.enter_async_context(httpx.AsyncClient())
            yield

    app = FastAPI(lifespan=lifespan)
    headers = {"X-Encharge-Token": WRITE_KEY}

    @app.get("/off")
    async def off(i: int = 0) -> dict[str, Any]:
        return {"ok": True, "i": i}

    @app.get("/encharge")
    async def encharge(request: Request, i: int = 0) -> dict[str, Any]:
        await request.app.state.encharge.track("Registered user", **typical_event(i))
        return {"ok": True, "i": i}

    @app.get("/encharge-aiohttp")
    async def encharge_aiohttp(request: Request, i: int = 0) -> dict[str, Any]:
        await request.app.state.encharge_aiohttp.track("Registered user", **typical_event(i))
        return {"ok": True, "i": i}

    @app.get("/naive")
    async def naive(request: Request, i: int = 0) -> dict[str, Any]:
        response = await request.app.state.http.post(
            sink_url, json=typical_payload(i), headers=headers
        )
        return {"ok": response.status_code == 200, "i": i}

    def stats(request: Request) -> dict[str, dict[str, Any]]:
        return {
            name: dataclasses.asdict(getattr(request.app.state, name).stats)
            for name in ("encharge", "encharge_aiohttp")
        }

    @app.get("/_stats")
    async def get_stats(request: Request) -> dict[str, dict[str, Any]]:
        return stats(request)

    @app.get("/_flush")
    async def flush(request: Request) -> dict[str, dict[str, Any]]:
        await request.app.state.encharge.flush(timeout=_FLUSH_TIMEOUT)
        await request.app.state.encharge_aiohttp.flush(timeout=_FLUSH_TIMEOUT)
        return stats(request)

    return app
