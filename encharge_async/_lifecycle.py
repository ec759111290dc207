"""The life of one client: unopened -> open -> closing -> closed, and a fresh start in a fork.

`AsyncEncharge` delegates here everything that depends on where the client is in its life:
starting on the first use (binding the running loop), checking that later calls come from
that loop, opening, flushing and closing the pipeline. In a forked child every client that
is not closed gets a new pipeline: the parent's loop, sockets and queue are not the child's.
"""

from __future__ import annotations

import enum
import logging
import os
import weakref

import anyio

from ._builders import check_timeout
from ._config import Config
from ._constants import TRANSPORT_CLOSE_TIMEOUT
from ._events import Entry
from ._exceptions import ClientClosedError, EventLoopError
from ._pipeline import Pipeline
from ._runtime import LoopBinding, bind_current_loop
from ._stats import FlushResult

__all__ = ["ClientState", "Lifecycle"]

logger = logging.getLogger("encharge_async")


class ClientState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Lifecycle:
    """The state of one client and the pipeline it runs (a fresh one in a forked child)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.state = ClientState.UNOPENED
        self._close_result: FlushResult | None = None
        self._closed: anyio.Event | None = None
        self._new_pipeline()
        _live_lifecycles.add(self)

    def _new_pipeline(self) -> None:
        self.pipeline = Pipeline(self._config, self.enter)
        # The clients' door for the events they built (the async client on its loop, the
        # sync one in its callers' threads): the intake's, rebound with each pipeline.
        self.put_nowait = self.pipeline.intake.put_nowait

    @property
    def unclosed(self) -> bool:
        """Whether the client was started and not closed (its collection would leak it)."""
        return self.state is ClientState.OPEN or self.state is ClientState.CLOSING

    async def open(self) -> None:
        """`async with`: start the client and its pipeline; a failure to open closes it."""
        if self._config.disabled:  # nothing to start
            if self.state is not ClientState.UNOPENED:
                raise ClientClosedError(f"the client is {self.state.value}; create a new one")
            await anyio.lowlevel.checkpoint()
            return
        self.enter()
        error = await self.pipeline.open()
        if error is not None:
            await self.aclose()
            raise error

    async def submit(self, entry: Entry, wait: bool, timeout: float | None) -> str:
        """An event that may wait: for room, or with `wait=True` for its outcome."""
        if self._config.disabled:  # validated; there is nothing to wait for
            self.pipeline.intake.put_nowait(entry)
            await anyio.lowlevel.checkpoint()
            return entry.message_id
        # Waiting needs the client's own loop; only a plain hand-off crosses loops.
        self.enter()
        return await self.pipeline.submit(entry, wait, timeout)

    def enter(self) -> LoopBinding:
        """Start on the running loop, or check that we are on the one we started on."""
        if self.state is ClientState.UNOPENED:
            binding = bind_current_loop()
            self._closed = anyio.Event()
            self.state = ClientState.OPEN
            self.pipeline.start(binding)
            return binding
        if self.state is not ClientState.OPEN:
            raise ClientClosedError(f"the client is {self.state.value}; create a new one")
        failure = self.pipeline.failure
        if failure is not None:
            raise ClientClosedError(
                f"the client stopped delivering events ({failure}); create a new one"[:500]
            ) from failure
        return self.check_loop()

    def check_loop(self) -> LoopBinding:
        """The client's loop binding, if we run on that loop; else EventLoopError."""
        binding = self.pipeline.binding
        assert binding is not None
        current = binding.current()
        if (
            current is None
            and not self.pipeline.intake.accepting
            and self.state is ClientState.OPEN
        ):
            raise EventLoopError(
                "the event loop this client runs on has stopped; create a new client"
            )
        if current is not binding.token:
            raise EventLoopError(
                "this AsyncEncharge runs on another event loop (it was started there); use one "
                "client per event loop, for instance one per process created in the app's "
                "lifespan"
            )
        return binding

    async def flush(self, timeout: float | None) -> FlushResult:
        """`AsyncEncharge.flush`."""
        check_timeout(timeout)
        if self.state is ClientState.UNOPENED or self.state is ClientState.CLOSED:
            await anyio.lowlevel.checkpoint()
            return FlushResult()
        self.check_loop()
        bound = self._config.shutdown_timeout if timeout is None else timeout
        result = await self.pipeline.flush(bound)
        if result == FlushResult():
            await anyio.lowlevel.checkpoint()  # like every async call: a chance to switch
        return result

    async def aclose(self, timeout: float | None = None) -> FlushResult:
        """`AsyncEncharge.aclose`."""
        check_timeout(timeout)
        bound = self._config.shutdown_timeout if timeout is None else timeout
        if self.state is ClientState.CLOSED:
            return self._close_result or FlushResult()
        if self.state is ClientState.UNOPENED:
            self.state = ClientState.CLOSED
            self.pipeline.intake.close()
            self._close_result = FlushResult()
            await self.pipeline.dispatcher.aclose()  # the user's transport, if any
            return self._close_result
        if self.state is ClientState.OPEN and self.pipeline.ended:
            # Its event loop ended under it (the runner delivered what it could on the way
            # out and reported the rest): there is nothing left to close but the state.
            self.state = ClientState.CLOSED
            self._close_result = FlushResult()
            await self.pipeline.dispatcher.aclose()  # connections a failed runner left
            return self._close_result
        self.check_loop()
        assert self._closed is not None
        if self.state is ClientState.CLOSING:
            # Another task is closing; wait for it within the same bound.
            with anyio.move_on_after(bound + 2 * TRANSPORT_CLOSE_TIMEOUT):
                await self._closed.wait()
            return self._close_result or FlushResult()
        self.state = ClientState.CLOSING
        pipeline = self.pipeline
        pipeline.begin_closing(bound)
        # Nothing new is accepted from here on: the counters' growth is what closing did,
        # which stays right even if this call is cancelled half-way.
        before = pipeline.stats()
        try:
            await pipeline.flush(bound)
        finally:
            with anyio.CancelScope(shield=True):
                held = await pipeline.stop(bound)
                after = pipeline.stats()
                result = self._close_result = FlushResult(
                    delivered=after.delivered - before.delivered,
                    failed=after.failed - before.failed,
                    dropped=after.dropped - before.dropped,
                    pending=0,
                    spooled=held,
                )
                self.state = ClientState.CLOSED
                self._closed.set()
        logger.debug("client closed: %s", result)
        return result

    def after_fork_in_child(self) -> None:  # pragma: no cover - runs in forked children
        # The parent's loop, sockets and queue are not ours: start clean, lazily.
        if self.state is ClientState.CLOSED:
            return
        self.state = ClientState.UNOPENED
        self._new_pipeline()


_live_lifecycles: weakref.WeakSet[Lifecycle] = weakref.WeakSet()


def _reset_lifecycles_after_fork() -> None:  # pragma: no cover - runs in forked children
    for lifecycle in list(_live_lifecycles):
        lifecycle.after_fork_in_child()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(after_in_child=_reset_lifecycles_after_fork)
