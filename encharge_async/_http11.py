"""The default transport on asyncio: one lean keep-alive HTTP/1.1 connection per worker.

Each worker sends one request at a time, so a connection needs no pool, no locks and no
task of its own: the whole request goes out in one write and the response is parsed as it
arrives, in `data_received`, by llhttp (`httptools`, the parser uvicorn uses), or by h11
(installed with httpx) where httptools cannot be imported. Against httpx's
`AsyncHTTPTransport` (httpcore, h11 and anyio streams) that is a fraction of the CPU per
request, paid on the application's loop (docs/performance.md). On trio, while respx or
pytest-httpx patch httpx, and when the user passes a transport, httpx's transports are used
instead.

What it decides, and why:

- A response counts once its head arrived. Encharge stored the event when it answered
  2xx; a body that stalls, breaks off or never ends must not turn that into a retry (which
  stores it again). So a 2xx body is read for at most `SUCCESS_BODY_GRACE` seconds and
  `SUCCESS_BODY_BYTES` bytes, other bodies up to `MAX_RESPONSE_BODY_BYTES` within the
  timeout; then the response is returned with what arrived and the connection closed.
- An idle connection is not reused after `keepalive_expiry` seconds (as httpx), nor after
  the server's `Keep-Alive: timeout=N` less a margin. A request on a reused connection that
  the server closed or reset before answering anything is sent again at once on a new
  connection: its Idempotency-Key makes that safe.
- Plain http goes only to loopback peers, checked on the connected address (not the name)
  before the first byte, the write key, is written.
- Proxies: an http:// proxy, through a CONNECT tunnel for https endpoints and with
  absolute-form requests for http ones. `proxy_from_environment` reads the environment as
  httpx does with `trust_env`.

Failures raise what httpx's transports raise (`httpx.ConnectError`, `httpx.ReadError`,
`httpx.RemoteProtocolError`, `httpx.ConnectTimeout`, `httpx.ProxyError`), a missing answer
`TimeoutError`, a plain-http endpoint that is not this machine `ConfigurationError`; none of
their messages carries request headers or proxy credentials.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import math
import os
import re
import ssl
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Protocol, cast

# Imported here, not lazily: a module being imported by a client's starting thread when the
# process forks leaves its import lock held in the child forever (gunicorn --preload).
import certifi  # noqa: F401 - httpx.create_ssl_context imports it on first use
import h11
import httpcore
import httpx

from ._constants import (
    DEFAULT_KEEPALIVE_EXPIRY,
    DEFAULT_TIMEOUT,
    HAPPY_EYEBALLS_DELAY,
    KEEPALIVE_TIMEOUT_MARGIN,
    MAX_RESPONSE_BODY_BYTES,
    MAX_RESPONSE_FRAMING_BYTES,
    MAX_RESPONSE_HEAD_BYTES,
    SUCCESS_BODY_BYTES,
    SUCCESS_BODY_GRACE,
)
from ._exceptions import ConfigurationError

if TYPE_CHECKING:
    from os import PathLike

try:
    import httptools
except ImportError:  # pragma: no cover - the h11 path is tested by patching _new_parser
    httptools = None  # type: ignore[assignment]

__all__ = [
    "Http11Transport",
    "RawResponse",
    "create_tls_context",
    "httpx_is_mocked",
    "proxy_from_environment",
]

RawResponse = tuple[int, list[tuple[bytes, bytes]], bytes]
"""(status, headers as (name, value) bytes pairs, body) of one response."""

# Reading states of a connection.
_IDLE: Final = 0  # no request outstanding
_HEAD: Final = 1  # waiting for the final response's head (interim 1xx heads are skipped)
_BODY: Final = 2  # the head arrived; reading the body
_DONE: Final = 3  # the response ended within this data_received call

# Control characters other than HTAB are not allowed in field values (RFC 9110 5.5); llhttp
# only checks them in its strict mode, which also refuses obs-fold (RFC 9112 5.2 says a
# client must accept it), so the check is made here.
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# len(b"keep-alive"), len(b"content-length"), len(b"transfer-encoding"): other names are
# not even lower-cased.
_FRAMING_NAME_LENGTHS: Final = frozenset({10, 14, 17})
_KEEP_ALIVE_TIMEOUT: Final = re.compile(rb"(?:^|[,;\s])timeout\s*=\s*(\d{1,9})", re.IGNORECASE)


class _Parser(Protocol):
    """What a connection needs of a response parser (httptools' own interface)."""

    def feed_data(self, data: bytes) -> None: ...
    def get_status_code(self) -> int: ...
    def get_http_version(self) -> str: ...
    def should_keep_alive(self) -> bool: ...


class _Stop(Exception):
    """Raised from a parser callback to stop parsing: the response is over for us."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; `request()` may be called again once the last one finished.

    It is also the parser's callback object (`on_header`, `on_body`, ...).
    """

    def __init__(self, keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY) -> None:
        self.transport: asyncio.Transport | None = None
        # False once the server closed, sent something unasked or a framing we cannot reuse.
        self.reusable = False
        # Whether any byte of the current response arrived (a retry is safe only before).
        self.answered = False
        # Whether the last response arrived whole (else it was cut short and the
        # connection closed).
        self.complete = False
        # Loop time after which this idle connection must not be reused.
        self.expires_at = math.inf
        self._expiry = keepalive_expiry
        self._parser: _Parser | None = None
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._state = _IDLE
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._limit = 0
        self._budget = 0
        self._received = 0
        self._until_eof = False
        self._length = False  # a Content-Length header arrived
        self._codings: list[bytes] | None = None  # the Transfer-Encoding, if any
        self._keep_alive = True
        self._leftover = False
        self._server_timeout: float | None = None
        self._error: httpx.RemoteProtocolError | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._grace: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses: no isinstance).
        self.transport = cast(asyncio.Transport, transport)
        self.reusable = True

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state != _HEAD and state != _BODY:
            # Nothing was asked: a server's "408 Request Timeout" on an idle connection, or
            # junk. Either way the connection's framing can no longer be trusted.
            self.reusable = False
            self.close()
            return
        self.answered = True
        self._received += len(data)
        assert self._parser is not None
        try:
            self._parser.feed_data(data)
        except Exception as exc:  # llhttp's errors, h11's, or a callback's
            if self._state == _DONE:  # what followed the response is not ours to parse
                self._leftover = True
            else:
                self._broken(self._error or _protocol_error(exc))
                return
        if self._state == _DONE:
            self._finish()
        elif self._received > self._budget:
            if self._state == _HEAD:
                self._fail(httpx.RemoteProtocolError("the response head is too large"))
            else:
                self._cut_short()
        elif self._state == _BODY and self._grace is None and 200 <= self._status < 300:
            # Scheduled only now: most bodies end in the data that carried the head.
            loop = asyncio.get_running_loop()
            self._grace = loop.call_at(
                min(loop.time() + SUCCESS_BODY_GRACE, self._deadline), self._cut_short
            )

    def eof_received(self) -> bool | None:
        self.reusable = False
        if self._state == _BODY:
            self._cut_short(complete=self._until_eof)
        elif self._state == _HEAD:
            self._fail(
                httpx.RemoteProtocolError(
                    "the server closed the connection before the response was complete"
                )
            )
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._state == _BODY:
            self._cut_short(complete=self._until_eof and exc is None)
        elif self._state == _HEAD:
            message = "the connection was lost before the response was complete"
            self._fail(httpx.ReadError(f"{message}: {exc}" if exc else message))

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._state == _DONE:  # a second response nobody asked for
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        if _BAD_VALUE.search(value) is not None:
            self._reject(f"malformed value in header {name[:40]!r}")
        if self._state != _HEAD:  # a trailer
            return
        self._headers.append((name, value))
        if len(name) in _FRAMING_NAME_LENGTHS:
            lowered = name.lower()
            if lowered == b"content-length":
                self._length = True
            elif lowered == b"transfer-encoding":
                codings = [c.strip().lower() for c in value.split(b",")]
                self._codings = codings if self._codings is None else self._codings + codings
            elif lowered == b"keep-alive":
                found = _KEEP_ALIVE_TIMEOUT.search(value)
                if found is not None:
                    self._server_timeout = float(found[1])

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 100:
            self._reject(f"malformed status code {status}")
        if not parser.get_http_version().startswith("1."):
            self._reject(f"unsupported HTTP version {parser.get_http_version()[:10]!r}")
        if status < 200:
            if status == 101:
                self._reject("unexpected 101 Switching Protocols")
            # An interim response: the final one follows.
            self._headers = []
            self._length = False
            self._codings = None
            return
        codings = self._codings
        if codings is not None:
            # Codings other than chunked would have to be decoded, and a Content-Length
            # beside them is the shape of response splitting (RFC 9112 6.3): as h11.
            if codings != [b"chunked"]:
                self._reject("unsupported Transfer-Encoding")
            if self._length:
                self._reject("both Transfer-Encoding and Content-Length")
        self._until_eof = codings is None and not self._length and status not in (204, 304)
        self._status = status
        self._state = _BODY
        self._limit = SUCCESS_BODY_BYTES if 200 <= status < 300 else MAX_RESPONSE_BODY_BYTES
        self._budget = self._received + self._limit + MAX_RESPONSE_FRAMING_BYTES

    def on_body(self, body: bytes) -> None:
        room = self._limit - len(self._body)
        if len(body) <= room:
            self._body += body
            return
        self._body += body[:room]
        self._state = _DONE
        self._keep_alive = False
        self.complete = False
        raise _Stop

    def on_message_complete(self) -> None:
        if self._state != _BODY:  # the end of an interim response
            return
        assert self._parser is not None
        self._keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self._state = _DONE

    # -- one exchange --------------------------------------------------------------------------

    def request(self, data: bytes, deadline: float) -> asyncio.Future[RawResponse]:
        """Send a whole request (head and body); the future gets the response.

        At `deadline` (loop time) the future gets `TimeoutError`, or, once the head has
        arrived, the response with the body read so far.
        """
        assert self.transport is not None
        assert self._state == _IDLE
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[RawResponse] = loop.create_future()
        self._waiter = waiter
        self._state = _HEAD
        self._status = 0
        self._headers = []
        self._body = bytearray()
        self._received = 0
        self._budget = MAX_RESPONSE_HEAD_BYTES
        self._leftover = False
        self._length = False
        self._codings = None
        self._server_timeout = None
        self._error = None
        self.answered = False
        self.complete = False
        self._parser = _new_parser(self)
        self._deadline = deadline
        self._timer = loop.call_at(deadline, self._time_out)
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now, whatever it carries (a cancelled or failed request)."""
        self._cancel_timers()
        self._waiter = None
        self._state = _IDLE
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _reject(self, message: str) -> None:
        # Raised through the parser, which wraps it; kept here to be raised as it is.
        self._error = httpx.RemoteProtocolError(message)
        raise self._error

    def _broken(self, exc: Exception) -> None:
        """A framing error: before the head it fails the request, after it cuts it short."""
        if self._state == _BODY:
            self._cut_short()
        else:
            self._fail(exc)

    def _cut_short(self, complete: bool = False) -> None:
        """End the response with the body read so far (the head is what counts)."""
        self._state = _DONE
        self._keep_alive = False
        self.complete = complete
        self._finish()

    def _finish(self) -> None:
        self._cancel_timers()
        waiter, self._waiter = self._waiter, None
        self._parser = None
        self._state = _IDLE
        if self._leftover or not self._keep_alive or not self.complete:
            self.reusable = False
            self.close()
        else:
            expiry = self._expiry
            if self._server_timeout is not None:
                expiry = min(expiry, self._server_timeout - KEEPALIVE_TIMEOUT_MARGIN)
            self.expires_at = asyncio.get_running_loop().time() + expiry
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, self._headers, bytes(self._body)))

    def _fail(self, exc: Exception) -> None:
        self._cancel_timers()
        waiter, self._waiter = self._waiter, None
        self._parser = None
        self._state = _IDLE
        self.reusable = False
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _time_out(self) -> None:
        self._timer = None
        if self._state == _BODY:
            self._cut_short()
        else:
            self._fail(TimeoutError("no answer within the timeout"))

    def _cancel_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None


def _protocol_error(exc: Exception) -> httpx.RemoteProtocolError:
    if isinstance(exc, httpx.RemoteProtocolError):
        return exc
    # llhttp's messages name the fault ("Invalid character in chunk size"), never the data.
    return httpx.RemoteProtocolError(f"malformed response: {exc}")


# -- parsers -------------------------------------------------------------------------------------


def _llhttp_parser(connection: _Connection) -> _Parser:
    assert httptools is not None
    parser = httptools.HttpResponseParser(connection)
    # What RFC 9112 tells a client to accept (bare LF line ends, obs-fold: 2.2, 5.2) and
    # h11 accepts too (HTTP/1.x of any minor version, whitespace after a chunk size); value
    # characters are then checked in on_header.
    parser.set_dangerous_leniencies(
        lenient_headers=True,
        lenient_optional_cr_before_lf=True,
        lenient_spaces_after_chunk_size=True,
        lenient_version=True,
    )
    return parser


class _H11Parser:
    """h11 behind httptools' interface: the same callbacks, for when httptools is missing."""

    # h11 reads a response only after a request: this one is never written anywhere.
    _REQUEST: Final = h11.Request(
        method="POST", target="/", headers=[("Host", "h"), ("Content-Length", "0")]
    )

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_BYTES)
        self._h11.send(self._REQUEST)
        self._h11.send(h11.EndOfMessage())
        self._status = 0
        self._version = "1.1"

    def feed_data(self, data: bytes) -> None:
        receiver = self._h11
        connection = self._connection
        receiver.receive_data(data)
        while True:
            try:
                event = receiver.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(f"malformed response: {exc}") from None
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:  # bytes after the response: not ours to parse
                raise _Stop
            if isinstance(event, h11.InformationalResponse | h11.Response):
                self._status = event.status_code
                self._version = event.http_version.decode("ascii", "replace")
                for name, value in event.headers.raw_items():
                    connection.on_header(name, value)
                connection.on_headers_complete()
                if isinstance(event, h11.InformationalResponse):
                    connection.on_message_complete()
            elif isinstance(event, h11.Data):
                connection.on_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                connection.on_message_complete()
            else:  # pragma: no cover - ConnectionClosed: receive_data(b"") is never called
                return

    def get_status_code(self) -> int:
        return self._status

    def get_http_version(self) -> str:
        return self._version

    def should_keep_alive(self) -> bool:
        return self._h11.their_state is h11.DONE


