"""Framework integrations: a few lines to open, share and close a client in a web app.

- `encharge_async.integrations.starlette`: Starlette and FastAPI (lifespan + dependency).
- `encharge_async.integrations.aiohttp`: aiohttp (`cleanup_ctx` + `web.AppKey`).
- `encharge_async.integrations.django`: Django (`settings.ENCHARGE`, `get_encharge()`).
- `encharge_async.integrations.celery`: Celery (`setup_encharge(app)`).
- `encharge_async.integrations.serverless`: `flush_after` for function handlers (AWS
  Lambda), which imports no framework.
- Other sync code (Flask, scripts): `encharge_async.Encharge`.

Each module imports its framework, which is not a dependency of this package: import the
one your app uses. See docs/integrations.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from .._client import AsyncEncharge

__all__ = ["ClientSource"]

ClientSource: TypeAlias = "AsyncEncharge | Callable[[], AsyncEncharge] | None"
"""What the integrations accept as `client=`: a client, a function making one at startup,
or None for `AsyncEncharge()` configured from the environment (`ENCHARGE_WRITE_KEY`,
`ENCHARGE_INGEST_URL`)."""


def _make_client(client: ClientSource) -> AsyncEncharge:
    if client is None:
        return AsyncEncharge()
    if isinstance(client, AsyncEncharge):
        return client
    return client()
