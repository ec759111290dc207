"""Serverless functions (AWS Lambda and alike): flush the queue before the handler returns.

```python
from encharge_async import Encharge
from encharge_async.integrations.serverless import flush_after

encharge = Encharge()  # at module level: reused while the runtime keeps the process warm


@flush_after(encharge, timeout=2)
def handler(event, context):
    encharge.track("Signed up", email=event["email"])
    return {"statusCode": 200}
```

Between invocations the runtime freezes the process: the client's background thread stops
with it, so what is queued when the handler returns would wait, undelivered, until the
next invocation (or be lost with the process). See docs/frameworks/serverless.md.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

import anyio.to_thread

from .._client import AsyncEncharge
from .._config import check_seconds
from .._constants import SERVERLESS_TIME_MARGIN
from .._stats import FlushResult
from .._sync import Encharge

__all__ = ["flush_after"]

_logger = logging.getLogger("encharge_async")

P = ParamSpec("P")
R = TypeVar("R")


def flush_after(
    client: Encharge | AsyncEncharge, *, timeout: float | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function handler to flush `client` before it returns, or raises.

    The flush waits until every event queued so far is delivered, failed or dropped, for
    at most `timeout` seconds (default: the client's `shutdown_timeout`), and never past
    the invocation's deadline: when an argument has `get_remaining_time_in_millis()` (AWS
    Lambda's context), the flush ends `SERVERLESS_TIME_MARGIN` (0.5) seconds before it.
    Events still pending then stay queued, for the next invocation of a warm process; a
    warning logs how many.

    Works on plain and `async def` handlers. A sync `Encharge` may flush either (from an
    async handler, in a worker thread, so the event loop stays free); an `AsyncEncharge`
    needs an async handler running on the client's event loop. The handler's result or
    exception is passed on untouched: a failing flush is logged, never raised.

    Raises (when decorating):
        TypeError: an `AsyncEncharge` on a plain function, or `client` is not a client.
        ConfigurationError: a negative or non-numeric `timeout`.
    """
    if not isinstance(client, (Encharge, AsyncEncharge)):
        raise TypeError(f"client must be an Encharge or AsyncEncharge, not {type(client).__name__}")
    if timeout is not None:
        timeout = check_seconds("timeout", timeout, allow_zero=True)

    def decorate(handler: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(handler):
            async_handler = handler

            @functools.wraps(handler)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                try:
                    return await async_handler(*args, **kwargs)
                finally:
                    await _aflush(client, _bound(timeout, args, kwargs))

            return cast("Callable[P, R]", async_wrapper)
        if not isinstance(client, Encharge):
            raise TypeError(
                f"{handler.__qualname__} is a plain function: flushing an AsyncEncharge "
                "needs an async def handler (or use the sync Encharge)"
            )
        sync_client = client

        @functools.wraps(handler)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return handler(*args, **kwargs)
            finally:
                _report(_flush_quietly(sync_client, _bound(timeout, args, kwargs)))

        return wrapper

    return decorate


def _bound(timeout: float | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
    """`timeout`, shortened to end before the invocation's deadline if a context tells it."""
    for value in (*args, *kwargs.values()):
        remaining = getattr(value, "get_remaining_time_in_millis", None)
        if callable(remaining):
            try:
                left = float(remaining()) / 1000 - SERVERLESS_TIME_MARGIN
            except (TypeError, ValueError):  # not Lambda's context after all
                continue
            left = max(left, 0.0)
            return left if timeout is None else min(timeout, left)
    return timeout


def _flush_quietly(client: Encharge, timeout: float | None) -> FlushResult | None:
    try:
        return client.flush(timeout)
    except Exception:  # the handler's outcome matters more than telemetry's
        _logger.exception("flushing the Encharge client after the handler failed")
        return None


async def _aflush(client: Encharge | AsyncEncharge, timeout: float | None) -> None:
    result: FlushResult | None
    if isinstance(client, Encharge):
        result = await anyio.to_thread.run_sync(_flush_quietly, client, timeout)
    else:
        try:
            result = await client.flush(timeout)
        except Exception:
            _logger.exception("flushing the Encharge client after the handler failed")
            result = None
    _report(result)


def _report(result: FlushResult | None) -> None:
    if result is not None and result.pending:
        _logger.warning(
            "%d Encharge event(s) still pending after the flush: they wait for the next "
            "invocation (raise the flush timeout, or the function's, to deliver them now)",
            result.pending,
        )
