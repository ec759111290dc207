"""The default asyncio transport (`Http11Transport`), against scripted servers over real sockets.

Each server reads whole requests and answers with the bytes a test scripts, split and
timed as the test wants, so that every framing and every way of breaking off is exercised.
Every test runs with both response parsers: llhttp (httptools) and the h11 fallback.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import h11
import httpx
import pytest
import respx
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import encharge_async
from encharge_async import ConfigurationError
from encharge_async import _http11 as http11
from encharge_async._constants import (
    MAX_RESPONSE_BODY_BYTES,
    SUCCESS_BODY_BYTES,
)
from encharge_async._http11 import (
    Http11Transport,
    _Connection,
    create_tls_context,
    httpx_is_mocked,
    proxy_from_environment,
)

from .conftest import WRITE_KEY, wait_until

pytestmark = pytest.mark.anyio

# A script answers one request: it gets the request's bytes and the stream to write to.
Script = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the transport is asyncio's; trio uses httpx's


@pytest.fixture(params=["llhttp", "h11"], autouse=True)
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "h11":
        monkeypatch.setattr(http11, "_new_parser", http11._H11Parser)
    else:
        assert http11._new_parser is http11._llhttp_parser  # httptools is installed here
    return str(request.param)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (RST), not a FIN."""
    writer.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    writer.transport.abort()


def reply(*parts: bytes, close: bool = False, pause: float = 0.0, rst: bool = False) -> Script:
    async def script(request: bytes, writer: asyncio.StreamWriter) -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)  # a server writing in parts, on purpose
        if rst:
            reset(writer)
        elif close:
            writer.close()

    return script


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


class ScriptedServer:
    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.requests: list[bytes] = []
        self.connections = 0
        self.url = ""
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.scripts:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                await self.scripts.pop(0)(request, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def scripted(
    *scripts: Script, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(list(scripts))
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=ssl_context)
    server.port = listener.sockets[0].getsockname()[1]
    server.url = f"{'https' if ssl_context else 'http'}://{host}:{server.port}/v1/"
    try:
        yield server
    finally:
        listener.close()
        await asyncio.wait_for(listener.wait_closed(), 5)


def post(body: bytes = b'{"n":1}') -> bytes:
    return b"POST /v1/ HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def transport_for(
    server: ScriptedServer, timeout: float = 5.0, keepalive_expiry: float = 5.0
) -> Http11Transport:
    return Http11Transport(server.url, None, timeout, keepalive_expiry=keepalive_expiry)


def idle_connection(transport: Http11Transport) -> _Connection:
    connection = transport._connection
    assert connection is not None
    return connection


async def test_keep_alive_reuses_one_connection() -> None:
    async with scripted(reply(OK), reply(OK), reply(OK)) as server:
        transport = transport_for(server)
        for _ in range(3):
            assert await transport.request(post()) == (200, [(b"Content-Length", b"2")], b"{}")
        await transport.aclose()
    assert server.connections == 1
    assert server.requests == [post()] * 3


async def test_chunked_body_split_byte_by_byte_with_extensions_and_trailers() -> None:
    response = (
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n"
        b"Retry-After: 7\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    parts = [response[i : i + 1] for i in range(len(response))]
    async with scripted(reply(*parts), reply(OK)) as server:
        transport = transport_for(server)
        status, headers, body = await transport.request(post())
        assert (status, body) == (503, b"hello world")
        assert (b"Retry-After", b"7") in headers
        assert (b"X-Trailer", b"yes") not in headers
        assert (await transport.request(post()))[0] == 200  # still in step: reused
        await transport.aclose()
    assert server.connections == 1


async def test_a_body_without_length_ends_with_the_connection() -> None:
    async with scripted(
        reply(b"HTTP/1.1 500 Oops\r\n\r\nsomething ", b"broke", close=True), reply(OK)
    ) as server:
        transport = transport_for(server)
        assert await transport.request(post()) == (500, [], b"something broke")
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 2\r\n\r\n",
    ],
    ids=["connection-close", "http-1.0", "server-keep-alive-too-short"],
)
async def test_a_connection_the_server_will_not_keep_is_not_reused(head: bytes) -> None:
    async with scripted(reply(head + b"{}"), reply(OK)) as server:
        transport = transport_for(server)
        assert (await transport.request(post()))[2] == b"{}"
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


