"""AsyncEncharge: the public face of the delivery pipeline.

Calls validate and serialise the event on the caller's line (`_builders`), hand it to the
pipeline's intake and return; everything else (queue, workers, retries, spool, outcomes)
is the pipeline's (`_pipeline`); whether the client is unopened, open, closing or closed,
and what that allows, is its `Lifecycle`'s (`_lifecycle`). This class holds the
configuration and the public signatures, and delegates.
"""

from __future__ import annotations

import os
import ssl
import warnings
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import httpx

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
)
from ._events import Event
from ._lifecycle import Lifecycle
from ._pipeline import Pipeline
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

__all__ = ["AsyncEncharge"]


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
    def _from_config(cls, config: Config) -> tuple[AsyncEncharge, Lifecycle]:
        """A client of an already validated `Config`, and its lifecycle: the sync client's,
        which builds events in its callers' threads and hands them to that door."""
        client = cls.__new__(cls)
        client._configure(config)  # noqa: SLF001 - the class's own constructor path
        return client, client._lifecycle  # noqa: SLF001 - idem

    def _configure(self, config: Config) -> None:
        self._config = config
        self._max_event_bytes = config.max_event_bytes
        self._never_blocks = config.never_blocks
        self._build = EventBuilders(config)
        self._lifecycle = Lifecycle(config)

    @property
    def _pipeline(self) -> Pipeline:
        return self._lifecycle.pipeline  # a fresh one in a forked child

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
        await self._lifecycle.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        stats, state = self._pipeline.stats(), self._lifecycle.state.value
        return (
            f"<AsyncEncharge endpoint={str(self._config.url)!r} state={state} "
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
        event = self._build.track(
            name, email, user_id, user, properties, source_ip, self._max_event_bytes, message_id
        )
        if not wait and self._never_blocks and timeout is None:
            self._lifecycle.put_nowait(event)  # the common case, without a second coroutine
            return event.message_id
        return await self._lifecycle.submit(event, wait, timeout)

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
        event = self._build.identify(
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        if not wait and self._never_blocks and timeout is None:
            self._lifecycle.put_nowait(event)  # the common case, without a second coroutine
            return event.message_id
        return await self._lifecycle.submit(event, wait, timeout)

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
        event = self._build.alias(
            previous_email=previous_email,
            previous_user_id=previous_user_id,
            email=email,
            user_id=user_id,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        if not wait and self._never_blocks and timeout is None:
            self._lifecycle.put_nowait(event)  # the common case, without a second coroutine
            return event.message_id
        return await self._lifecycle.submit(event, wait, timeout)

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
        event = self._build.group(
            object_type,
            properties,
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        if not wait and self._never_blocks and timeout is None:
            self._lifecycle.put_nowait(event)  # the common case, without a second coroutine
            return event.message_id
        return await self._lifecycle.submit(event, wait, timeout)

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
        event = self._build.track(
            name, email, user_id, user, properties, source_ip, self._max_event_bytes, message_id
        )
        self._lifecycle.put_nowait(event)
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
        event = self._build.identify(
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        self._lifecycle.put_nowait(event)
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
        event = self._build.alias(
            previous_email=previous_email,
            previous_user_id=previous_user_id,
            email=email,
            user_id=user_id,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        self._lifecycle.put_nowait(event)
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
        event = self._build.group(
            object_type,
            properties,
            email=email,
            user_id=user_id,
            user=user,
            max_bytes=self._max_event_bytes,
            message_id=message_id,
        )
        self._lifecycle.put_nowait(event)
        return event.message_id

    async def flush(self, timeout: float | None = None) -> FlushResult:
        """Wait until every event enqueued so far is delivered, failed or dropped.

        Returns what happened to them, and how many were still pending when `timeout`
        (default: `shutdown_timeout`) ran out. Events enqueued meanwhile are not waited for.

        Raises:
            ValidationError: `timeout` is not a finite number of seconds >= 0.
            EventLoopError: called from an event loop other than the client's.
        """
        return await self._lifecycle.flush(timeout)

    async def aclose(self, timeout: float | None = None) -> FlushResult:
        """Stop accepting events, deliver what is queued within `timeout`, close.

        `timeout` defaults to `shutdown_timeout`. Backoff sleeps are cut short as the
        deadline nears; what is still undelivered at the deadline is cancelled, kept in the
        spool if there is one, else counted in `stats.dropped` and reported to `on_drop`
        with `DropReason.SHUTDOWN`. Returns what happened to the events that were pending
        (also when `aclose()` itself is cancelled). Calling it again returns the same result.
        On a client whose event loop has ended, it only marks the client closed.

        Raises:
            ValidationError: `timeout` is not a finite number of seconds >= 0.
            EventLoopError: called from an event loop other than the client's.
        """
        return await self._lifecycle.aclose(timeout)

    def _add_delivery_listener(
        self, listener: Callable[[Event, float], None]
    ) -> Callable[[], None]:
        """For `encharge_async.otel`: call `listener(event, seconds since its first attempt)`
        as each event is delivered; returns the function that stops it."""
        return self._pipeline.ledger.add_delivery_listener(listener)

    def __del__(self) -> None:
        # As aiohttp does for sessions: a client collected while open had no clean close.
        if "_lifecycle" in self.__dict__ and self._lifecycle.unclosed:
            warnings.warn(
                f"unclosed {self!r}: close it with `async with AsyncEncharge(...)` or "
                "`await client.aclose()` in the app's shutdown",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )
