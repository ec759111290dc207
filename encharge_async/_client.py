"""AsyncEncharge: the public face of the delivery pipeline.

Calls validate and serialise the event on the caller's line (`_builders`), hand it to the
pipeline's intake and return; everything else (queue, workers, retries, spool, outcomes)
is the pipeline's (`_pipeline`). This class holds the configuration and the client's
lifecycle: unopened -> open -> closing -> closed.
"""

from __future__ import annotations

import enum
import logging
import os
import ssl
import warnings
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import anyio
import httpx

from . import _config
from ._builders import build_alias, build_group, build_identify, build_track
from ._config import Config
from ._constants import (
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
from ._events import Entry, Event
from ._exceptions import ClientClosedError, EventLoopError
from ._pipeline import Pipeline
from ._runtime import LoopBinding, bind_current_loop
from ._shaping import EventShaper
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

__all__ = ["AsyncEncharge", "ClientState"]

logger = logging.getLogger("encharge_async")


class ClientState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_live_clients: weakref.WeakSet[AsyncEncharge] = weakref.WeakSet()


class AsyncEncharge:
    """An asyncio (and trio) client for the Encharge Ingest API.

    Calls validate and serialise the event on the caller's line, queue it, and return; a
    background worker owned by the client delivers the queue concurrently, retrying with
    backoff, keeping each person's events in order. Use it as an async context manager, or
    call `aclose()` from the application's shutdown (lifespan) code.

    Raises:
        ConfigurationError: a missing or empty write key, a plain-http endpoint that is not
            loopback, a non-positive size, an unknown overflow policy or an async hook.
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
    ) -> None:
        self._configure(
            Config.create(
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
        )

    @classmethod
    def _from_config(cls, config: Config) -> AsyncEncharge:
        """A client of an already validated `Config` (the sync client's)."""
        client = cls.__new__(cls)
        client._configure(config)  # noqa: SLF001 - the class's own constructor path
        return client

    def _configure(self, config: Config) -> None:
        self._config = config
        self._max_event_bytes = config.max_event_bytes
        # Whether track() etc. may queue and return without awaiting anything.
        self._never_blocks = config.disabled or (
            config.overflow != "block" and not config.spool_always
        )
        shaper = (
            EventShaper(
                max_bytes=config.max_event_bytes,
                before_send=config.before_send,
                default_properties=config.default_properties,
            )
            if config.before_send is not None or config.default_properties is not None
            else None
        )
        # The builders, or the shaper's (the same signatures): no cost without shaping.
        self._build_track = build_track if shaper is None else shaper.track
        self._build_identify = build_identify if shaper is None else shaper.identify
        self._build_alias = build_alias if shaper is None else shaper.alias
        self._build_group = build_group if shaper is None else shaper.group
        self._state = ClientState.UNOPENED
        self._close_result: FlushResult | None = None
        self._closed: anyio.Event | None = None
        self._reset()
        _live_clients.add(self)

    def _reset(self) -> None:
        """A fresh pipeline (at construction, and in a forked child)."""
        self._pipeline = Pipeline(self._config, self._enter)
        self._intake = self._pipeline.intake

    # -- public API ------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncEncharge:
        """Start the client; with a spool, open it here so that its errors reach you.

        Raises:
            ClientClosedError: the client was closed.
            EventLoopError: the client runs on another event loop.
            ConfigurationError: TLS cannot be set up (the CA bundle of `verify=`,
                `SSL_CERT_FILE` or `SSL_CERT_DIR` cannot be loaded).
            SpoolError: the spool cannot be used (SpoolLockedError: another process has it).
        """
        if self._config.disabled:  # nothing to start
            if self._state is not ClientState.UNOPENED:
                raise ClientClosedError(f"the client is {self._state.value}; create a new one")
            await anyio.lowlevel.checkpoint()
            return self
        self._enter()
        error = await self._pipeline.open()
        if error is not None:
            await self.aclose()
            raise error
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        stats = self._pipeline.stats()
        return (
            f"<AsyncEncharge endpoint={str(self._config.url)!r} state={self._state.value} "
            f"queued={stats.queued} in_flight={stats.in_flight}>"
        )

    @property
    def endpoint(self) -> str:
        """The URL events are posted to."""
        return str(self._config.url)

    @property
    def stats(self) -> Stats:
        """A snapshot of the client's counters (see `Stats`)."""
        return self._pipeline.stats()

    async def track(
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
        """Queue an event about a person; return its message id.

        `email` / `user_id` identify the person (at least one, here or in `user`); other
        `user` fields update the person; `properties` describe the event. `message_id`
        (default: a fresh unique id) is sent as the `Idempotency-Key` header; pass your own
        to make re-sends of one event recognisable. With `wait=True`, return only once
        Encharge accepted it. `timeout` bounds the wait for room (under
        `overflow="block"`) and for delivery (with `wait=True`).

        Raises:
            ValidationError: the event is invalid (the message names the field).
            ClientClosedError: the client is closing or closed.
            QueueFullError: no room before `timeout` under `overflow="block"`, or, with
                `wait=True`, the event was dropped because the queue was full.
            DeliveryError: with `wait=True`, the event was refused or given up on.
            TimeoutError: with `wait=True`, no outcome within `timeout`.
        """
        event = self._build_track(
            name, email, user_id, user, properties, source_ip, self._max_event_bytes, message_id
        )
        if not wait and self._never_blocks:
            self._intake.put_nowait(event)  # the common case, without a second coroutine
            return event.message_id
        return await self._submit(event, wait, timeout)

    async def identify(
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

        Raises the same errors as `track`.
        """
        event = self._build_identify(
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        if not wait and self._never_blocks:
            self._intake.put_nowait(event)  # the common case, without a second coroutine
            return event.message_id
        return await self._submit(event, wait, timeout)

    async def alias(
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

        It is delivered after everything queued before it for the previous identifiers, and
        before everything queued after it for the new ones. Raises the same errors as `track`.
        """
        event = self._build_alias(
            previous_email=previous_email,
            previous_user_id=previous_user_id,
            email=email,
            user_id=user_id,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        if not wait and self._never_blocks:
            self._intake.put_nowait(event)  # the common case, without a second coroutine
            return event.message_id
        return await self._submit(event, wait, timeout)

    async def group(
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

        `properties` holds the object's fields (`externalId` or `id` to update one); a person
        given by `email` / `user_id` / `user` is associated with it. Raises the same errors
        as `track`.
        """
        event = self._build_group(
            object_type,
            properties,
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        if not wait and self._never_blocks:
            self._intake.put_nowait(event)  # the common case, without a second coroutine
            return event.message_id
        return await self._submit(event, wait, timeout)

    def track_nowait(
        self,
        name: str,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        source_ip: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """`track` for plain functions: queue the event without awaiting; return its id.

        Call it on the client's event loop, or from another thread while that loop runs.

        Raises:
            ValidationError: the event is invalid.
            ClientClosedError: the client is closing or closed.
            QueueFullError: the queue is full under `overflow="block"` (no waiting here).
            EventLoopError: called from a different event loop, or before the client was
                started when no loop is running.
        """
        event = self._build_track(
            name, email, user_id, user, properties, source_ip, self._max_event_bytes, message_id
        )
        self._intake.put_nowait(event)
        return event.message_id

    def identify_nowait(
        self,
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str:
        """`identify` for plain functions; raises like `track_nowait`."""
        event = self._build_identify(
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        self._intake.put_nowait(event)
        return event.message_id

    def alias_nowait(
        self,
        *,
        previous_email: str | None = None,
        previous_user_id: str | int | None = None,
        email: str | None = None,
        user_id: str | int | None = None,
        message_id: str | None = None,
    ) -> str:
        """`alias` for plain functions; raises like `track_nowait`."""
        event = self._build_alias(
            previous_email=previous_email,
            previous_user_id=previous_user_id,
            email=email,
            user_id=user_id,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        self._intake.put_nowait(event)
        return event.message_id

    def group_nowait(
        self,
        object_type: str,
        properties: Mapping[str, Any],
        *,
        email: str | None = None,
        user_id: str | int | None = None,
        user: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str:
        """`group` for plain functions; raises like `track_nowait`."""
        event = self._build_group(
            object_type,
            properties,
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        self._intake.put_nowait(event)
        return event.message_id

    async def flush(self, timeout: float | None = None) -> FlushResult:
        """Wait until every event enqueued so far is delivered, failed or dropped.

        Returns what happened to them, and how many were still pending when `timeout`
        (default: `shutdown_timeout`) ran out. Events enqueued meanwhile are not waited for.

        Raises:
            EventLoopError: called from an event loop other than the client's.
        """
        if self._state is ClientState.UNOPENED or self._state is ClientState.CLOSED:
            await anyio.lowlevel.checkpoint()
            return FlushResult()
        self._check_loop()
        bound = self._config.shutdown_timeout if timeout is None else timeout
        result = await self._pipeline.flush(bound)
        if result == FlushResult():
            await anyio.lowlevel.checkpoint()  # like every async call: a chance to switch
        return result

    async def aclose(self, timeout: float | None = None) -> FlushResult:
        """Stop accepting events, deliver what is queued within `timeout`, close.

        `timeout` defaults to `shutdown_timeout`. Backoff sleeps are cut short as the
        deadline nears; what is still undelivered at the deadline is cancelled, kept in the
        spool if there is one, else counted in `stats.dropped` and reported to `on_drop`
        with `DropReason.SHUTDOWN`. Returns what happened to the events that were pending
        (also when `aclose()` itself is cancelled). Calling it again returns the same result.
        On a client whose event loop has ended, it only marks the client closed.

        Raises:
            EventLoopError: called from an event loop other than the client's.
        """
        bound = (
            self._config.shutdown_timeout
            if timeout is None
            else _config.check_seconds("timeout", timeout, allow_zero=True)
        )
        if self._state is ClientState.CLOSED:
            return self._close_result or FlushResult()
        if self._state is ClientState.UNOPENED:
            self._state = ClientState.CLOSED
            self._intake.close()
            self._close_result = FlushResult()
            await self._pipeline.dispatcher.aclose()  # the user's transport, if any
            return self._close_result
        if self._state is ClientState.OPEN and self._pipeline.ended:
            # Its event loop ended under it (the runner delivered what it could on the way
            # out and reported the rest): there is nothing left to close but the state.
            self._state = ClientState.CLOSED
            self._close_result = FlushResult()
            await self._pipeline.dispatcher.aclose()  # connections a failed runner left
            return self._close_result
        self._check_loop()
        assert self._closed is not None
        if self._state is ClientState.CLOSING:
            # Another task is closing; wait for it within the same bound.
            with anyio.move_on_after(bound + 2 * TRANSPORT_CLOSE_TIMEOUT):
                await self._closed.wait()
            return self._close_result or FlushResult()
        self._state = ClientState.CLOSING
        pipeline = self._pipeline
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
                self._state = ClientState.CLOSED
                self._closed.set()
        logger.debug("client closed: %s", result)
        return result

    # -- internals -------------------------------------------------------------------------

    async def _submit(self, entry: Entry, wait: bool, timeout: float | None) -> str:
        if self._config.disabled:  # validated; there is nothing to wait for
            self._intake.put_nowait(entry)
            await anyio.lowlevel.checkpoint()
            return entry.message_id
        # Waiting needs the client's own loop; only a plain hand-off crosses loops.
        self._enter()
        return await self._pipeline.submit(entry, wait, timeout)

    def _enter(self) -> LoopBinding:
        """Start on the running loop, or check that we are on the one we started on."""
        if self._state is ClientState.UNOPENED:
            binding = bind_current_loop()
            self._closed = anyio.Event()
            self._state = ClientState.OPEN
            self._pipeline.start(binding)
            return binding
        if self._state is not ClientState.OPEN:
            raise ClientClosedError(f"the client is {self._state.value}; create a new one")
        failure = self._pipeline.failure
        if failure is not None:
            raise ClientClosedError(
                f"the client stopped delivering events ({failure}); create a new one"[:500]
            ) from failure
        return self._check_loop()

    def _check_loop(self) -> LoopBinding:
        binding = self._pipeline.binding
        assert binding is not None
        current = binding.current()
        if current is None and not self._intake.accepting and self._state is ClientState.OPEN:
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

    def _add_delivery_listener(
        self, listener: Callable[[Event, float], None]
    ) -> Callable[[], None]:
        """For `encharge_async.otel`: call `listener(event, seconds since its first attempt)`
        as each event is delivered; returns the function that stops it."""
        return self._pipeline.ledger.add_delivery_listener(listener)

    def __del__(self) -> None:
        # As aiohttp does for sessions: a client collected while open had no clean close.
        if getattr(self, "_state", None) in (ClientState.OPEN, ClientState.CLOSING):
            warnings.warn(
                f"unclosed {self!r}: close it with `async with AsyncEncharge(...)` or "
                "`await client.aclose()` in the app's shutdown",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )

    def _after_fork_in_child(self) -> None:  # pragma: no cover - runs in forked children
        # The parent's loop, sockets and queue are not ours: start clean, lazily.
        if self._state is ClientState.CLOSED:
            return
        self._state = ClientState.UNOPENED
        self._reset()


def _reset_clients_after_fork() -> None:  # pragma: no cover - runs in forked children
    for client in list(_live_clients):
        client._after_fork_in_child()  # noqa: SLF001 - this module's own fork hook


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(after_in_child=_reset_clients_after_fork)