async def test_an_expired_idle_connection_is_not_reused() -> None:
    async with scripted(reply(OK), reply(OK)) as server:
        transport = transport_for(server, keepalive_expiry=0.0)
        assert (await transport.request(post()))[0] == 200
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\n{}",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n\tb\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
        b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2 \r\n{}\r\n0\r\n\r\n",
    ],
    ids=["bare-lf", "obs-fold", "obs-fold-tab", "interim", "no-reason", "chunk-size-space"],
)
async def test_what_rfc_9112_tells_a_client_to_accept_is_accepted(response: bytes) -> None:
    async with scripted(reply(response), reply(OK)) as server:
        transport = transport_for(server)
        assert (await transport.request(post()))[::2] == (200, b"{}")
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 1


async def test_an_idle_connection_the_server_closed_is_replaced_without_an_error() -> None:
    async with scripted(reply(OK, close=True), reply(OK)) as server:
        transport = transport_for(server)
        assert (await transport.request(post()))[0] == 200
        # The server's FIN arrives while the connection is idle (white-box: the connection
        # is the unit under test, and nothing public tells that it has seen the FIN).
        await wait_until(lambda: not idle_connection(transport).reusable)
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_a_reused_connection_dropped_before_any_answer_is_retried_at_once(
    reset: bool,
) -> None:
    async with scripted(reply(OK), reply(close=True, rst=reset), reply(OK)) as server:
        transport = transport_for(server)
        assert (await transport.request(post()))[0] == 200
        assert (await transport.request(post(b"2")))[0] == 200  # no error surfaced
        await transport.aclose()
    assert server.connections == 2
    assert server.requests == [post(), post(b"2"), post(b"2")]  # same bytes: same key


async def test_a_retry_dropped_again_is_an_error() -> None:
    async with scripted(reply(OK), reply(close=True), reply(rst=True)) as server:
        transport = transport_for(server)
        assert (await transport.request(post()))[0] == 200
        with pytest.raises(httpx.ReadError, match="lost"):
            await transport.request(post())
        await transport.aclose()
    assert len(server.requests) == 3  # once on the reused connection, once more: no further


async def test_a_new_connection_dropped_before_any_answer_is_an_error() -> None:
    async with scripted(reply(close=True), reply(OK)) as server:
        transport = transport_for(server)
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await transport.request(post())
        assert len(server.requests) == 1  # not retried: the server may be refusing it
        await transport.aclose()


async def test_a_reused_connection_that_answered_in_part_is_not_retried() -> None:
    async with scripted(reply(OK), reply(b"HTTP/1.1 20", close=True), reply(OK)) as server:
        transport = transport_for(server)
        assert (await transport.request(post()))[0] == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await transport.request(post())
        await transport.aclose()
    assert len(server.requests) == 2


@pytest.mark.slow
async def test_an_error_body_of_endless_tiny_chunks_is_cut_short() -> None:
    head = b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nKeep-Alive: max=5\r\n\r\n"
    async with scripted(reply(head, *[b"1;e\r\nx\r\n" * 1000] * 40), reply(OK)) as server:
        transport = transport_for(server, timeout=30.0)
        status, _, body = await transport.request(post())
        assert status == 503
        assert 0 < len(body) < MAX_RESPONSE_BODY_BYTES  # the framing budget ran out first
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


async def test_a_large_error_body_is_truncated_and_the_connection_closed() -> None:
    big = b"x" * 200_000
    head = b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % len(big)
    async with scripted(reply(head, big), reply(OK)) as server:
        transport = transport_for(server)
        status, _, body = await transport.request(post())
        assert (status, len(body)) == (500, MAX_RESPONSE_BODY_BYTES)
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


