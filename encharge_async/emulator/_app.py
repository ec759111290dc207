"""The ASGI app: the ingest endpoint with its checks and faults, plus inspection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._constants import EMULATOR_REJECTED_BODY_BYTES, EMULATOR_REJECTED_TEXT_CHARS
from ._faults import Refusal
from ._http import Body, Receive, Scope, Send, header, read_body, send_json
from ._inspect import PREFIX, inspect
from ._records import EventRecord, RejectedRecord
from ._state import EmulatorState
from ._validate import validate

__all__ = ["INGEST_PATHS", "Aborter", "EmulatorApp", "request_host"]

INGEST_PATHS = frozenset({"/v1", "/v1/"})
# How long to wait for the server to notice a connection we cut.
_CUT_WAIT = 2.0

#: Cuts the connection of a request (given its scope); False if it could not.
Aborter = Callable[[Scope], bool]


class _BadJSON(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _BadJSON(name)


def _parse(data: bytes) -> tuple[bool, Any]:
    """Parse strict JSON (no NaN/Infinity); return (ok, value)."""
    try:
        return True, json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError:  # also UnicodeDecodeError, JSONDecodeError and _BadJSON
        return False, None


def request_host(value: str | None) -> str | None:
    """The host name of a `Host` header, lower-case, without port or trailing dot."""
    if not value:
        return None
    value = value.strip().lower()
    if value.startswith("["):  # an IPv6 literal: [::1]:8787
        end = value.find("]")
        return value[1:end] if end > 0 else None
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") <= 1 else None


def origin_host(value: str) -> str | None:
    """The host name of an `Origin` header (``scheme://host[:port]``); None for "null"."""
    _, sep, rest = value.strip().partition("://")
    return request_host(rest.split("/", 1)[0]) if sep else None


def _cut(text: str | None) -> str | None:
    return None if text is None else text[:EMULATOR_REJECTED_TEXT_CHARS]


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


@dataclass(frozen=True)
class _Arrival:
    seq: int
    method: str
    path: str
    idempotency_key: str | None
    user_agent: str | None
    received_at: float
    received_monotonic: float


class EmulatorApp:
    """Raw ASGI app emulating Encharge's ingest endpoint.

    `abort` cuts a request's connection without an answer (provided by the server).
    """

    def __init__(self, state: EmulatorState, abort: Aborter) -> None:
        self._state = state
        self._abort = abort
        self._stopping = asyncio.Event()
        self._in_hand = 0  # ingest requests being handled (for max_in_flight)

    def begin_shutdown(self) -> None:
        """Cut short injected latency and stalled bodies, so the server can stop."""
        self._stopping.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are off
            return
        allowed = self._state.allowed_hosts
        if allowed is not None:
            # DNS rebinding: a web page's script can reach us under its own host name, so
            # only the names and addresses we serve are answered.
            host = request_host(header(scope, b"host"))
            if host is None:
                await send_json(send, 400, {"error": "Missing or invalid Host header."})
                return
            if host not in allowed:
                error = (
                    f"Misdirected request: this emulator does not serve the host {host!r} "
                    "(allow it with --allow-host / allowed_hosts=)."
                )
                await send_json(send, 421, {"error": error})
                return
            # A page elsewhere can still send simple requests (a POST to /_emulator/reset)
            # to a name we serve; browsers say where it came from.
            origin = header(scope, b"origin")
            if origin is not None and origin_host(origin) not in allowed:
                await send_json(send, 403, {"error": "Cross-origin requests are refused."})
                return
        path: str = scope["path"]
        if path.startswith(PREFIX):
            await inspect(self._state, scope, send)
        elif path in INGEST_PATHS and scope["method"] == "POST":
            await self._ingest(scope, receive, send)
        elif path in INGEST_PATHS:
            self._reject(self._arrival(scope), 405, "Method not allowed.", None)
            await send_json(send, 405, {"error": "Method not allowed."}, [("Allow", "POST")])
        else:
            self._reject(self._arrival(scope), 404, "Not found.", None)
            await send_json(send, 404, {"error": "Not found."})

    async def _ingest(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive, self._state.max_body_bytes)
        if body.disconnected:
            return
        injector = self._state.injector
        self._in_hand += 1
        try:
            crowded = injector.crowded(self._in_hand)
            if crowded is not None:  # refused on arrival, as a server's admission would
                await self._refuse(self._arrival(scope), crowded, body, send)
            else:
                await self._handle(scope, receive, send, body)
        finally:
            self._in_hand -= 1

    async def _handle(self, scope: Scope, receive: Receive, send: Send, body: Body) -> None:
        injector = self._state.injector
        await self._pause(injector.latency())
        arrival = self._arrival(scope)
        refusal = injector.refusal()
        if refusal is not None:
            await self._refuse(arrival, refusal, body, send)
            return
        drop = injector.drop()
        if drop == "drop_before":
            injector.count(drop)
            self._reject(arrival, None, "Connection dropped (injected).", body, fault=drop)
            await self._cut(scope, receive, send)
            return
        status, error, parsed = self._check(scope, body)
        if error is not None:
            self._reject(arrival, status, error, body, fault=drop)
            if drop is None:
                await send_json(send, status, {"error": error})
            else:
                injector.count(drop)
                await self._cut(scope, receive, send)
            return
        stall = 0.0 if drop else injector.slow_body()
        self._state.accept(
            EventRecord(
                seq=arrival.seq,
                body=parsed,
                idempotency_key=arrival.idempotency_key,
                user_agent=arrival.user_agent,
                received_at=arrival.received_at,
                received_monotonic=arrival.received_monotonic,
                duplicate=self._state.store.is_duplicate(arrival.idempotency_key),
                fault=drop or ("slow_body" if stall else None),
            ),
            body.size,
        )
        if drop is not None:
            injector.count(drop)
            await self._cut(scope, receive, send)
        elif stall:
            injector.count("slow_body")
            await self._stall(scope, receive, send, stall)
        else:
            await send_json(send, 200, {})

    def _check(self, scope: Scope, body: Body) -> tuple[int, str | None, Any]:
        """Return (status, error or None, parsed body) for a request that reached us."""
        if body.too_large:
            return 413, f"The body is larger than {self._state.max_body_bytes} bytes.", None
        key_error = self._state.check_write_key(header(scope, b"x-encharge-token"))
        if key_error is not None:
            return 401, key_error, None
        if not _is_json(header(scope, b"content-type")):
            return 415, "Content-Type must be application/json.", None
        ok, parsed = _parse(body.data)
        if not ok:
            return 400, "The body is not valid JSON.", None
        error = validate(parsed)
        return (400, error, None) if error is not None else (200, None, parsed)

    async def _refuse(self, arrival: _Arrival, refusal: Refusal, body: Body, send: Send) -> None:
        self._reject(arrival, refusal.status, refusal.error, body, fault=refusal.kind)
        await send_json(send, refusal.status, {"error": refusal.error}, refusal.headers)

    async def _pause(self, seconds: float) -> bool:
        """Sleep up to `seconds`; return True if the emulator is stopping."""
        if seconds > 0 and not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), seconds)
            except asyncio.TimeoutError:
                return False
        return self._stopping.is_set()

    async def _stall(self, scope: Scope, receive: Receive, send: Send, seconds: float) -> None:
        """Answer 200 but hold back the body's last byte for `seconds`."""
        headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        if await self._pause(seconds):
            await self._cut(scope, receive, send, started=True)
        else:
            await send({"type": "http.response.body", "body": b"}", "more_body": False})

    async def _cut(self, scope: Scope, receive: Receive, send: Send, started: bool = False) -> None:
        """Cut the connection: the client gets no (or no complete) answer."""
        if not self._abort(scope):
            # The socket is out of reach: leave a response unfinished instead, and the
            # server closes the connection itself.
            if not started:
                headers = [(b"content-length", b"2")]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
            return
        # Wait until the server has seen the connection go, so it does not answer for us.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_until_disconnect(receive), _CUT_WAIT)

    def _arrival(self, scope: Scope) -> _Arrival:
        return _Arrival(
            seq=self._state.store.next_seq(),
            method=scope["method"],
            path=scope["path"],
            idempotency_key=header(scope, b"idempotency-key"),
            user_agent=header(scope, b"user-agent"),
            received_at=time.time(),
            received_monotonic=time.monotonic(),
        )

    def _reject(
        self,
        arrival: _Arrival,
        status: int | None,
        error: str,
        body: Body | None,
        fault: str | None = None,
    ) -> None:
        # Whoever can reach the endpoint can send anything here, key or not: keep little.
        data = body.data if body is not None else b""
        truncated = len(data) > EMULATOR_REJECTED_BODY_BYTES
        if truncated:
            kept: Any = data[:EMULATOR_REJECTED_BODY_BYTES].decode("utf-8", "replace")
        else:
            kept = _parse(data)[1] if data else None
        self._state.reject(
            RejectedRecord(
                seq=arrival.seq,
                method=arrival.method[:EMULATOR_REJECTED_TEXT_CHARS],
                path=arrival.path[:EMULATOR_REJECTED_TEXT_CHARS],
                status=status,
                error=error,
                body=kept,
                idempotency_key=_cut(arrival.idempotency_key),
                user_agent=_cut(arrival.user_agent),
                received_at=arrival.received_at,
                received_monotonic=arrival.received_monotonic,
                fault=fault,
                body_size=body.size if body is not None else 0,
                body_truncated=truncated,
            )
        )


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
