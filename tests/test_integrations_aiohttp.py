"""encharge_async.integrations.aiohttp, in process: aiohttp apps on a loopback test server."""

from __future__ import annotations

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from encharge_async import AsyncEncharge, ClientClosedError
from encharge_async.emulator import Emulator
from encharge_async.integrations.aiohttp import ENCHARGE, encharge_ctx, get_encharge
from encharge_async.testing import FakeAsyncEncharge

from .test_integrations_starlette import KEY, Fakes, load_example

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


@pytest.mark.slow
async def test_example_app_drains_on_cleanup(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_example("aiohttp_app")
    # With latency, the events are still in flight when the server stops.
    async with Emulator(write_key=KEY, latency=0.2) as emulator:
        monkeypatch.setenv("ENCHARGE_WRITE_KEY", KEY)
        monkeypatch.setenv("ENCHARGE_INGEST_URL", emulator.url)
        app: web.Application = module.init_app([])
        ids: list[str] = []
        async with TestClient(TestServer(app)) as http:
            encharge = app[ENCHARGE]
            for i in range(5):
                response = await http.post("/signup", params={"email": f"u{i}@example.com"})
                assert response.status == 200
                ids.append((await response.json())["message_id"])
        # The server's cleanup closed the client, which delivered everything first.
        assert sorted(str(e.idempotency_key) for e in emulator.events) == sorted(ids)
        with pytest.raises(ClientClosedError):
            await encharge.track("After cleanup", user_id=1)


async def test_client_factory_and_sub_applications() -> None:
    fakes = Fakes()

    async def signup(request: web.Request) -> web.Response:
        mid = await get_encharge(request).track("Registered user", email="jon@example.com")
        return web.json_response({"message_id": mid})

    root = web.Application()
    root.cleanup_ctx.append(encharge_ctx(fakes))
    sub = web.Application()
    sub.router.add_post("/signup", signup)
    root.add_subapp("/sub/", sub)
    async with TestClient(TestServer(root)) as http:
        response = await http.post("/sub/signup")
        mid = (await response.json())["message_id"]
    [client] = fakes.made
    assert client.recorder.assert_tracked("Registered user").message_id == mid


async def test_a_client_instance_opens_once() -> None:
    client = FakeAsyncEncharge()

    def app() -> web.Application:
        app = web.Application()
        app.cleanup_ctx.append(encharge_ctx(client))
        return app

    async with TestServer(app()):
        assert client.stats.enqueued == 0
    server = TestServer(app())
    try:
        with pytest.raises(ClientClosedError):
            await server.start_server()
    finally:
        await server.close()


@pytest.mark.slow
async def test_the_default_client_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENCHARGE_WRITE_KEY", KEY)
    monkeypatch.setenv("ENCHARGE_INGEST_URL", "http://127.0.0.1:9/v1/")
    app = web.Application()
    app.cleanup_ctx.append(encharge_ctx())
    async with TestClient(TestServer(app)):
        encharge = app[ENCHARGE]
        assert isinstance(encharge, AsyncEncharge)
        assert encharge.endpoint == "http://127.0.0.1:9/v1/"


def test_get_encharge_without_the_context_is_a_clear_error() -> None:
    request = make_mocked_request("POST", "/signup", app=web.Application())
    with pytest.raises(RuntimeError, match="encharge_ctx"):
        get_encharge(request)


async def test_the_cleanup_context_keeps_the_client_until_cleanup() -> None:
    recorded: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        recorded.append(request)
        return httpx.Response(200, json={})

    async def on_shutdown(app: web.Application) -> None:
        await app[ENCHARGE].track("Shutting down", user_id="system")  # still open here

    app = web.Application()
    app.cleanup_ctx.append(
        encharge_ctx(lambda: AsyncEncharge(KEY, transport=httpx.MockTransport(handler)))
    )
    app.on_shutdown.append(on_shutdown)
    async with TestClient(TestServer(app)):
        pass
    assert [r.content for r in recorded] == [b'{"name":"Shutting down","user":{"userId":"system"}}']