@pytest.mark.parametrize(
    "parts",
    [
        # The body stalls: the response is returned after the grace, not the timeout.
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"],
        # It breaks off, or its framing is broken.
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", b"CLOSE"],
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", b"RESET"],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc"],
        # It never ends: one byte per chunk, forever.
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", *[b"1\r\nx\r\n" * 500] * 40],
        # It is larger than needed.
        [b"HTTP/1.1 202 Accepted\r\nContent-Length: 100000\r\n\r\n", b"y" * 100_000],
    ],
    ids=["stalls", "cut", "reset", "bad-chunk-size", "bad-chunk-end", "endless-chunks", "large"],
)
@pytest.mark.slow
async def test_a_2xx_counts_on_its_head_whatever_its_body_does(parts: list[bytes]) -> None:
    if parts[-1] in (b"CLOSE", b"RESET"):
        script = reply(*parts[:-1], close=True, rst=parts[-1] == b"RESET")
    else:
        script = reply(*parts)
    async with scripted(script, reply(OK)) as server:
        transport = transport_for(server, timeout=30.0)
        status, _, body = await transport.request(post())
        assert status // 100 == 2
        assert len(body) <= SUCCESS_BODY_BYTES
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2  # the first connection was not trusted again


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "malformed"),
        (b"HTTP/3.0 200 OK\r\n\r\n", "version"),
        (b"HTTP/1.1 2xx OK\r\n\r\n", "malformed"),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "malformed"),
        (b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n", "status"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", "ontent-"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "ontent-"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n{}", "ontent-"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", "ontent-"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n{}", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n{}", "Transfer-Encoding"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
            "Transfer-Encoding",
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101|upgrade|Upgrade|SWITCH"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, "large|long"),
    ],
)
@pytest.mark.slow
async def test_protocol_errors_are_remote_protocol_errors(response: bytes, error: str) -> None:
    async with scripted(reply(response), reply(OK)) as server:
        transport = transport_for(server)
        with pytest.raises(httpx.RemoteProtocolError, match=error):
            await transport.request(post())
        assert (await transport.request(post()))[0] == 200  # a new connection
        await transport.aclose()
    assert server.connections == 2


@pytest.mark.parametrize(
    "partial",
    [b"", b"HTTP/1.1 200 OK\r\nContent"],
    ids=["nothing", "half-head"],
)
async def test_a_connection_cut_before_the_head_is_a_transport_error(partial: bytes) -> None:
    async with scripted(reply(partial, close=True)) as server:
        transport = transport_for(server)
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await transport.request(post())
        await transport.aclose()


@pytest.mark.slow
async def test_no_answer_times_out_and_the_connection_is_dropped() -> None:
    async with scripted(reply(b"HTTP/1.1 200 OK\r\n"), reply(OK)) as server:
        transport = transport_for(server, timeout=0.2)
        with pytest.raises(TimeoutError):
            await transport.request(post())
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


@pytest.mark.slow
async def test_an_error_body_that_stalls_is_returned_at_the_timeout() -> None:
    head = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 100\r\n\r\n"
    async with scripted(reply(head, b'{"error":'), reply(OK)) as server:
        transport = transport_for(server, timeout=0.3)
        assert await transport.request(post()) == (
            400,
            [(b"Content-Length", b"100")],
            b'{"error":',
        )
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


async def test_unsolicited_bytes_on_an_idle_connection_retire_it() -> None:
    async def with_junk(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK + b"HTTP/1.1 408 Request Timeout\r\n\r\n")

    async with scripted(with_junk, reply(OK)) as server:
        transport = transport_for(server)
        assert (await transport.request(post()))[0] == 200
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


async def test_connection_refused_is_a_connect_error() -> None:
    async with scripted() as server:
        url = server.url
    transport = Http11Transport(httpx.URL(url), None, 5.0)
    with pytest.raises(httpx.ConnectError):
        await transport.request(post())
    await transport.aclose()
    with pytest.raises(httpx.ConnectError, match="closed"):
        await transport.request(post())


async def test_cancelling_a_request_aborts_its_connection() -> None:
    async with scripted(reply(b"HTTP/1.1 200 OK\r\n"), reply(OK)) as server:
        transport = transport_for(server)
        task = asyncio.ensure_future(transport.request(post()))
        await wait_until(lambda: len(server.requests) == 1)  # the answer has begun
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


