"""The spool's own thread: runs blocking calls one at a time, in order, off the event loop.

Works on asyncio and trio: the thread hands each result back by scheduling `Event.set` on
the caller's loop (`call_soon_threadsafe`, or trio's `run_sync_soon`).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import anyio
import sniffio

__all__ = ["SpoolThread"]

_T = TypeVar("_T")


class _Job(Generic[_T]):
    __slots__ = ("error", "finished", "fn", "result", "wake")

    def __init__(self, fn: Callable[[], _T], wake: Callable[[], None]) -> None:
        self.fn = fn
        self.wake = wake
        self.result: _T | None = None
        self.error: BaseException | None = None
        self.finished = False

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the caller, never lost in the thread
            self.error = exc
        self.finished = True
        self.wake()


def _nothing() -> None:
    pass


def _waker() -> tuple[anyio.Event, Callable[[], None]]:
    """An event of the running loop, and a function that sets it from any thread."""
    event = anyio.Event()
    schedule: Callable[[Callable[[], object]], object]
    if sniffio.current_async_library() == "trio":
        import trio

        schedule = trio.lowlevel.current_trio_token().run_sync_soon
    else:
        schedule = asyncio.get_running_loop().call_soon_threadsafe

    def wake() -> None:
        # RuntimeError: the loop has ended (trio's RunFinishedError is one too).
        with contextlib.suppress(RuntimeError):
            schedule(event.set)

    return event, wake


class SpoolThread:
    """One daemon thread running submitted calls in submission order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job[object] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.run()

    async def call(self, fn: Callable[[], _T], *, timeout: float | None = None) -> _T:
        """Run `fn()` in the thread and return its result or raise its exception.

        The call is queued before the first await, so calls run in the order they are made.
        Cancellation waits for `fn` to finish (like `anyio.to_thread.run_sync`), so a
        cancelled call has either happened or not, never half. With `timeout`, raises
        TimeoutError after that many seconds and leaves `fn` to finish in the thread.
        """
        event, wake = _waker()
        job = _Job(fn, wake)
        self._jobs.put(job)  # type: ignore[arg-type]
        with anyio.CancelScope(shield=True) as scope:
            if timeout is not None:
                scope.deadline = anyio.current_time() + timeout
            await event.wait()
        if not job.finished:
            raise TimeoutError(f"the spool thread did not finish within {timeout} s")
        if job.error is not None:
            error, job.error = job.error, None
            raise error
        return job.result  # type: ignore[return-value]

    def submit(self, fn: Callable[[], object]) -> None:
        """Queue `fn()` without waiting for it (its result and errors are dropped)."""
        self._jobs.put(_Job(fn, _nothing))

    def stop(self) -> None:
        """Let the thread end once the calls already queued are done."""
        self._jobs.put(None)

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the thread to end: True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
