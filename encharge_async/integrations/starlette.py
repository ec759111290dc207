"""Starlette and FastAPI: open the client in the app's lifespan, get it in handlers.

```python
from typing import Annotated

from fastapi import Depends, FastAPI

from encharge_async import AsyncEncharge
from encharge_async.integrations.starlette import encharge_lifespan, get_encharge

app = FastAPI(lifespan=encharge_lifespan())  # or encharge_lifespan(your_own_lifespan)


@app.post("/signup")
async def signup(
    email: str, encharge: Annotated[AsyncEncharge, Depends(get_encharge)]
) -> dict[str, bool]:
    await encharge.track("Registered user", email=email)
    return {"ok": True}
```

In Starlette, call `get_encharge(request)` in the endpoint.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, TypeVar, overload

try:
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection
except ImportError as _missing:  # pragma: no cover - tested in a subprocess without it
    raise ImportError(
        "encharge_async.integrations.starlette needs Starlette (or FastAPI): pip install starlette"
    ) from _missing

from .._client import AsyncEncharge
from . import ClientSource, _make_client

__all__ = ["STATE_ATTR", "ClientSource", "encharge_lifespan", "get_encharge"]

STATE_ATTR: Final = "encharge"
"""The `app.state` attribute the client is stored under."""

AppT = TypeVar("AppT", bound=Starlette)
StateT = TypeVar("StateT")


@overload
def encharge_lifespan(
    lifespan: None = None, *, client: ClientSource = None
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]: ...


@overload
def encharge_lifespan(
    lifespan: Callable[[AppT], AbstractAsyncContextManager[StateT]],
    *,
    client: ClientSource = None,
) -> Callable[[AppT], AbstractAsyncContextManager[StateT]]: ...


def encharge_lifespan(
    lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
    *,
    client: ClientSource = None,
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """Return a lifespan that opens an Encharge client at startup and closes it at shutdown.

    The client is stored as `app.state.encharge` (see `get_encharge`) before `lifespan`, the
    app's own lifespan if given, starts, and is closed after it has finished, so both its
    startup and shutdown code can send events. Closing delivers what is queued within the
    client's `shutdown_timeout`. Whatever `lifespan` yields (a state mapping, or None) is
    passed on to the server.

    `client` is a client, a function returning one (called at each startup: use this when
    the lifespan may run more than once, as in tests), or None for `AsyncEncharge()`
    configured from the environment. A client can be opened only once.

    Raises (at startup): `ConfigurationError` from `AsyncEncharge()`, `ClientClosedError` for
    a client that was already closed, and whatever `lifespan` raises.
    """
    if inspect.isasyncgenfunction(lifespan):  # undecorated, as Starlette also accepts
        lifespan = asynccontextmanager(lifespan)

    @asynccontextmanager
    async def encharge_app_lifespan(app: Any) -> AsyncIterator[Any]:
        async with _make_client(client) as encharge:
            setattr(app.state, STATE_ATTR, encharge)
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state

    return encharge_app_lifespan


def get_encharge(connection: HTTPConnection) -> AsyncEncharge:
    """Return the client that `encharge_lifespan` stored on the app (`app.state.encharge`).

    Takes the request (or websocket): call it in a Starlette endpoint, or use it as a
    FastAPI dependency, `Depends(get_encharge)`.

    Raises:
        RuntimeError: the app has no client, because its lifespan is not `encharge_lifespan`
            or has not run (a test client used without `with`, for instance).
    """
    encharge = getattr(connection.app.state, STATE_ATTR, None)
    if not isinstance(encharge, AsyncEncharge):
        raise RuntimeError(
            f"no Encharge client on app.state.{STATE_ATTR}: create the app with "
            "lifespan=encharge_lifespan(...) and make sure the server runs its lifespan"
        )
    return encharge
