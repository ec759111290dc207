"""encharge_async.integrations.starlette, in process: Starlette and FastAPI apps."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from encharge_async import AsyncEncharge, ClientClosedError
from encharge_async.emulator import Emulator
from encharge_async.integrations.starlette import STATE_ATTR, encharge_lifespan, get_encharge
from encharge_async.testing import FakeAsyncEncharge

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KEY = "k-integration"

pytestmark = pytest.mark.anyio


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py afresh (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def starlette_app(
    lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None,
) -> Starlette:
    async def signup(request: Request) -> JSONResponse:
        encharge = get_encharge(request)
        mid = await encharge.track("Registered user", email=request.query_params["email"])
        greeting = getattr(request.state, "greeting", None)
        return JSONResponse({"message_id": mid, "greeting": greeting})

    return Starlette(routes=[Route("/signup", signup, methods=["POST"])], lifespan=lifespan)


class Fakes:
    """A client factory that remembers the clients it made."""

    def __init__(self) -> None:
        self.made: list[FakeAsyncEncharge] = []

    def __call__(self) -> FakeAsyncEncharge:
        self.made.append(FakeAsyncEncharge())
        return self.made[-1]


@asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    """Run the app's ASGI lifespan as a server does; yield an HTTP client and the state.

    Raises what the app raised if its startup failed.
    """
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
    to_app, app_inbox = anyio.create_memory_object_stream[MutableMapping[str, Any]](4)
    app_outbox, from_app = anyio.create_memory_object_stream[MutableMapping[str, Any]](4)
    errors: list[Exception] = []

    async def run() -> None:
        try:
            await app(scope, app_inbox.receive, app_outbox.send)
        except Exception as exc:
            errors.append(exc)

    async with to_app, app_inbox, app_outbox, from_app, anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(10):
            await to_app.send({"type": "lifespan.startup"})
            started = await from_app.receive()
        if started["type"] == "lifespan.startup.complete":
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                yield http, state
            with anyio.fail_after(10):
                await to_app.send({"type": "lifespan.shutdown"})
                assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"
    if errors:
        raise errors[0]


async def signups(http: httpx.AsyncClient, count: int) -> list[str]:
    ids = []
    for i in range(count):
        response = await http.post("/signup", params={"email": f"user{i}@example.com"})
        assert response.status_code == 200
        ids.append(response.json()["message_id"])
    return ids


@pytest.mark.slow
async def test_starlette_lifespan_drains_the_client_on_shutdown() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(0.2)  # still in flight when the app shuts down
        return httpx.Response(200, json={})

    clients: list[AsyncEncharge] = []

    def make() -> AsyncEncharge:
        client = AsyncEncharge(KEY, transport=httpx.MockTransport(slow), shutdown_timeout=5)
        clients.append(client)
        return client

    app = starlette_app(encharge_lifespan(client=make))
    async with serving(app) as (http, _):
        assert getattr(app.state, STATE_ATTR) is clients[0]
        ids = await signups(http, 5)
    [client] = clients
    assert client.stats.delivered == len(ids) == 5
    with pytest.raises(ClientClosedError):
        await client.track("After shutdown", user_id=1)


async def test_starlette_lifespan_wraps_the_apps_own() -> None:
    steps: list[str] = []

    @asynccontextmanager
    async def own(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        encharge: AsyncEncharge = app.state.encharge  # open before the app's own startup
        await encharge.track("App started", user_id="system")
        steps.append("startup")
        yield {"greeting": "hello"}  # lifespan state, passed on to the server
        steps.append("shutdown")
        await encharge.track("App stopping", user_id="system")  # still delivered

    fakes = Fakes()
    app = starlette_app(encharge_lifespan(own, client=fakes))
    for run in range(2):  # a factory gives each run of the lifespan a fresh client
        async with serving(app) as (http, state):
            assert state == {"greeting": "hello"}
            await signups(http, 1)
        names = [e.name for e in fakes.made[run].recorder.events]
        assert names == ["App started", "Registered user", "App stopping"]
    assert steps == ["startup", "shutdown"] * 2


@pytest.mark.slow
async def test_an_undecorated_async_generator_lifespan() -> None:
    async def own(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hi"}

    fakes = Fakes()
    app = starlette_app(encharge_lifespan(own, client=fakes))  # type: ignore[arg-type]
    async with serving(app) as (http, state):
        assert state == {"greeting": "hi"}
        await signups(http, 1)
    assert fakes.made[0].stats.delivered == 1


async def test_fastapi_dependency() -> None:
    fakes = Fakes()
    app = FastAPI(lifespan=encharge_lifespan(client=fakes))

    @app.post("/users/{user_id}/upgrade")
    async def upgrade(
        user_id: str, encharge: Annotated[AsyncEncharge, Depends(get_encharge)]
    ) -> dict[str, str]:
        return {"message_id": await encharge.track("Upgraded", user_id=user_id)}

    async with serving(app) as (http, _):
        mid = (await http.post("/users/42/upgrade")).json()["message_id"]
    [client] = fakes.made
    assert client.recorder.assert_tracked("Upgraded", user_id=42).message_id == mid


async def test_a_client_instance_opens_once() -> None:
    client = FakeAsyncEncharge()
    app = starlette_app(encharge_lifespan(client=client))
    async with serving(app) as (http, _):
        await signups(http, 1)
    assert client.stats.delivered == 1
    with pytest.raises(ClientClosedError):
        async with serving(app):
            pass  # the startup fails


async def test_a_failed_startup_closes_the_client() -> None:
    @asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        await app.state.encharge.track("Starting", user_id="system")
        raise RuntimeError("no database")
        yield

    fakes = Fakes()
    app = starlette_app(encharge_lifespan(broken, client=fakes))
    with pytest.raises(RuntimeError, match="no database"):
        async with serving(app):
            pass  # the startup fails
    [client] = fakes.made
    assert client.stats.delivered == 1  # closed, and drained on the way out
    with pytest.raises(ClientClosedError):
        await client.track("E", user_id=1)


async def test_get_encharge_without_the_lifespan_is_a_clear_error() -> None:
    app = starlette_app(None)
    async with serving(app) as (http, _):
        with pytest.raises(RuntimeError, match="encharge_lifespan"):
            await http.post("/signup", params={"email": "jon@example.com"})


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the emulator runs on asyncio
async def test_example_app_against_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_example("fastapi_app")
    app: FastAPI = module.app
    async with Emulator(write_key=KEY, latency=0.05) as emulator:
        # The example's client is AsyncEncharge(), configured from the environment.
        monkeypatch.setenv("ENCHARGE_WRITE_KEY", KEY)
        monkeypatch.setenv("ENCHARGE_INGEST_URL", emulator.url)
        ids: list[str] = []
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                for i in range(5):
                    response = await http.post("/signup", params={"email": f"u{i}@example.com"})
                    ids.append(response.json()["message_id"])
                response = await http.post("/users/7/upgrade", params={"plan": "Pro"})
                ids.append(response.json()["message_id"])
        # Leaving the lifespan drained the queue: no waiting here.
        assert len(emulator.events) == len(ids) + 1  # the upgrade also identifies
        assert set(ids) <= {e.idempotency_key for e in emulator.events}
        person = emulator.person(user_id="7")
        assert person is not None
        assert person.events == ("Upgraded",)
        assert person.fields["plan"] == "Pro"


async def test_the_documented_dependency_override() -> None:
    app = load_example("fastapi_app").app  # its lifespan is not run: no real client
    async with FakeAsyncEncharge() as encharge:
        app.dependency_overrides[get_encharge] = lambda: encharge
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.post("/signup", params={"email": "jon@example.com"})
        assert response.status_code == 200
        event = await encharge.assert_tracked("Registered user", email="jon@example.com")
        assert event.message_id == response.json()["message_id"]
