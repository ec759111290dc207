"""The background thread and event loop that run a sync `Encharge`'s `AsyncEncharge`.

`BackgroundLoop` starts the thread lazily (on first use, from any thread), runs calls on its
loop with a bound, closes it, and starts afresh in a forked child. The process-wide hooks
live here too: the exit handler that closes started clients, the SIGTERM handler that does
the same when nothing else handles SIGTERM, and the fork hooks.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import enum
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

import anyio

from ._client import AsyncEncharge
from ._config import Config
from ._constants import TRANSPORT_CLOSE_TIMEOUT
from ._exceptions import ClientClosedError, EventLoopError
from ._stats import FlushResult

__all__ = ["BackgroundLoop", "LoopState"]

logger = logging.getLogger("encharge_async")

T = TypeVar("T")

# How long the first call waits for the background loop to start.
_START_TIMEOUT: Final = 10.0
# Extra time a blocking call gives the background loop beyond the call's own bound, so that
# a stuck loop is reported as a TimeoutError instead of hanging the caller.
_LOOP_MARGIN: Final = 5.0


class LoopState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class _Start:
    """The hand-shake between a caller starting the background thread and that thread."""

    __slots__ = ("abandoned", "error", "lock", "loop", "ready", "stop")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.abandoned = False
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None


class _ThreadPerCall(concurrent.futures.ThreadPoolExecutor):
    """The background loop's default executor: one daemon thread per call.

    asyncio resolves host names in its default executor. A `ThreadPoolExecutor` refuses
    work once the interpreter has begun to exit, which is exactly when the exit handler
    may need a new connection to deliver what is left; a plain thread still starts then,
    and where even that is refused, the call runs right away, on the loop's thread.
    (asyncio only accepts a `ThreadPoolExecutor`, hence the subclass.)
    """

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():  # pragma: no cover - cancelled
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        try:
            threading.Thread(target=run, name="encharge-async-executor", daemon=True).start()
        except RuntimeError:  # Python 3.12 starts no thread at exit: block the loop instead
            run()
        return future


class BackgroundLoop:
    """The thread and loop of one sync client, and the `AsyncEncharge` running there."""

    def __init__(self, config: Config, *, atexit_timeout: float, handle_sigterm: bool) -> None:
        self._config = config
        self.atexit_timeout = atexit_timeout
        self.handle_sigterm = handle_sigterm
        self._new_client()
        self.reset()
        _all_loops.add(self)
        if handle_sigterm:
            _install_sigterm_handler()

    def _new_client(self) -> None:
        # The one deliberate private call into AsyncEncharge: share the validated Config,
        # and get the door for events the sync client builds in its callers' threads.
        self.client, self.lifecycle = AsyncEncharge._from_config(self._config)  # noqa: SLF001

    def reset(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.state = LoopState.NEW
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.thread_ident: int | None = None  # the background thread's, for hooks
        self.stop: asyncio.Event | None = None  # set on the loop: the thread may end
        self.close_future: concurrent.futures.Future[FlushResult] | None = None
        self.close_result: FlushResult | None = None

    def __repr__(self) -> str:  # log lines name the sync client this loop runs
        return f"<Encharge endpoint={self.client.endpoint!r} state={self.state.value}>"

    def on_own_thread(self) -> bool:
        """Whether the caller is this loop's thread (a hook): it must never block."""
        return self.thread_ident == threading.get_ident()

    def run(
        self,
        loop: asyncio.AbstractEventLoop,
        submit: Callable[[], Coroutine[Any, Any, T]],
        bound: float,
    ) -> T:
        """Run `submit()` on the client's loop and wait for it, at most bound + a margin."""
        coroutine = submit()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # the loop has stopped: the client closed
            coroutine.close()
            raise ClientClosedError("the client is closed") from None
        guard = bound + _LOOP_MARGIN
        try:
            return future.result(guard)
        except concurrent.futures.CancelledError:  # the loop stopped under the call
            raise ClientClosedError("the client closed before the call completed") from None
        except concurrent.futures.TimeoutError:
            if future.done():  # the call's own TimeoutError (an alias from Python 3.11)
                raise
            future.cancel()
            raise TimeoutError(
                f"the client's background thread did not answer within {guard:g}s"
            ) from None

    # -- lifecycle ---------------------------------------------------------------------------

    def check_fork(self) -> None:
        # The at-fork hook resets children of os.fork(); this catches forks that bypass it.
        if self.pid != os.getpid():
            self.after_fork_in_child()

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The background loop, started on first use; ClientClosedError once closing."""
        self.check_fork()
        loop = self.loop
        if loop is not None and self.state is LoopState.RUNNING:
            return loop
        with self.lock:
            if self.state is LoopState.NEW:
                self._start()
            if self.state is not LoopState.RUNNING:
                raise ClientClosedError(f"the client is {self.state.value}; create a new one")
            assert self.loop is not None
            return self.loop

    def _start(self) -> None:
        """Start the background thread and wait until its client is open (lock held)."""
        with _starting_changed:
            global _starting
            _starting += 1
        try:
            self._start_thread()
        finally:
            with _starting_changed:
                _starting -= 1
                _starting_changed.notify_all()

    def _start_thread(self) -> None:
        start = _Start()
        thread = threading.Thread(
            target=self._thread_main,
            args=(self.client, start),
            name="encharge-async",
            daemon=True,
        )
        thread.start()
        start.ready.wait(_START_TIMEOUT)
        with start.lock:  # decided under the lock the thread takes to announce it is ready
            ready = start.ready.is_set()
            start.abandoned = not ready
        if not ready:
            # A thread that comes up later closes itself; the next call starts afresh.
            self._new_client()
            raise EventLoopError(
                f"the Encharge background thread did not start within {_START_TIMEOUT:g}s "
                "(are threads enabled? uWSGI needs --enable-threads)"
            )
        if start.error is not None:
            self._new_client()
            raise start.error
        self.thread = thread
        self.thread_ident = thread.ident
        self.stop = start.stop
        self.loop = start.loop
        self.state = LoopState.RUNNING
        _register_started(self)

    def _thread_main(self, client: AsyncEncharge, start: _Start) -> None:
        try:
            asyncio.run(self._serve(client, start))
        except BaseException as exc:  # pragma: no cover - asyncio.run itself failed
            start.error = exc
            start.ready.set()

    async def _serve(self, client: AsyncEncharge, start: _Start) -> None:
        asyncio.get_running_loop().set_default_executor(_ThreadPerCall())
        # The client's runner begins with an anyio.to_thread call; Python 3.12 refuses to
        # start threads at interpreter exit, which is when a script that exits right after
        # its first call gets there. Start anyio's (reusable) worker thread now.
        await anyio.to_thread.run_sync(lambda: None)
        try:
            await client.__aenter__()
        except Exception as exc:
            start.error = exc
            start.ready.set()
            return
        stop = asyncio.Event()
        with start.lock:
            abandoned = start.abandoned
            if not abandoned:
                start.loop = asyncio.get_running_loop()
                start.stop = stop
                start.ready.set()
        if abandoned:
            await client.aclose()
            return
        await stop.wait()
        # asyncio.run() now cancels calls still running here (their callers get
        # ClientClosedError) and closes the loop.

    def begin_close(self, timeout: float | None) -> concurrent.futures.Future[FlushResult]:
        with self.lock:
            if self.close_future is not None:
                return self.close_future
            future: concurrent.futures.Future[FlushResult]
            if self.state is LoopState.NEW:
                future = concurrent.futures.Future()
                future.set_result(FlushResult())
                self.state = LoopState.CLOSED
            else:
                assert self.loop is not None
                self.state = LoopState.CLOSING
                _started_loops.discard(self)
                coroutine = self._aclose(timeout)
                try:
                    future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
                except RuntimeError:  # pragma: no cover - the thread died: nothing to drain
                    coroutine.close()
                    future = concurrent.futures.Future()
                    future.set_result(FlushResult())
            self.close_future = future
            return future

    async def _aclose(self, timeout: float | None) -> FlushResult:
        """On the loop: close the async client within `timeout`, then let the thread end."""
        client = self.client
        stop = self.stop
        assert stop is not None
        try:
            bound = None if timeout is None else min(timeout, self._config.shutdown_timeout)
            return await client.aclose(bound)
        finally:
            stop.set()

    def finish_close(
        self, future: concurrent.futures.Future[FlushResult], timeout: float | None
    ) -> FlushResult:
        bound = (
            self._config.shutdown_timeout
            if timeout is None
            else min(timeout, self._config.shutdown_timeout)
        )
        guard = bound + 2 * TRANSPORT_CLOSE_TIMEOUT + _LOOP_MARGIN
        try:
            result = future.result(guard)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"the client's background thread did not close within {guard:g}s"
            ) from None
        thread = self.thread
        if thread is not None:
            thread.join(_LOOP_MARGIN)  # the loop only has to shut down now
        with self.lock:
            self.state = LoopState.CLOSED
            self.close_result = result
        return result

    def after_fork_in_child(self) -> None:
        # The parent's thread does not exist here; its loop is unusable, and closing it
        # would touch the parent's file descriptors: keep it referenced, unused.
        if self.loop is not None and not self.loop.is_closed():
            _orphaned_loops.append(self.loop)
        closed = self.state is LoopState.CLOSING or self.state is LoopState.CLOSED
        used = self.state is not LoopState.NEW
        self.reset()
        if closed:
            self.state = LoopState.CLOSED
            self.close_future = concurrent.futures.Future()
            self.close_future.set_result(FlushResult())
        elif used:
            self._new_client()


# Every instance (for the fork hook), and those with a running thread (for the exit hook).
_all_loops: weakref.WeakSet[BackgroundLoop] = weakref.WeakSet()
_started_loops: set[BackgroundLoop] = set()
_orphaned_loops: list[asyncio.AbstractEventLoop] = []
_atexit_lock = threading.Lock()
_atexit_registered = False


def _register_started(client: BackgroundLoop) -> None:
    global _atexit_registered
    with _atexit_lock:
        _started_loops.add(client)
        if not _atexit_registered:
            atexit.register(_close_at_exit)
            _atexit_registered = True
    if client.handle_sigterm:
        _install_sigterm_handler()


_sigterm_installed = False


def _install_sigterm_handler() -> None:
    """Drain on SIGTERM when nobody else handles it (main thread only, default disposition).

    Python's default SIGTERM ends the process at once, without exit handlers: `docker stop`,
    systemd and Kubernetes would lose what is queued. Servers that own SIGTERM (gunicorn,
    uvicorn, Celery) have their own handler, and run the exit handlers as they stop.
    """
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no SIGTERM here
        return
    _sigterm_installed = True


def _on_sigterm(signum: int, frame: object) -> None:
    """Close the started clients (bounded), then end the process the way SIGTERM would."""
    try:
        if _started_loops:
            logger.info("SIGTERM: delivering what is queued before exiting")
            _close_at_exit()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _close_at_exit() -> None:
    """Close every started client, concurrently, each within its `atexit_timeout`."""
    closing: list[tuple[BackgroundLoop, concurrent.futures.Future[FlushResult]]] = []
    for client in list(_started_loops):
        try:
            closing.append((client, client.begin_close(client.atexit_timeout)))
        except Exception:  # pragma: no cover - defensive: exit must go on
            logger.exception("closing %r at exit failed", client)
    for client, future in closing:
        try:
            result = client.finish_close(future, client.atexit_timeout)
        except Exception:
            logger.exception("closing %r at exit failed", client)
        else:
            logger.debug("closed %r at exit: %s", client, result)


# Clients whose background thread is starting: loading TLS certificates, importing. A fork
# meanwhile would leave the child with locks held by a thread it does not have.
_starting = 0
_starting_changed = threading.Condition()


def _wait_for_starting_clients() -> None:
    """Before os.fork(): let a client that is starting finish (bounded), so that the child
    inherits no lock held half-way by its thread (gunicorn --preload forks right after the
    app, which may have sent its first event, was loaded)."""
    with _starting_changed:
        _starting_changed.wait_for(lambda: _starting == 0, timeout=_START_TIMEOUT)


def _reset_after_fork() -> None:  # pragma: no cover - runs in forked children
    global _atexit_lock, _starting, _starting_changed
    _atexit_lock = threading.Lock()
    _starting, _starting_changed = 0, threading.Condition()
    _started_loops.clear()
    for client in list(_all_loops):
        client.after_fork_in_child()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(before=_wait_for_starting_clients, after_in_child=_reset_after_fork)
