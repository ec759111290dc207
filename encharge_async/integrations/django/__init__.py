"""Django: one sync client per process, configured from `settings.ENCHARGE`.

```python
# settings.py
INSTALLED_APPS = [..., "encharge_async.integrations.django"]
ENCHARGE = {"shutdown_timeout": 5}  # Encharge's keyword arguments; the key from the env

# views.py
from encharge_async.integrations.django import get_encharge


def signup(request):
    get_encharge().track("Registered user", email=request.POST["email"])
    ...
```

The client is the sync `Encharge`: its calls return at once, from sync and async views
alike, and it is closed when the process exits. Under ASGI, `encharge_asgi` closes it in
the server's lifespan shutdown instead.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final

import anyio.to_thread
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from ..._stats import FlushResult
from ..._sync import Encharge

__all__ = ["SETTING", "close_encharge", "encharge_asgi", "encharge_options", "get_encharge"]

SETTING: Final = "ENCHARGE"
"""The Django setting that holds the client's keyword arguments."""

ASGIScope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[ASGIScope, ASGIReceive, ASGISend], Awaitable[None]]

_lock = threading.Lock()
_client: Encharge | None = None


def encharge_options() -> dict[str, Any]:
    """Return the keyword arguments `get_encharge` passes to `Encharge`: `settings.ENCHARGE`.

    Without the setting, `{}`: the client then reads `ENCHARGE_WRITE_KEY` and
    `ENCHARGE_INGEST_URL` from the environment, as it does for any option left out.

    Raises:
        ImproperlyConfigured: the setting is not a dict, or names an option `Encharge`
            does not take.
    """
    options = getattr(settings, SETTING, None)
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(
            f"settings.{SETTING} must be a dict of Encharge's keyword arguments, "
            f"not a {type(options).__name__}"
        )
    options = dict(options)
    try:
        # Checked against the signature of the installed client, so that options added to
        # it later pass through without a change here.
        inspect.signature(Encharge).bind(**options)
    except TypeError as exc:  # names only the option, never a value (the write key)
        raise ImproperlyConfigured(f"settings.{SETTING}: {exc}") from None
    return options


def get_encharge() -> Encharge:
    """Return the process-wide client, created on first call from `encharge_options()`.

    Thread-safe, and cheap after the first call. Creating the client starts nothing (its
    background thread starts on its first event), so it may be created at import, in a
    gunicorn `--preload` master: forked workers each get a clean copy. It is closed at
    process exit, or by `close_encharge()`; a call after `close_encharge()` creates a new
    one.

    Raises:
        ImproperlyConfigured: `settings.ENCHARGE` is not a dict of `Encharge`'s options.
        ConfigurationError: the client refused the configuration (no write key, say).
    """
    global _client
    client = _client
    if client is not None:
        return client
    with _lock:
        if _client is None:
            _client = Encharge(**encharge_options())
        return _client


def close_encharge(timeout: float | None = None) -> FlushResult:
    """Close the process-wide client, if one was created: deliver what is queued.

    Bounded by `timeout` and the client's `shutdown_timeout` (see `Encharge.close`).
    Without it, the client is closed at interpreter exit; call this where the process ends
    without running `atexit` handlers, or to deliver earlier (a management command's end,
    a gunicorn `worker_exit` hook). A later `get_encharge()` creates a new client.
    """
    global _client
    with _lock:
        client, _client = _client, None
    if client is None:
        return FlushResult()
    return client.close(timeout)


def encharge_asgi(application: ASGIApp) -> ASGIApp:
    """Wrap Django's ASGI application to close the client at the server's shutdown.

    Django does not speak ASGI's lifespan protocol; the wrapper answers it, and at
    shutdown (after the server has finished its requests) runs `close_encharge()` in a
    worker thread, so that the event loop stays free while the queue is delivered.
    Everything else goes to `application`.

    ```python
    # asgi.py
    from django.core.asgi import get_asgi_application

    from encharge_async.integrations.django import encharge_asgi

    application = encharge_asgi(get_asgi_application())
    ```
    """

    async def app(scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "lifespan":
            await application(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await anyio.to_thread.run_sync(close_encharge)
                except Exception as exc:  # a stuck client: the server still shuts down
                    await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    return app


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    # override_settings(ENCHARGE=...) in tests: the next get_encharge() uses the new value.
    if setting == SETTING:
        close_encharge()


setting_changed.connect(_on_setting_changed, dispatch_uid="encharge_async.setting_changed")


def _reset_lock_after_fork() -> None:  # pragma: no cover - runs in forked children
    # Another thread of the parent may have held it at the fork; nobody releases it here.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(after_in_child=_reset_lock_after_fork)