async def test_it_is_an_httpx_transport_too() -> None:
    async with scripted(reply(b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nyes")) as server:
        transport = transport_for(server)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post(server.url, content=b"abc", headers={"X-A": "1"})
            with pytest.raises(httpx.UnsupportedProtocol):
                await client.post("http://elsewhere.test/", content=b"")
    assert (response.status_code, response.content) == (201, b"yes")
    request = server.requests[0]
    assert request.startswith(b"POST /v1/ HTTP/1.1\r\n")
    assert b"\r\nX-A: 1\r\n" in request
    assert request.endswith(b"\r\nContent-Length: 3\r\n\r\nabc")


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


def tls_server_context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    context.set_alpn_protocols(["http/1.1"])
    return context


def trusting(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


@pytest.mark.slow
async def test_tls_certificates_are_verified_and_alpn_offered(authority: trustme.CA) -> None:
    alpn: list[str | None] = []

    async def record_alpn(request: bytes, writer: asyncio.StreamWriter) -> None:
        alpn.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
        writer.write(OK)

    server_context = tls_server_context(authority)
    async with scripted(record_alpn, reply(OK), ssl_context=server_context) as server:
        untrusting = Http11Transport(httpx.URL(server.url), None, 5.0)  # system CAs only
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.request(post())
        await untrusting.aclose()
        transport = Http11Transport(server.url, trusting(authority), 5.0)
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
        unverified = Http11Transport(server.url, verify=False)
        assert (await unverified.request(post()))[0] == 200
        await unverified.aclose()
    assert alpn == ["http/1.1"]


async def test_verify_takes_a_ca_bundle_path(authority: trustme.CA, tmp_path: Path) -> None:
    with authority.cert_pem.tempfile() as bundle:
        async with scripted(reply(OK), ssl_context=tls_server_context(authority)) as server:
            transport = Http11Transport(server.url, verify=bundle)
            assert (await transport.request(post()))[0] == 200
            await transport.aclose()
    with pytest.raises(ConfigurationError, match="CA bundle"):
        create_tls_context("/nonexistent/ca.pem")
    directory = create_tls_context(tmp_path)  # a c_rehash'ed directory of CA certificates
    assert directory.verify_mode == ssl.CERT_REQUIRED
    context = ssl.create_default_context()
    assert create_tls_context(context) is context


async def test_the_client_uses_it_on_asyncio_unless_httpx_is_mocked() -> None:
    async with (
        scripted(*[reply(OK)] * 4) as server,
        encharge_async.AsyncEncharge(WRITE_KEY, endpoint=server.url, max_concurrency=2) as client,
    ):
        await client.track("E", user_id=1, wait=True, timeout=5)
        await client.track("E", user_id=2, wait=True, timeout=5)
        # White-box: which transport the workers chose is not public.
        assert [type(t) for t in client._pipeline.dispatcher.transports] == [Http11Transport] * 2
    request = server.requests[0]
    assert b"\r\nX-Encharge-Token: " + WRITE_KEY.encode() + b"\r\n" in request
    assert b"\r\nIdempotency-Key: " in request
    assert not httpx_is_mocked()
    with respx.mock:
        assert httpx_is_mocked()


async def test_no_content_has_no_body_and_keeps_the_connection() -> None:
    async with scripted(reply(b"HTTP/1.1 204 No Content\r\n\r\n"), reply(OK)) as server:
        transport = transport_for(server)
        assert await transport.request(post()) == (204, [], b"")
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 1


async def test_bytes_arriving_on_an_idle_connection_retire_it() -> None:
    answered = asyncio.Event()

    async def then_junk(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(OK)
        await writer.drain()
        await asyncio.wait_for(answered.wait(), 5)  # the junk comes after, on its own
        writer.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")

    async with scripted(then_junk, reply(OK)) as server:
        transport = transport_for(server)
        assert (await transport.request(post()))[0] == 200
        answered.set()
        await wait_until(lambda: not idle_connection(transport).reusable)  # see above
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


# -- plain http only to this machine ---------------------------------------------------------------


async def test_plain_http_to_a_name_that_resolves_to_loopback_is_allowed() -> None:
    async with scripted(reply(OK), host="localhost") as server:
        transport = transport_for(server)
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()


async def test_plain_http_to_an_address_that_is_not_loopback_is_refused_before_any_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    peers: list[object] = []

    def elsewhere(peername: object) -> bool:
        peers.append(peername)
        return False  # as if the name had resolved to a public address

    monkeypatch.setattr(http11, "_is_loopback", elsewhere)
    async with scripted(reply(OK)) as server:
        transport = transport_for(server)
        with pytest.raises(ConfigurationError, match="loopback"):
            await transport.request(post())
        await transport.aclose()
    assert server.connections == 1
    assert server.requests == []  # the write key never left
    assert peers
    assert peers[0][:2] == ("127.0.0.1", server.port)  # type: ignore[index]


@pytest.mark.parametrize(
    ("peername", "loopback"),
    [
        (("127.0.0.1", 80), True),
        (("127.8.9.10", 80), True),
        (("::1", 80, 0, 0), True),
        (("::ffff:127.0.0.1", 80, 0, 0), True),
        (("10.0.0.1", 80), False),
        (("fe80::1%eth0", 80, 0, 2), False),
        (("::ffff:10.0.0.1", 80, 0, 0), False),
        (("not an address", 80), False),
        ("/run/socket", False),
        (None, False),
    ],
)
def test_loopback_peers(peername: object, loopback: bool) -> None:
    assert http11._is_loopback(peername) is loopback


# -- proxies -------------------------------------------------------------------------------------


class ConnectProxy:
    """A scripted HTTP proxy for CONNECT: records each head, answers `status`, then pipes."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.heads: list[bytes] = []
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            if self.status != 200:
                writer.write(b"HTTP/1.1 %d Nope\r\nContent-Length: 0\r\n\r\n" % self.status)
                return
            host, _, port = head.split(b" ")[1].decode().rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@asynccontextmanager
async def connect_proxy(status: int = 200) -> AsyncIterator[ConnectProxy]:
    proxy = ConnectProxy(status)
    listener = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
    proxy.url = f"http://user:p%40ss@127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    try:
        yield proxy
    finally:
        listener.close()
        await asyncio.wait_for(listener.wait_closed(), 5)


CREDENTIALS = b"Proxy-Authorization: Basic " + base64.b64encode(b"user:p@ss")


@pytest.mark.parametrize("credentials", [True, False])
async def test_https_goes_through_a_connect_tunnel(
    authority: trustme.CA, credentials: bool
) -> None:
    async with (
        scripted(reply(OK), reply(OK), ssl_context=tls_server_context(authority)) as server,
        connect_proxy() as proxy,
    ):
        proxy_url = proxy.url if credentials else proxy.url.replace("user:p%40ss@", "")
        transport = Http11Transport(server.url, trusting(authority), 5.0, proxy=proxy_url)
        assert "p@ss" not in repr(transport)
        assert "p%40ss" not in repr(transport)
        assert (await transport.request(post()))[0] == 200
        assert (await transport.request(post()))[0] == 200  # through the same tunnel
        await transport.aclose()
    target = b"127.0.0.1:%d" % server.port
    authorization = CREDENTIALS + b"\r\n" if credentials else b""
    assert proxy.heads == [
        b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target, target, authorization)
    ]
    assert server.requests == [post(), post()]  # origin-form inside the tunnel


@pytest.mark.parametrize(
    ("endpoint", "target"),
    [
        ("https://127.0.0.1:9/v1/", b"127.0.0.1:9"),
        ("https://m\u00fcnchen.test/v1/", b"xn--mnchen-3ya.test:443"),
        ("https://[::1]:8443/v1/", b"[::1]:8443"),
    ],
)
async def test_a_proxy_refusing_the_tunnel_is_a_proxy_error(
    authority: trustme.CA, endpoint: str, target: bytes
) -> None:
    async with connect_proxy(status=407) as proxy:
        transport = Http11Transport(endpoint, trusting(authority), 5.0, proxy=proxy.url)
        with pytest.raises(httpx.ProxyError, match="407") as caught:
            await transport.request(post())
        await transport.aclose()
    assert "p@ss" not in str(caught.value)
    assert proxy.heads[0].startswith(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (target, target))


async def test_plain_http_goes_to_the_proxy_in_absolute_form() -> None:
    async with scripted(reply(OK), reply(OK)) as proxy:
        endpoint = "http://127.0.0.1:8123/v1/"
        url = proxy.url.replace("http://", "http://user:p%40ss@").removesuffix("/v1/")
        transport = Http11Transport(endpoint, proxy=url)
        assert (await transport.request(post()))[0] == 200
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert proxy.connections == 1
    assert (
        proxy.requests
        == [
            b"POST http://127.0.0.1:8123/v1/ HTTP/1.1\r\n%s\r\nHost: x\r\nContent-Length: 7\r\n\r\n"
            b'{"n":1}' % CREDENTIALS
        ]
        * 2
    )


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (reply(b"HTTP/1.1 200 OK\r\n\r\nHELLO"), "before TLS"),
        (reply(b"SSH-2.0-OpenSSH\r\n\r\n"), "malformed"),
        (reply(close=True), "closed"),
        (reply(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, b"\r\n\r\n"), "too large"),
    ],
    ids=["bytes-before-tls", "not-http", "closes", "too-large"],
)
async def test_a_misbehaving_proxy_is_a_proxy_error(answer: Script, error: str) -> None:
    async with scripted(answer) as proxy:
        proxy_url = proxy.url.removesuffix("/v1/")
        transport = Http11Transport("https://127.0.0.1:9/v1/", proxy=proxy_url, verify=False)
        with pytest.raises(httpx.ProxyError, match=error):
            await transport.request(post())
        await transport.aclose()


@pytest.mark.slow
async def test_a_proxy_that_never_answers_is_a_connect_timeout() -> None:
    async with scripted(reply(), reply()) as proxy:  # reads CONNECT, then waits for more
        proxy_url = proxy.url.removesuffix("/v1/")
        transport = Http11Transport("https://127.0.0.1:9/v1/", None, 0.2, proxy=proxy_url)
        with pytest.raises(httpx.ConnectTimeout):
            await transport.request(post())
        await transport.aclose()


def test_unsupported_proxies_and_schemes_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="proxy scheme"):
        Http11Transport("https://example.test/", proxy="socks5://127.0.0.1:1080")
    with pytest.raises(ConfigurationError, match="URL scheme"):
        Http11Transport("ftp://example.test/")


@pytest.mark.parametrize(
    ("environment", "url", "proxy"),
    [
        ({}, "https://a.test/", None),
        ({"HTTPS_PROXY": "http://p:1"}, "https://a.test/", "http://p:1"),
        ({"https_proxy": "p:2", "HTTPS_PROXY": "http://p:1"}, "https://a.test/", "http://p:2"),
        ({"HTTPS_PROXY": "http://p:1"}, "http://a.test/", None),
        ({"HTTP_PROXY": "http://p:1"}, "http://a.test/", "http://p:1"),
        ({"ALL_PROXY": "http://p:3"}, "https://a.test/", "http://p:3"),
        ({"all_proxy": "http://p:3", "NO_PROXY": "*"}, "https://a.test/", None),
        ({"ALL_PROXY": "http://p:3", "NO_PROXY": "b.test, a.test"}, "https://a.test/", None),
        ({"ALL_PROXY": "http://p:3", "no_proxy": "a.test"}, "https://x.a.test/", None),
        ({"ALL_PROXY": "http://p:3", "NO_PROXY": ".a.test"}, "https://a.test/", "http://p:3"),
        ({"ALL_PROXY": "http://p:3", "NO_PROXY": ".a.test"}, "https://x.a.test/", None),
        ({"ALL_PROXY": "http://p:3", "NO_PROXY": "a.test:8443"}, "https://a.test/", "http://p:3"),
        ({"ALL_PROXY": "http://p:3", "NO_PROXY": "a.test:443"}, "https://a.test/", None),
        ({"ALL_PROXY": "http://p:3", "NO_PROXY": "ba.test"}, "https://a.test/", "http://p:3"),
        ({"ALL_PROXY": "http://p:3", "NO_PROXY": "a:x, 10.1.2.3"}, "http://10.1.2.3/", None),
        ({"ALL_PROXY": "http://p:3", "NO_PROXY": "fd00::1"}, "http://[fd00::1]:80/", None),
        ({"ALL_PROXY": "http://p:3", "NO_PROXY": "[fd00::1]"}, "http://[fd00::1]/", None),
        # Never for this machine, NO_PROXY or not (httpx would).
        ({"HTTP_PROXY": "http://p:1"}, "http://localhost:8080/", None),
        ({"HTTP_PROXY": "http://p:1"}, "http://127.0.0.1:8080/", None),
        ({"HTTP_PROXY": "http://p:1"}, "http://[::1]:8080/", None),
    ],
)
def test_the_proxy_comes_from_the_environment_as_in_httpx(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], url: str, proxy: str | None
) -> None:
    for name in ("http", "https", "all", "no"):
        monkeypatch.delenv(f"{name}_proxy", raising=False)
        monkeypatch.delenv(f"{name.upper()}_PROXY", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    found = proxy_from_environment(url)
    assert (str(found) if found else None) == (str(httpx.URL(proxy)) if proxy else None)


# -- differential: our parser against h11 --------------------------------------------------------

# Valid forms are repeated so that about half the responses are accepted.
EOLS = [b"\r\n", b"\r\n", b"\n"]
VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1"]
STATUSES = [b"200", b"201", b"204", b"304", b"400", b"503"] * 2 + [b"099", b"600", b"2000", b"2x0"]
REASONS = [b" OK", b" OK", b"", b" ", b" Odd \x01 reason", b" \xff"]
LENGTHS = [b"{n}"] * 6 + [b"0{n}", b"+{n}", b"-0", b"0x{n}", b" {n} ", b"{n}, {n}", b"9" * 30]
CODINGS = [b"chunked"] * 4 + [b"Chunked", b"xchunked", b"gzip", b"gzip, chunked"]
OTHERS = [
    b"Connection: close",
    b"Connection: keep-alive",
    b"Keep-Alive: timeout=5",
    b"X-A: a\tb",
    b"X-Ok: \xff",
    b"X-A: a\rb",
    b"X-A: a\x00b",
    b"X-A: a\x7fb",
    b"X : y",
    b": empty",
]
SIZE_FORMS = ["{:x}"] * 4 + ["{:X}", "0{:x}", "0x{:x}", "+{:x}", "-{:x}", "{:x} ", "{:x}\t"]
SIZE_FORMS += [" {:x}", "{:x};e=1", "{:x} ;e"]
DATA_ENDS = [b"\r\n"] * 6 + [b"\n", b""]


@st.composite
def framings(draw: st.DrawFn) -> tuple[bytes, set[str]]:
    """A response, valid or not, and the facts about it that excuse a documented divergence."""
    facts: set[str] = set()
    eol = draw(st.sampled_from(EOLS))
    version = draw(st.sampled_from(VERSIONS))
    if version in (b"HTTP/2.0", b"HTTP/0.9"):
        facts.add("version")
    head = [version + b" " + draw(st.sampled_from(STATUSES)) + draw(st.sampled_from(REASONS))]
    body = draw(st.binary(max_size=12))
    lengths = draw(st.lists(st.sampled_from(LENGTHS), max_size=2))
    codings = draw(st.lists(st.sampled_from(CODINGS), max_size=2))
    lines = [b"Content-Length: " + value.replace(b"{n}", b"%d" % len(body)) for value in lengths]
    lines += [b"Transfer-Encoding: " + value for value in codings]
    lines += draw(st.lists(st.sampled_from(OTHERS), max_size=2))
    if b"X-A: a\x7fb" in lines:
        facts.add("ctl-in-value")
    if draw(st.booleans()):
        lines.append(b"X-Folded: a" + eol + draw(st.sampled_from([b" ", b"\t"])) + b"b")
    head += draw(st.permutations(lines))
    if lengths and codings:
        facts.add("te+cl")
    if len(lengths) > 1 or any(b"," in value for value in lengths):
        facts.add("cl-list")
    if draw(st.booleans()):  # chunked framing, whatever the headers say
        framed = b""
        for start in range(0, len(body), 5):
            chunk = body[start : start + 5]
            form = draw(st.sampled_from(SIZE_FORMS))
            if form == "{:x} ;e":
                facts.add("space-before-extension")
            framed += form.format(len(chunk)).encode() + draw(st.sampled_from(EOLS)) + chunk
            end = draw(st.sampled_from(DATA_ENDS))
            if end == b"\n":
                facts.add("lf-after-chunk-data")
            framed += end
        framed += draw(st.sampled_from([b"0", b"0", b"00", b"-0"])) + b"\r\n"
        framed += draw(st.sampled_from([b"", b"X-T: 1\r\n"])) + b"\r\n"
        body = framed
    interim = b"HTTP/1.1 100 Continue" + eol + eol if draw(st.booleans()) else b""
    data = interim + eol.join(head) + eol + eol + body
    return data[: len(data) - draw(st.sampled_from([0, 0, 0, 0, 1, 3]))], facts


class _Sink(asyncio.Transport):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def parse_with_ours(data: bytes, split: int) -> tuple[int, bytes] | None:
    """Our parser's verdict: the status and whole body, or None for a rejection."""
    connection = http11._Connection()
    connection.connection_made(_Sink())
    waiter = connection.request(b"", asyncio.get_running_loop().time() + 60)
    for part in (data[:split], data[split:]):
        if part and not waiter.done():
            connection.data_received(part)
    if not waiter.done():
        connection.eof_received()
    exception = waiter.exception()
    if exception is not None:
        assert isinstance(exception, httpx.RemoteProtocolError), exception  # never ValueError
        return None
    status, _, body = waiter.result()
    return (status, body) if connection.complete else None


def parse_with_h11(data: bytes) -> tuple[int, bytes] | None:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/", headers=[("Host", "h")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    client.receive_data(b"")
    status, body = 0, b""
    try:
        while True:
            event = client.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body
            elif not isinstance(event, h11.InformationalResponse):
                return None  # the connection closed before the end, or more data needed
    except h11.RemoteProtocolError:
        return None


# Where we deliberately differ from h11 (both our parser paths unless marked llhttp):
# - we reject: Transfer-Encoding with Content-Length (RFC 9112 6.3: "ought to be handled as
#   an error"; h11 lets chunked win); HTTP versions other than 1.x (h11 takes any d.d);
#   control characters in field values (RFC 9110 5.5; h11 only refuses NUL, CR, LF, VT, FF);
# - llhttp rejects a repeated or listed Content-Length even when the values agree (RFC 9110
#   8.6 allows either);
# - llhttp accepts whitespace between a chunk size and its extension (`2 ;e`), which RFC
#   9112's chunk-ext grammar (BWS) allows and h11 refuses, and a bare LF after chunk data
#   (RFC 9112 2.2 lets a recipient take a bare LF as a line end).
STRICTER = {"te+cl", "version", "ctl-in-value"}
STRICTER_LLHTTP = {"cl-list"}
LAXER_LLHTTP = {"space-before-extension", "lf-after-chunk-data"}


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(framing=framings(), split=st.integers(0, 400))
def test_the_parser_agrees_with_h11(framing: tuple[bytes, set[str]], split: int) -> None:
    data, facts = framing
    llhttp = http11._new_parser is http11._llhttp_parser
    loop = asyncio.new_event_loop()
    try:
        ours = loop.run_until_complete(parse_with_ours(data, split))
    finally:
        loop.close()
    reference = parse_with_h11(data)
    if ours is None and reference is not None:
        assert facts & (STRICTER | (STRICTER_LLHTTP if llhttp else set())), data
    elif ours is not None and reference is None:
        assert llhttp, data
        assert facts & LAXER_LLHTTP, data
    else:
        assert ours == reference, data


def test_the_tunnel_and_the_peer_check_work_on_uvloop(authority: trustme.CA) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def exchange() -> list[int]:
        statuses = []
        async with (
            scripted(reply(OK), ssl_context=tls_server_context(authority)) as server,
            connect_proxy() as proxy,
        ):
            transport = Http11Transport(server.url, trusting(authority), 5.0, proxy=proxy.url)
            statuses.append((await transport.request(post()))[0])
            await transport.aclose()
        async with scripted(reply(OK)) as server:
            transport = transport_for(server)
            statuses.append((await transport.request(post()))[0])
            await transport.aclose()
        return statuses

    assert uvloop.run(exchange()) == [200, 200]
