"""aiohttp: open the client in a `cleanup_ctx`, get it through a `web.AppKey`.

```python
from aiohttp import web

from encharge_async.integrations.aiohttp import ENCHARGE, encharge_ctx


async def signup(request: web.Request) -> web.Response:
    await request.config_dict[ENCHARGE].track("Registered user", email="jon@example.com")
    return web.json_response({"ok": True})


app = web.Application()
app.cleanup_ctx.append(encharge_ctx())
app.router.add_post("/signup", signup)
```
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Final

try:
    from aiohttp import web
except ImportError as _missing:  # pragma: no cover - tested in a subprocess without it
    raise ImportError(
        "encharge_async.integrations.aiohttp needs aiohttp: pip install aiohttp"
    ) from _missing

from .._client import AsyncEncharge
from . import ClientSource, _make_client

__all__ = ["ENCHARGE", "ClientSource", "encharge_ctx", "get_encharge"]

ENCHARGE: Final = web.AppKey("encharge", AsyncEncharge)
"""The key of the client in the application: `request.config_dict[ENCHARGE]` (which also
finds it from sub-applications) or `app[ENCHARGE]`."""


def encharge_ctx(
    client: ClientSource = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return a `cleanup_ctx` function that opens a client at startup and closes it at cleanup.

    Append it to `app.cleanup_ctx`; the client is stored as `app[ENCHARGE]`. Closing delivers
    what is queued within the client's `shutdown_timeout`; it happens after the server has
    stopped taking requests and `on_shutdown` has run, so their events are sent too.

    `client` is a client, a function returning one (called at each startup: use this when
    the app may start more than once, as in tests), or None for `AsyncEncharge()`
    configured from the environment. A client can be opened only once.

    Raises (at startup): `ConfigurationError` from `AsyncEncharge()`, `ClientClosedError` for
    a client that was already closed.
    """

    async def encharge_cleanup_ctx(app: web.Application) -> AsyncIterator[None]:
        async with _make_client(client) as encharge:
            app[ENCHARGE] = encharge
            yield

    return encharge_cleanup_ctx


def get_encharge(request: web.Request) -> AsyncEncharge:
    """Return the client `encharge_ctx` stored on the request's app (or a parent app).

    Raises:
        RuntimeError: no app in the chain has a client (`encharge_ctx` is not in its
            `cleanup_ctx`, or the app has not started).
    """
    try:
        return request.config_dict[ENCHARGE]
    except KeyError:
        raise RuntimeError(
            "no Encharge client in the app: add app.cleanup_ctx.append(encharge_ctx(...))"
        ) from None
