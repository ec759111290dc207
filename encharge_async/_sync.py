"""Encharge: the client for sync code (Flask, Django, Celery, scripts).

It runs an `AsyncEncharge` on an event loop of its own, in a daemon thread started on first
use. Calls are validated in the calling thread and handed to that loop; delivery,
retries, ordering and the shutdown drain are the async client's.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Coroutine, Mapping
from functools import partial
from threading import get_ident
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _config
from ._background import BackgroundLoop, LoopState
from ._builders import check_timeout
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
)
from ._events import Entry
from ._exceptions import ClientClosedError, EventLoopError
from ._shaping import EventBuilders
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
        config = self._config
        self._blocks = config.overflow == "block"
        self._disabled = config.disabled
        self._max_event_bytes = config.max_event_bytes
        # Events are built (validated, shaped) in the caller's thread, as AsyncEncharge's are.
        self._build = EventBuilders(config)
        self._shutdown_timeout = self._config.shutdown_timeout
        # The bound AsyncEncharge puts on a wait=True call made without a timeout.
        self._wait_bound = self._config.wait_bound
        self._background = BackgroundLoop(
            self._config,
            atexit_timeout=(
                self._shutdown_timeout
                if atexit_timeout is None
                else _config.check_seconds("atexit_timeout", atexit_timeout, allow_zero=True)
            ),
            handle_sigterm=_config.check_bool("handle_sigterm", handle_sigterm),
        )

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
        return f"<Encharge endpoint={self.endpoint!r} state={self._background.state.value}>"

    @property
    def endpoint(self) -> str:
        """The URL events are posted to."""
        return self._background.client.endpoint

    @property
    def stats(self) -> Stats:
        """A snapshot of the client's counters (see `Stats`); zero before the first call."""
        self._background.check_fork()
        return self._background.client.stats

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
        event = self._build.track(
            name, email, user_id, user, properties, source_ip, self._max_event_bytes, message_id
        )
        return self._submit(event, wait, timeout)

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
        event = self._build.identify(
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        return self._submit(event, wait, timeout)

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
        event = self._build.alias(
            previous_email=previous_email,
            previous_user_id=previous_user_id,
            email=email,
            user_id=user_id,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        return self._submit(event, wait, timeout)

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
        event = self._build.group(
            object_type,
            properties,
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        return self._submit(event, wait, timeout)

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Block until every event queued so far (by any thread) is delivered, failed or dropped.

        Returns what happened to them, and how many were still pending when `timeout`
        (default: `shutdown_timeout`) ran out.

        Raises:
            ValidationError: `timeout` is not a finite number of seconds >= 0.
            EventLoopError: called from a hook (it runs on the client's own thread).
            TimeoutError: the background thread did not answer (a bug, or a stuck hook).
        """
        check_timeout(timeout)
        background = self._background
        background.check_fork()
        loop = background.loop
        if loop is None or background.state is LoopState.CLOSED:
            return FlushResult()
        if background.on_own_thread():
            raise EventLoopError("flush() cannot block the client's own thread (from a hook)")
        bound = self._shutdown_timeout if timeout is None else timeout
        client = background.client
        try:
            return background.run(loop, lambda: client.flush(timeout), bound)
        except ClientClosedError:  # closed meanwhile: the close drained the queue
            return FlushResult()

    def close(self, timeout: float | None = None) -> FlushResult:
        """Stop accepting events, deliver what is queued, stop the background thread.

        Delivery is bounded by `timeout` seconds and by `shutdown_timeout` (the default);
        what is left then is dropped (`stats.dropped`, `on_drop` with `DropReason.SHUTDOWN`).
        Returns what happened to the events that were pending. Idempotent: later calls
        return the same result.

        Raises:
            ValidationError: `timeout` is not a finite number of seconds >= 0.
            EventLoopError: called from a hook (it runs on the client's own thread).
            TimeoutError: the background thread did not finish in time (a bug, or a stuck
                hook).
        """
        check_timeout(timeout)  # here: a bad one must not leave the client half-closed
        background = self._background
        background.check_fork()
        if background.on_own_thread():
            raise EventLoopError("close() cannot block the client's own thread (from a hook)")
        future = background.begin_close(timeout)
        return background.finish_close(future, timeout)

    # -- calls -------------------------------------------------------------------------------

    def _submit(self, event: Entry, wait: bool, timeout: float | None) -> str:
        """Every event method, once the event is built (validated) in the caller's thread:
        hand it over to the client's loop, or, when the call must block (`wait=True`,
        `overflow="block"`), submit it there and wait. Starts the client."""
        background = self._background
        if self._disabled:  # validated; no thread, nothing sent
            if background.state is not LoopState.NEW:
                raise ClientClosedError(f"the client is {background.state.value}; create a new one")
            return event.message_id
        if (
            background.pid != os.getpid()
            or background.loop is None
            or background.state is not LoopState.RUNNING
        ):
            background.running_loop()  # after a fork, before the start, or once closing
        if background.thread_ident == get_ident():
            # On the client's own thread (a hook): nothing may block it.
            if wait:
                raise EventLoopError("wait=True cannot block the client's own thread (from a hook)")
        elif wait or self._blocks:
            check_timeout(timeout)  # here: it bounds this thread's wait too
            submit = partial(background.lifecycle.submit, event, wait, timeout)
            return self._block(submit, wait, timeout)
        if timeout is not None:  # unused here, but a bad one is the caller's bug
            check_timeout(timeout)
        background.lifecycle.put_nowait(event)
        return event.message_id

    def _block(
        self, submit: Callable[[], Coroutine[Any, Any, str]], wait: bool, timeout: float | None
    ) -> str:
        """Run `submit()` (the event's submission) on the client's loop; block until it
        returns."""
        loop = self._background.running_loop()
        bound = 0.0
        if self._blocks:
            bound += DEFAULT_BLOCK_TIMEOUT if timeout is None else timeout
        if wait:
            bound += self._wait_bound if timeout is None else timeout
        return self._background.run(loop, submit, bound)