_new_parser: Callable[[_Connection], _Parser] = (
    _llhttp_parser if httptools is not None else _H11Parser
)
"""The parser of each response; tests swap it to run every framing test through both."""


# -- proxies and TLS -----------------------------------------------------------------------------


class _Tunnel(asyncio.Protocol):
    """A connection to a proxy until it answered CONNECT; then TLS runs over it."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if max(end, len(self._buffer) if end < 0 else 0) > MAX_RESPONSE_HEAD_BYTES:
            self.answer.set_exception(httpx.ProxyError("the proxy's answer is too large"))
            return
        if end < 0:
            return
        version, _, rest = bytes(self._buffer[: self._buffer.find(b"\r\n")]).partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            self.answer.set_exception(httpx.ProxyError("the proxy sent a malformed answer"))
        elif end + 4 != len(self._buffer) and 200 <= int(code) < 300:
            self.answer.set_exception(httpx.ProxyError("the proxy sent bytes before TLS"))
        else:
            self.answer.set_result(int(code))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(
                httpx.ProxyError("the proxy closed the connection before answering CONNECT")
            )


def create_tls_context(
    verify: bool | str | PathLike[str] | ssl.SSLContext = True,
) -> ssl.SSLContext:
    """The TLS context for `verify=`, as httpx understands it, offering ALPN `http/1.1`.

    `True`: the certifi bundle (or `SSL_CERT_FILE` / `SSL_CERT_DIR`, as httpx); `False`: no
    verification at all; a path: that CA bundle file or directory; a context: itself (ALPN is
    set on it, as httpcore does). Loading a bundle takes ~20 ms: build it once, off the loop.

    Raises:
        ConfigurationError: a CA bundle path that does not exist or cannot be loaded.
    """
    if isinstance(verify, ssl.SSLContext):
        context = verify
    elif verify is True:
        try:
            context = httpx.create_ssl_context()
        except (OSError, ssl.SSLError) as exc:
            variables = [
                f"{name}={os.environ[name]!r}"[:200]
                for name in ("SSL_CERT_FILE", "SSL_CERT_DIR")
                if os.environ.get(name)
            ]
            where = " and ".join(variables) or "certifi's bundle"
            raise ConfigurationError(
                f"could not load the CA certificates from {where}: {exc}"
            ) from None
    elif verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        path = os.fspath(verify)
        try:
            if os.path.isdir(path):
                context = ssl.create_default_context(capath=path)
            else:
                context = ssl.create_default_context(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            message = f"verify={path!r}: no usable CA bundle there ({exc})"
            raise ConfigurationError(message) from None
    context.set_alpn_protocols(["http/1.1"])
    return context


def proxy_from_environment(url: httpx.URL | str) -> httpx.URL | None:
    """The proxy for `url` from the environment, as httpx picks it with `trust_env=True`.

    `HTTPS_PROXY` / `HTTP_PROXY` by the URL's scheme, else `ALL_PROXY` (lower-case names win,
    and `HTTP_PROXY` is ignored in a CGI request, as urllib does); none when `NO_PROXY` is
    `*` or names the host: an exact IP address, `localhost`, a domain (which covers its
    subdomains) or `.domain` (only its subdomains), each optionally with `:port`. A proxy
    given without a scheme is an http:// one.

    Unlike httpx, an endpoint on this machine (`localhost`, a loopback address) never goes
    through a proxy: no proxy can reach it, and plain http would carry the write key to it.
    """
    url = httpx.URL(url)
    if url.host.lower() == "localhost" or _is_loopback((url.host,)):
        return None
    proxies = urllib.request.getproxies_environment()
    if _bypassed(url, proxies.get("no", "")):
        return None
    value = proxies.get(url.scheme) or proxies.get("all")
    if not value:
        return None
    return httpx.URL(value if "://" in value else f"http://{value}")


def _bypassed(url: httpx.URL, no_proxy: str) -> bool:
    host = url.host.lower()
    port = url.port or (443 if url.scheme == "https" else 80)
    for item in no_proxy.split(","):
        entry = item.strip().lower().partition("://")[2 if "://" in item else 0]
        if entry == "*":
            return True
        subdomains_only = entry.startswith((".", "*"))
        entry = entry.lstrip(".*")
        if not entry:
            continue
        try:
            pattern = httpx.URL(f"http://{entry}")
        except httpx.InvalidURL:
            try:  # a bare IPv6 address
                pattern = httpx.URL(f"http://[{entry}]")
            except httpx.InvalidURL:
                continue
        if pattern.port is not None and pattern.port != port:
            continue
        domain = pattern.host
        if host.endswith(f".{domain}") or (host == domain and not subdomains_only):
            return True
    return False


def _is_loopback(peername: object) -> bool:
    """Whether a connected socket's peer address is this machine (127.0.0.0/8, ::1)."""
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return False
    try:
        address = ipaddress.ip_address(peername[0].partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _authority(raw_host: bytes, port: int) -> bytes:
    """`host:port` as a request target names it (IDNA-encoded, IPv6 in brackets)."""
    return b"[%s]:%d" % (raw_host, port) if b":" in raw_host else b"%s:%d" % (raw_host, port)


# -- the transport -------------------------------------------------------------------------------


class Http11Transport(httpx.AsyncBaseTransport):
    """One keep-alive HTTP/1.1 connection to one origin (asyncio only), one request at a time.

    `request()` is the lean path the client's workers use; `handle_async_request` makes it
    an ordinary httpx transport too.

    Args:
        url: the endpoint; only its scheme, host and port are used here.
        ssl_context: a context already loaded for `verify=True` (loading one takes ~20 ms:
            the client loads it once, off the loop); ignored for other `verify` values.
        timeout: seconds for a whole exchange, connecting included.
        verify: `True` (the default CA bundle), `False`, a CA bundle path or an
            `ssl.SSLContext`, as httpx's `verify=` (see `create_tls_context`).
        proxy: an http:// proxy URL (credentials as `http://user:pass@host:port`), or None
            for a direct connection; see `proxy_from_environment`.
        keepalive_expiry: seconds an idle connection may be reused.

    Raises:
        ConfigurationError: an unsupported URL or proxy scheme, an unusable CA bundle path.
    """

    def __init__(
        self,
        url: httpx.URL | str,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        verify: bool | str | PathLike[str] | ssl.SSLContext = True,
        proxy: httpx.URL | str | None = None,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY,
    ) -> None:
        url = httpx.URL(url)
        if url.scheme not in ("http", "https"):
            raise ConfigurationError(f"unsupported URL scheme {url.scheme!r}")
        self._host = url.host
        self._raw_host = url.raw_host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._secure = url.scheme == "https"
        self._ssl: ssl.SSLContext | None = None
        if self._secure:
            use = ssl_context if verify is True and ssl_context is not None else verify
            self._ssl = create_tls_context(use)
        self._timeout = timeout
        self._expiry = keepalive_expiry
        self._proxy: tuple[str, int] | None = None
        self._proxy_header = b""  # the Proxy-Authorization line, when credentials are given
        self._origin = b""  # for absolute-form requests through a proxy (http endpoints)
        if proxy is not None:
            proxy = httpx.URL(proxy)
            if proxy.scheme != "http":
                raise ConfigurationError(
                    f"unsupported proxy scheme {proxy.scheme!r}: only http:// proxies"
                )
            self._proxy = (proxy.host, proxy.port or 80)
            if proxy.username or proxy.password:
                credentials = f"{proxy.username}:{proxy.password}".encode()
                self._proxy_header = (
                    b"Proxy-Authorization: Basic " + base64.b64encode(credentials) + b"\r\n"
                )
            if not self._secure:
                self._origin = b"http://" + _authority(self._raw_host, self._port)
        self._connection: _Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        scheme = "https" if self._secure else "http"
        via = f" via proxy {self._proxy[0]}:{self._proxy[1]}" if self._proxy else ""
        return f"<Http11Transport {scheme}://{self._host}:{self._port}{via}>"

    async def request(self, data: bytes) -> RawResponse:
        """Send one whole request; return the response, all within the timeout.

        `data` is an origin-form request (`POST /path HTTP/1.1`, a Host header); through a
        proxy it is rewritten here.

        Raises:
            httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError: no connection.
            httpx.ReadError, httpx.RemoteProtocolError: the exchange broke off before the
                response's head arrived.
            TimeoutError: no response head within the timeout.
            ConfigurationError: a plain-http endpoint whose address is not loopback.
        """
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout  # connecting included
        if self._proxy is not None and not self._secure:
            data = self._absolute_form(data)
        connection = self._connection
        reused = (
            connection is not None and connection.reusable and loop.time() < connection.expires_at
        )
        if connection is None or not reused:
            if connection is not None:
                connection.close()
            self._connection = None
            connection = self._connection = await self._connect(deadline)
        try:
            return await connection.request(data, deadline)
        except (httpx.ReadError, httpx.RemoteProtocolError):
            self._drop(connection)
            if not reused or connection.answered:
                raise
            # The server closed or reset the kept-alive connection before answering (an idle
            # timeout racing this request): send it again, once, on a new connection.
        except BaseException:
            # Cancelled, timed out: what the connection carries next is unknown.
            self._drop(connection)
            raise
        connection = self._connection = await self._connect(deadline)
        try:
            return await connection.request(data, deadline)
        except BaseException:
            self._drop(connection)
            raise

    def _drop(self, connection: _Connection) -> None:
        connection.abort()
        if self._connection is connection:
            self._connection = None

    def _absolute_form(self, data: bytes) -> bytes:
        # "POST /v1/ HTTP/1.1\r\n" becomes "POST http://host:port/v1/ HTTP/1.1\r\n".
        method, _, rest = data.partition(b" ")
        line_end = rest.find(b"\r\n") + 2
        return b"%s %s%s%s%s" % (
            method,
            self._origin,
            rest[:line_end],
            self._proxy_header,
            rest[line_end:],
        )

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        timeout = max(deadline - loop.time(), 0.0)
        host, port = self._proxy or (self._host, self._port)
        # Not asyncio.wait_for: before Python 3.12 it can drop a connection that was made just
        # as the wait was cancelled (the socket then leaks). A connection that arrives after
        # we gave up on it is closed here.
        opening = asyncio.ensure_future(self._open(host, port))
        try:
            done, _ = await asyncio.wait((opening,), timeout=timeout)
        except BaseException:
            _abandon(opening)
            raise
        if not done:
            _abandon(opening)
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {timeout:g}s")
        try:
            return opening.result()
        except OSError as exc:  # refused, unreachable, name lookup, TLS verification
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc

    async def _open(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        tunnel = self._proxy is not None and self._secure
        factory: Callable[[], asyncio.Protocol] = (
            _Tunnel if tunnel else lambda: _Connection(self._expiry)
        )
        ssl_context = None if tunnel else self._ssl
        server_hostname = self._host if ssl_context is not None else None
        connecting: Awaitable[tuple[asyncio.Transport, asyncio.Protocol]]
        if isinstance(loop, asyncio.BaseEventLoop) and not _is_ip_literal(host):
            # Happy eyeballs (RFC 8305), as anyio's connect_tcp does: an unreachable IPv6
            # address does not hold the connection up for the whole timeout. Not for an
            # address: there is nothing to race, and asyncio's race can leak the socket of
            # an attempt cancelled at shutdown.
            connecting = loop.create_connection(
                factory,
                host,
                port,
                ssl=ssl_context,
                server_hostname=server_hostname,
                happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
            )
        else:  # uvloop has no such option
            connecting = loop.create_connection(
                factory, host, port, ssl=ssl_context, server_hostname=server_hostname
            )
        transport, protocol = await connecting
        try:
            if not self._secure and not _is_loopback(transport.get_extra_info("peername")):
                # Checked on the address actually connected to: a name is no guarantee.
                raise ConfigurationError(
                    f"plain http is only sent to this machine: {host} is not a loopback "
                    "address; use https"
                )
            if isinstance(protocol, _Tunnel):
                return await self._through(transport, protocol)
        except BaseException:
            transport.abort()
            raise
        return cast(_Connection, protocol)

    async def _through(self, transport: asyncio.Transport, tunnel: _Tunnel) -> _Connection:
        """CONNECT through the proxy, then TLS with the endpoint over that tunnel."""
        assert self._ssl is not None
        target = _authority(self._raw_host, self._port)
        transport.write(
            b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target, target, self._proxy_header)
        )
        status = await tunnel.answer
        if not 200 <= status < 300:
            raise httpx.ProxyError(f"the proxy refused the tunnel: HTTP {status}")
        connection = _Connection(self._expiry)
        loop = asyncio.get_running_loop()
        secure = await loop.start_tls(transport, connection, self._ssl, server_hostname=self._host)
        if secure is None:  # pragma: no cover - only when the transport closed meanwhile
            raise httpx.ConnectError("the proxy closed the tunnel")
        connection.connection_made(secure)
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


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _abandon(opening: asyncio.Future[_Connection]) -> None:
    """Cancel a connection attempt; close the connection if it is made all the same."""

    def close_if_made(future: asyncio.Future[_Connection]) -> None:
        if not future.cancelled() and future.exception() is None:
            future.result().close()

    opening.cancel()
    opening.add_done_callback(close_if_made)


def httpx_is_mocked() -> bool:
    """Whether a mocking library (respx, pytest-httpx) has patched httpx's or httpcore's
    transports. The client then uses httpx's transport, so that the mocks see its requests.
    """
    for method in (
        httpcore.AsyncConnectionPool.handle_async_request,
        httpx.AsyncHTTPTransport.handle_async_request,
    ):
        if getattr(method, "__module__", "").partition(".")[0] not in ("httpcore", "httpx"):
            return True
    return False
