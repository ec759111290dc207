"""Encharge: the client for sync code (Flask, Django, Celery, scripts).

It runs an `AsyncEncharge` on an event loop of its own, in a daemon thread started on first
use. Calls are validated in the calling thread and handed to that loop; delivery,
retries, ordering and the shutdown drain are the async client's.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import enum
import logging
import os
import signal
import ssl
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from types import TracebackType
from typing import Any, Final, TypeVar

import anyio
import httpx

from . import _config
from ._client import AsyncEncharge
from ._config import Config
from ._constants import (
    DEFAULT_BLOCK_TIMEOUT,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_TIME,
    DEFAULT_OVERFLOW,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_SPOOL_AFTER,
    DEFAULT_SPOOL_MAX_AGE,
    DEFAULT_SPOOL_MAX_BYTES,
    DEFAULT_SPOOL_MODE,
    DEFAULT_TIMEOUT,
    TRANSPORT_CLOSE_TIMEOUT,
)
from ._exceptions import ClientClosedError, EventLoopError
from ._spool import Spool
from ._stats import FlushResult, Stats
from ._types import (
    BeforeSend,
    OnDelivered,
    OnDrop,
    OnError,
    Overflow,
    RetryWait,
    SpoolMode,
)

__all__ = ["Encharge"]

logger = logging.getLogger("encharge_async")

T = TypeVar("T")

# How long the first call waits for the background loop to start.
_START_TIMEOUT: Final = 10.0
# Extra time a blocking call gives the background loop beyond the call's own bound, so that
# a stuck loop is reported as a TimeoutError instead of hanging the caller.
_LOOP_MARGIN: Final = 5.0


class _State(enum.Enum):
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


class Encharge:
    """The Encharge client for sync code: the same calls as `AsyncEncharge`, without `await`.

    Calls validate the event in your thread, queue it and return its message id at once;
    an `AsyncEncharge` running on a background thread (a daemon, started on first use)
    delivers it. Thread-safe: share one instance per process. Close it with `close()` or a
    `with` block; otherwise it is closed at interpreter exit, within `atexit_timeout`
    seconds. Safe across `os.fork()` (gunicorn `--preload`): a child process starts its
    own thread on first use, with an empty queue. Hooks (`on_error`, `on_drop`,
    `on_delivered`) run on the background thread.

    Takes the keyword arguments of `AsyncEncharge`, plus `atexit_timeout` (default:
    `shutdown_timeout`), the time the exit handler gives this client to deliver what is
    queued, and `handle_sigterm`: Python's default SIGTERM ends the process without exit
    handlers, so when SIGTERM still has that default disposition and the client is created
    or started in the main thread, it installs a handler that closes the started clients
    (each within its `atexit_timeout`) and then lets SIGTERM end the process as before
    (the same exit status). A handler already installed (gunicorn's, uvicorn's, Celery's,
    your own) is left alone. `handle_sigterm=False` opts out.

    Raises:
        ConfigurationError: as `AsyncEncharge` does, or for a bad `atexit_timeout`.
    """

    def __init__(
        self,
        write_key: str | None = None,
        *,
        endpoint: str | httpx.URL | None = None,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        overflow: Overflow = DEFAULT_OVERFLOW,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_time: float = DEFAULT_MAX_RETRY_TIME,
        timeout: float = DEFAULT_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        on_error: OnError | None = None,
        on_drop: OnDrop | None = None,
        on_delivered: OnDelivered | None = None,
        retry_wait: RetryWait | None = None,
        spool: str | os.PathLike[str] | Spool | None = None,
        spool_mode: SpoolMode = DEFAULT_SPOOL_MODE,
        spool_after: float = DEFAULT_SPOOL_AFTER,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        spool_max_age: float = DEFAULT_SPOOL_MAX_AGE,
        before_send: BeforeSend | None = None,
        default_properties: Mapping[str, Any] | None = None,
        disabled: bool | None = None,
        verify: bool | str | os.PathLike[str] | ssl.SSLContext = True,
        proxy: str | httpx.URL | None = None,
        trust_env: bool = True,
        atexit_timeout: float | None = None,
        handle_sigterm: bool = True,
    ) -> None:
        self._config = Config.create(
            write_key,
            endpoint=endpoint,
            max_queue_size=max_queue_size,
            max_queue_bytes=max_queue_bytes,
            max_event_bytes=max_event_bytes,
            overflow=overflow,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            max_retry_time=max_retry_time,
            timeout=timeout,
            shutdown_timeout=shutdown_timeout,
            transport=transport,
            on_error=on_error,
            on_drop=on_drop,
            on_delivered=on_delivered,
            retry_wait=retry_wait,
            spool=spool,
            spool_mode=spool_mode,
            spool_after=spool_after,
            spool_max_bytes=spool_max_bytes,
            spool_max_age=spool_max_age,
            before_send=before_send,
            default_properties=default_properties,
            disabled=disabled,
            verify=verify,
            proxy=proxy,
            trust_env=trust_env,
        )
        self._client = self._new_client()
        self._overflow = self._config.overflow
        self._shutdown_timeout = self._config.shutdown_timeout
        # The bound AsyncEncharge puts on a wait=True call made without a timeout.
        self._wait_bound = self._config.wait_bound
        self._atexit_timeout = (
            self._shutdown_timeout
            if atexit_timeout is None
            else _config.check_seconds("atexit_timeout", atexit_timeout, allow_zero=True)
        )
        self._handle_sigterm = _config.check_bool("handle_sigterm", handle_sigterm)
        self._reset_runtime()
        _all_clients.add(self)
        if self._handle_sigterm:
            _install_sigterm_handler()

    def _new_client(self) -> AsyncEncharge:
        # The one deliberate private call into AsyncEncharge: share the validated Config.
        return AsyncEncharge._from_config(self._config)  # noqa: SLF001

    def _reset_runtime(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._state = _State.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._thread_ident: int | None = None  # the background thread's, for hooks
        self._stop: asyncio.Event | None = None  # set on the loop: the thread may end
        self._close_future: concurrent.futures.Future[FlushResult] | None = None
        self._close_result: FlushResult | None = None

    # -- public API ------------------------------------------------------------------------

    def __enter__(self) -> Encharge:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Encharge endpoint={self.endpoint!r} state={self._state.value}>"

    @property
    def endpoint(self) -> str:
        """The URL events are posted to."""
        return self._client.endpoint

    @property
    def stats(self) -> Stats:
        """A snapshot of the client's counters (see `Stats`); zero before the first call."""
        self._check_fork()
        return self._client.stats

    def track(
        self,
        name: str,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        source_ip: str | None = None,
        message_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Queue an event about a person; return its message id (see `AsyncEncharge.track`).

        Returns at once. With `wait=True`, blocks until Encharge accepted the event or it
        failed, for at most `timeout` seconds. Under `overflow="block"`, blocks until there
        is room in the queue, for at most `timeout` seconds (default 5).

        Raises:
            ValidationError: the event is invalid (the message names the field).
            ClientClosedError: the client is closing or closed.
            QueueFullError: no room before `timeout` under `overflow="block"`, or, with
                `wait=True`, the event was dropped because the queue was full.
            DeliveryError: with `wait=True`, the event was refused or given up on.
            TimeoutError: with `wait=True`, no outcome within `timeout`.
            EventLoopError: `wait=True` from a hook (it runs on the client's own thread),
                or the background thread could not start.
        """
        return self._call(
            "track",
            (name,),
            {
                "email": email,
                "user_id": user_id,
                "user": user,
                "properties": properties,
                "source_ip": source_ip,
                "message_id": message_id,
            },
            wait,
            timeout,
        )

    def identify(
        self,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Queue a create-or-update of a person's fields; return its message id.

        Blocks and raises like `track`.
        """
        return self._call(
            "identify",
            (),
            {"email": email, "user_id": user_id, "user": user, "message_id": message_id},
            wait,
            timeout,
        )

    def alias(
        self,
        *,
        previous_email: str | None = None,
        previous_user_id: str | int | None = None,
        email: str | None = None,
        user_id: str | int | None = None,
        message_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Queue a change of a person's email and/or user id; return its message id.

        Blocks and raises like `track`.
        """
        return self._call(
            "alias",
            (),
            {
                "previous_email": previous_email,
                "previous_user_id": previous_user_id,
                "email": email,
                "user_id": user_id,
                "message_id": message_id,
            },
            wait,
            timeout,
        )

    def group(
        self,
        object_type: str,
        properties: Mapping[str, Any],
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> str:
        """Queue a create-or-update of a custom object (a company, say); return its message id.

        Blocks and raises like `track`.
        """
        return self._call(
            "group",
            (object_type, properties),
            {"email": email, "user_id": user_id, "user": user, "message_id": message_id},
            wait,
            timeout,
        )

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Block until every event queued so far (by any thread) is delivered, failed or dropped.

        Returns what happened to them, and how many were still pending when `timeout`
        (default: `shutdown_timeout`) ran out.

        Raises:
            EventLoopError: called from a hook (it runs on the client's own thread).
            TimeoutError: the background thread did not answer (a bug, or a stuck hook).
        """
        self._check_fork()
        loop = self._loop
        if loop is None or self._state is _State.CLOSED:
            return FlushResult()
        if self._thread_ident == threading.get_ident():
            raise EventLoopError("flush() cannot block the client's own thread (from a hook)")
        bound = self._shutdown_timeout if timeout is None else timeout
        try:
            return self._run_on_loop(loop, lambda: self._client.flush(timeout), bound)
        except ClientClosedError:  # closed meanwhile: the close drained the queue
            return FlushResult()

    def close(self, timeout: float | None = None) -> FlushResult:
        """Stop accepting events, deliver what is queued, stop the background thread.

        Delivery is bounded by `timeout` seconds and by `shutdown_timeout` (the default);
        what is left then is dropped (`stats.dropped`, `on_drop` with `DropReason.SHUTDOWN`).
        Returns what happened to the events that were pending. Idempotent: later calls
        return the same result.

        Raises:
            EventLoopError: called from a hook (it runs on the client's own thread).
            TimeoutError: the background thread did not finish in time (a bug, or a stuck
                hook).
        """
        self._check_fork()
        if self._thread is not None and threading.current_thread() is self._thread:
            raise EventLoopError("close() cannot block the client's own thread (from a hook)")
        future = self._begin_close(timeout)
        return self._finish_close(future, timeout)

    # -- calls -------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        args: tuple[Any, ...],
        keywords: dict[str, Any],
        wait: bool,
        timeout: float | None,
    ) -> str:
        """Every event method: hand the event over (`<method>_nowait` validates it in this
        thread), or run the async method on the client's loop when the call must block."""
        client = self._client
        if self._config.disabled:  # validated in this thread; no thread, nothing sent
            if self._state is not _State.NEW:
                raise ClientClosedError(f"the client is {self._state.value}; create a new one")
            submit_disabled: Callable[..., str] = getattr(client, f"{method}_nowait")
            return submit_disabled(*args, **keywords)
        if self._hands_over(wait):
            submit: Callable[..., str] = getattr(client, f"{method}_nowait")
            return submit(*args, **keywords)
        call: Callable[..., Coroutine[Any, Any, str]] = getattr(client, method)
        return self._block(
            partial(call, *args, **keywords, wait=wait, timeout=timeout), wait, timeout
        )

    def _hands_over(self, wait: bool) -> bool:
        """Whether the call validates its event here and hands it over to the client's loop.

        That is every call but the blocking ones (`wait=True`, or `overflow="block"`), from
        any thread, one running an event loop of its own included. Starts the client.
        """
        if self._pid != os.getpid() or self._loop is None or self._state is not _State.RUNNING:
            self._running_loop()  # after a fork, before the start, or once closing
        if self._thread_ident == threading.get_ident():
            # On the client's own thread (a hook): nothing may block it.
            if wait:
                raise EventLoopError("wait=True cannot block the client's own thread (from a hook)")
            return True
        return not wait and self._overflow != "block"

    def _block(
        self, submit: Callable[[], Coroutine[Any, Any, str]], wait: bool, timeout: float | None
    ) -> str:
        """Run the async method on the client's loop; block until it returns."""
        loop = self._running_loop()
        blocks = self._overflow == "block"
        bound = 0.0
        if blocks:
            bound += DEFAULT_BLOCK_TIMEOUT if timeout is None else timeout
        if wait:
            bound += self._wait_bound if timeout is None else timeout
        return self._run_on_loop(loop, submit, bound)

    def _run_on_loop(
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

    def _check_fork(self) -> None:
        # The at-fork hook resets children of os.fork(); this catches forks that bypass it.
        if self._pid != os.getpid():
            self._after_fork_in_child()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The background loop, started on first use; ClientClosedError once closing."""
        self._check_fork()
        loop = self._loop
        if loop is not None and self._state is _State.RUNNING:
            return loop
        with self._lock:
            if self._state is _State.NEW:
                self._start()
            if self._state is not _State.RUNNING:
                raise ClientClosedError(f"the client is {self._state.value}; create a new one")
            assert self._loop is not None
            return self._loop

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
            args=(self._client, start),
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
            self._client = self._new_client()
            raise EventLoopError(
                f"the Encharge background thread did not start within {_START_TIMEOUT:g}s "
                "(are threads enabled? uWSGI needs --enable-threads)"
            )
        if start.error is not None:
            self._client = self._new_client()
            raise start.error
        self._thread = thread
        self._thread_ident = thread.ident
        self._stop = start.stop
        self._loop = start.loop
        self._state = _State.RUNNING
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

    def _begin_close(self, timeout: float | None) -> concurrent.futures.Future[FlushResult]:
        with self._lock:
            if self._close_future is not None:
                return self._close_future
            future: concurrent.futures.Future[FlushResult]
            if self._state is _State.NEW:
                future = concurrent.futures.Future()
                future.set_result(FlushResult())
                self._state = _State.CLOSED
            else:
                assert self._loop is not None
                self._state = _State.CLOSING
                _started_clients.discard(self)
                coroutine = self._aclose(timeout)
                try:
                    future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
                except RuntimeError:  # pragma: no cover - the thread died: nothing to drain
                    coroutine.close()
                    future = concurrent.futures.Future()
                    future.set_result(FlushResult())
            self._close_future = future
            return future

    async def _aclose(self, timeout: float | None) -> FlushResult:
        """On the loop: close the async client within `timeout`, then let the thread end."""
        client = self._client
        stop = self._stop
        assert stop is not None
        try:
            bound = None if timeout is None else min(timeout, self._shutdown_timeout)
            return await client.aclose(bound)
        finally:
            stop.set()

    def _finish_close(
        self, future: concurrent.futures.Future[FlushResult], timeout: float | None
    ) -> FlushResult:
        bound = self._shutdown_timeout if timeout is None else min(timeout, self._shutdown_timeout)
        guard = bound + 2 * TRANSPORT_CLOSE_TIMEOUT + _LOOP_MARGIN
        try:
            result = future.result(guard)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"the client's background thread did not close within {guard:g}s"
            ) from None
        thread = self._thread
        if thread is not None:
            thread.join(_LOOP_MARGIN)  # the loop only has to shut down now
        with self._lock:
            self._state = _State.CLOSED
            self._close_result = result
        return result

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here; its loop is unusable, and closing it
        # would touch the parent's file descriptors: keep it referenced, unused.
        if self._loop is not None and not self._loop.is_closed():
            _orphaned_loops.append(self._loop)
        closed = self._state is _State.CLOSING or self._state is _State.CLOSED
        used = self._state is not _State.NEW
        self._reset_runtime()
        if closed:
            self._state = _State.CLOSED
            self._close_future = concurrent.futures.Future()
            self._close_future.set_result(FlushResult())
        elif used:
            self._client = self._new_client()


# Every instance (for the fork hook), and those with a running thread (for the exit hook).
_all_clients: weakref.WeakSet[Encharge] = weakref.WeakSet()
_started_clients: set[Encharge] = set()
_orphaned_loops: list[asyncio.AbstractEventLoop] = []
_atexit_lock = threading.Lock()
_atexit_registered = False


def _register_started(client: Encharge) -> None:
    global _atexit_registered
    with _atexit_lock:
        _started_clients.add(client)
        if not _atexit_registered:
            atexit.register(_close_at_exit)
            _atexit_registered = True
    if client._handle_sigterm:  # noqa: SLF001 - this module's own client
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
        if _started_clients:
            logger.info("SIGTERM: delivering what is queued before exiting")
            _close_at_exit()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _close_at_exit() -> None:
    """Close every started client, concurrently, each within its `atexit_timeout`."""
    closing: list[tuple[Encharge, concurrent.futures.Future[FlushResult]]] = []
    for client in list(_started_clients):
        try:
            # This module's own exit hook, closing the clients it started.
            closing.append((client, client._begin_close(client._atexit_timeout)))  # noqa: SLF001
        except Exception:  # pragma: no cover - defensive: exit must go on
            logger.exception("closing %r at exit failed", client)
    for client, future in closing:
        try:
            result = client._finish_close(future, client._atexit_timeout)  # noqa: SLF001
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
    _started_clients.clear()
    for client in list(_all_clients):
        client._after_fork_in_child()  # noqa: SLF001 - this module's own fork hook


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(before=_wait_for_starting_clients, after_in_child=_reset_after_fork)
