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

    __slots__ = ("_spawn", "_threadsafe", "backend", "clock", "current", "running", "token")

    def __init__(
        self,
        backend: str,
        token: object,
        current: Callable[[], object | None],
        spawn: Callable[[Callable[[], Awaitable[None]]], object],
        threadsafe: Callable[..., object],
        running: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        self.backend = backend
        # The loop's clock, `anyio.current_time()`'s, without finding the backend on each
        # call: the workers read it three times per event.
        self.clock = clock
        # Whether the loop runs now (a loop closed without cancelling our runner looks open
        # otherwise); cheap enough for the hot path.
        self.running = running
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
            # A trio run always cancels its system tasks as it ends: the runner says so.
            _always,
            trio.current_time,
        )
    if backend != "asyncio":  # pragma: no cover - anyio supports only these two
        raise EventLoopError(f"unsupported async library {backend!r}")
    loop = asyncio.get_running_loop()

    def spawn(runner: Callable[[], Awaitable[None]]) -> object:
        async def run() -> None:
            await runner()

        return loop.create_task(run(), name="encharge_async runner")

    return LoopBinding(
        backend,
        loop,
        _current_asyncio_loop,
        spawn,
        loop.call_soon_threadsafe,
        loop.is_running,
        loop.time,
    )


def _always() -> bool:
    return True


def _current_asyncio_loop() -> object | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def no_loop_error() -> EventLoopError:
    return EventLoopError(
        "no running event loop: start the client from async code (async with AsyncEncharge(...)"
        " or an await on it) before calling the *_nowait methods from plain functions"
    )
