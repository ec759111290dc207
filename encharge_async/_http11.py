"""The default transport on asyncio: one lean keep-alive HTTP/1.1 connection per worker.

Each worker sends one request at a time, so a connection needs no pool, no locks and no
task of its own: the whole request goes out in one write and the response is parsed as it
arrives, in `data_received`. Against httpx's `AsyncHTTPTransport` (httpcore, h11 and anyio
streams) that is about a fifteenth of the CPU per request, paid on the application's loop
(docs/performance.md). On trio, while respx or pytest-httpx patch httpx, and when the user
passes a transport, httpx's transports are used instead.

Failures raise what httpx's transports raise (`httpx.ConnectError`, `httpx.ReadError`,
`httpx.RemoteProtocolError`, `httpx.ConnectTimeout`), a missing answer `TimeoutError`; none
of their messages carries request headers, so the write key never reaches them.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from typing import Final, cast

import httpx

from ._constants import HAPPY_EYEBALLS_DELAY, MAX_RESPONSE_BODY_BYTES, MAX_RESPONSE_HEAD_BYTES

__all__ = ["Http11Transport", "RawResponse", "httpx_is_mocked"]

RawResponse = tuple[int, list[tuple[bytes, bytes]], bytes]
"""(status, headers as (name, value) bytes pairs, body) of one response."""

# Reading states.
_HEAD: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_UNTIL_EOF: Final = 3
_IDLE: Final = 4

# Within a chunked body: the size line is next, chunk data, the CRLF after it, trailers.
_CHUNK_SIZE: Final = 0
_CHUNK_DATA: Final = 1
_CHUNK_END: Final = 2
_TRAILERS: Final = 3


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; `request()` may be called again once the last one finished."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # False once the server closed, sent something unasked or a framing we cannot reuse.
        self.reusable = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._state = _IDLE
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._remaining = 0
        self._chunk_state = _CHUNK_SIZE
        self._keep_alive = True

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses: no isinstance).
        self.transport = cast(asyncio.Transport, transport)
        self.reusable = True

    def data_received(self, data: bytes) -> None:
        if self._state == _IDLE:
            # Nothing was asked: a server's "408 Request Timeout" on an idle connection, or
            # junk. Either way the connection's framing can no longer be trusted.
            self.reusable = False
            self.close()
            return
        self._buffer += data
        try:
            self._advance()
        except httpx.RemoteProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        self.reusable = False
        if self._state == _UNTIL_EOF:
            self._complete()
        elif self._state != _IDLE:
            self._fail(
                httpx.RemoteProtocolError(
                    "the server closed the connection before the response was complete"
                )
            )
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._state == _UNTIL_EOF and exc is None:
            self._complete()
        elif self._state != _IDLE:
            message = "the connection was lost before the response was complete"
            self._fail(httpx.ReadError(f"{message}: {exc}" if exc else message))

    # -- one exchange --------------------------------------------------------------------------

    def request(self, data: bytes) -> asyncio.Future[RawResponse]:
        """Send a whole request (head and body); the future gets the response."""
        assert self.transport is not None
        assert self._state == _IDLE
        waiter: asyncio.Future[RawResponse] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._state = _HEAD
        self._status = 0
        self._headers = []
        self._body = bytearray()
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        self._state = _IDLE
        if self._buffer or not self._keep_alive:  # bytes nobody asked for, or "close"
            self.reusable = False
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, self._headers, bytes(self._body)))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        self._state = _IDLE
        self.reusable = False
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    # -- parsing ---------------------------------------------------------------------------

    def _advance(self) -> None:
        buffer = self._buffer
        if self._state == _HEAD:
            while True:
                head = _take(buffer, b"\r\n\r\n", "the response head")
                if head is None:
                    return
                if not self._start(head):  # an interim 1xx response: the real one follows
                    break
        if self._state == _LENGTH:
            take = min(self._remaining, len(buffer))
            self._keep(buffer, take)
            self._remaining -= take
            if not self._remaining:
                self._complete()
        elif self._state == _CHUNKED:
            self._advance_chunked(buffer)
        elif self._state == _UNTIL_EOF:
            self._keep(buffer, len(buffer))

    def _start(self, head: bytes) -> bool:
        """Parse a response head; False for an interim (1xx) response."""
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:100]!r}")
        status = int(code)
        if 100 <= status < 200:
            if status == 101:
                raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols")
            return True
        headers: list[tuple[bytes, bytes]] = []
        length: bytes | None = None
        encoded = chunked = False
        keep_alive = version == b"HTTP/1.1"
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise httpx.RemoteProtocolError(f"malformed header line {line[:100]!r}")
            value = value.strip()
            headers.append((name, value))
            lowered = name.lower()
            if lowered == b"content-length":
                if length is not None and length != value:
                    raise httpx.RemoteProtocolError("conflicting Content-Length headers")
                length = value
            elif lowered == b"transfer-encoding":
                encoded = True
                chunked = value.lower().endswith(b"chunked")
            elif lowered == b"connection" and b"close" in value.lower():
                keep_alive = False
        self._status = status
        self._headers = headers
        self._keep_alive = keep_alive
        if status in (204, 304):
            self._state = _LENGTH
            self._remaining = 0
        elif chunked:
            self._state = _CHUNKED
            self._chunk_state = _CHUNK_SIZE
        elif length is not None and not encoded:
            if not length.isdigit():
                raise httpx.RemoteProtocolError(f"malformed Content-Length {length[:40]!r}")
            self._state = _LENGTH
            self._remaining = int(length)
        else:  # the body ends with the connection (RFC 9112 6.3)
            self._state = _UNTIL_EOF
            self._keep_alive = False
        return False

    def _advance_chunked(self, buffer: bytearray) -> None:
        while True:
            if self._chunk_state == _CHUNK_DATA:
                take = min(self._remaining, len(buffer))
                self._keep(buffer, take)
                self._remaining -= take
                if self._remaining:
                    return
                self._chunk_state = _CHUNK_END
            if self._chunk_state == _CHUNK_END:
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise httpx.RemoteProtocolError("malformed chunked body")
                del buffer[:2]
                self._chunk_state = _CHUNK_SIZE
            line = _take(buffer, b"\r\n", "a chunk size or trailer line")
            if line is None:
                return
            if self._chunk_state == _TRAILERS:
                if not line:
                    self._complete()
                    return
                continue  # trailer fields are not needed
            size = line.partition(b";")[0].strip()
            try:
                self._remaining = int(size, 16)
            except ValueError:
                raise httpx.RemoteProtocolError(f"malformed chunk size {size[:40]!r}") from None
            if self._remaining < 0:
                raise httpx.RemoteProtocolError(f"malformed chunk size {size[:40]!r}")
            self._chunk_state = _TRAILERS if self._remaining == 0 else _CHUNK_DATA

    def _keep(self, buffer: bytearray, count: int) -> None:
        room = MAX_RESPONSE_BODY_BYTES - len(self._body)
        if room > 0:
            self._body += buffer[: min(count, room)]
        del buffer[:count]


class Http11Transport(httpx.AsyncBaseTransport):
    """One keep-alive HTTP/1.1 connection to one origin (asyncio only), one request at a time.

    `request()` is the lean path the client's workers use; `handle_async_request` makes it
    an ordinary httpx transport too.
    """

    def __init__(self, url: httpx.URL, ssl_context: ssl.SSLContext | None, timeout: float) -> None:
        if url.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {url.scheme!r}")
        self._host = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = (ssl_context or httpx.create_ssl_context()) if url.scheme == "https" else None
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._closed = False

    async def request(self, data: bytes) -> RawResponse:
        """Send one whole request; return the response, all within the timeout.

        Raises:
            httpx.ConnectError, httpx.ConnectTimeout: no connection could be made.
            httpx.ReadError, httpx.RemoteProtocolError: the exchange broke off.
            TimeoutError: no whole response within the timeout.
        """
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout  # connecting included
        connection = self._connection
        if connection is None or not connection.reusable:
            if connection is not None:
                connection.close()
            self._connection = None
            connection = self._connection = await self._connect(self._timeout)
        waiter = connection.request(data)
        timer = loop.call_at(deadline, _time_out, waiter)
        try:
            return await waiter
        except BaseException:
            # Cancelled, timed out or broken: what the connection carries next is unknown.
            connection.abort()
            self._connection = None
            raise
        finally:
            timer.cancel()

    async def _connect(self, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        server_hostname = self._host if self._ssl is not None else None
        connecting: Awaitable[tuple[asyncio.Transport, _Connection]]
        if isinstance(loop, asyncio.BaseEventLoop):
            # Happy eyeballs (RFC 8305), as anyio's connect_tcp does: an unreachable IPv6
            # address does not hold the connection up for the whole timeout.
            connecting = loop.create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=server_hostname,
                happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
            )
        else:  # uvloop has no such option
            connecting = loop.create_connection(
                _Connection, self._host, self._port, ssl=self._ssl, server_hostname=server_hostname
            )
        try:
            _, connection = await asyncio.wait_for(connecting, timeout)
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(
                f"no connection to {self._host}:{self._port} within {timeout:g}s"
            ) from None
        except OSError as exc:  # refused, unreachable, name lookup, TLS verification
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        return connection

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send an httpx request over this transport's connection (its origin only)."""
        if (request.url.host, request.url.port or self._port) != (self._host, self._port):
            raise httpx.UnsupportedProtocol(f"this transport only reaches {self._host}")
        body = await request.aread()
        lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
        lines += [
            b"%s: %s" % (name, value)
            for name, value in request.headers.raw
            if name.lower() not in (b"content-length", b"transfer-encoding")
        ]
        lines.append(b"Content-Length: %d" % len(body))
        status, headers, content = await self.request(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        return httpx.Response(
            status, headers=headers, content=content, extensions={"http_version": b"HTTP/1.1"}
        )

    async def aclose(self) -> None:
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _take(buffer: bytearray, delimiter: bytes, what: str) -> bytes | None:
    """Cut what precedes `delimiter` off the front of `buffer`; None until it has arrived."""
    end = buffer.find(delimiter)
    if end < 0:
        if len(buffer) > MAX_RESPONSE_HEAD_BYTES:
            raise httpx.RemoteProtocolError(f"{what} is too large")
        return None
    data = bytes(buffer[:end])
    del buffer[: end + len(delimiter)]
    return data


def httpx_is_mocked() -> bool:
    """Whether a mocking library (respx, pytest-httpx) has patched httpx's or httpcore's
    transports. The client then uses httpx's transport, so that the mocks see its requests.
    """
    import httpcore

    for method in (
        httpcore.AsyncConnectionPool.handle_async_request,
        httpx.AsyncHTTPTransport.handle_async_request,
    ):
        if getattr(method, "__module__", "").partition(".")[0] not in ("httpcore", "httpx"):
            return True
    return False


def _time_out(waiter: asyncio.Future[RawResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no answer within the timeout"))
