"""The event loop a client is bound to: identify it, spawn the runner on it, reach it from threads.

Works for asyncio and trio (through anyio); `sniffio` tells which one is running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import sniffio

from ._exceptions import EventLoopError

__all__ = ["LoopBinding", "bind_current_loop", "no_loop_error"]


def _current_trio_token() -> object | None:
    import trio

    try:
        return trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None


class LoopBinding:
    """The loop (asyncio) or run (trio) that owns a client's queue and worker."""

    __slots__ = ("_spawn", "_threadsafe", "backend", "current", "token")

    def __init__(
        self,
        backend: str,
        token: object,
        current: Callable[[], object | None],
        spawn: Callable[[Callable[[], Awaitable[None]]], object],
        threadsafe: Callable[..., object],
    ) -> None:
        self.backend = backend
        self.token = token
        # Returns the calling thread's loop identity; `is token` means "on our loop".
        self.current = current
        self._spawn = spawn
        self._threadsafe = threadsafe

    def spawn(self, runner: Callable[[], Awaitable[None]]) -> object:
        """Start `runner` as a task owned by no caller (so no caller's cancel scope spans it)."""
        return self._spawn(runner)

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> None:
        """Run `callback(*args)` on the bound loop, from any thread."""
        try:
            self._threadsafe(callback, *args)
        except RuntimeError:
            raise EventLoopError(
                "the event loop this client runs on has stopped; create a new client"
            ) from None


def bind_current_loop() -> LoopBinding:
    """Bind to the running loop; raise EventLoopError when there is none."""
    try:
        backend = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        raise no_loop_error() from None
    if backend == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()
        return LoopBinding(
            backend,
            token,
            _current_trio_token,
            lambda runner: trio.lowlevel.spawn_system_task(runner),
            token.run_sync_soon,
        )
    if backend != "asyncio":  # pragma: no cover - anyio supports only these two
        raise EventLoopError(f"unsupported async library {backend!r}")
    loop = asyncio.get_running_loop()

    def spawn(runner: Callable[[], Awaitable[None]]) -> object:
        async def run() -> None:
            await runner()

        return loop.create_task(run(), name="encharge_async runner")

    # The C-level getter: no exception when there is no loop, and cheap enough for every call.
    current = asyncio.events._get_running_loop
    return LoopBinding(backend, loop, current, spawn, loop.call_soon_threadsafe)


def no_loop_error() -> EventLoopError:
    return EventLoopError(
        "no running event loop: start the client from async code (async with AsyncEncharge(...)"
        " or an await on it) before calling the *_nowait methods from plain functions"
    )
