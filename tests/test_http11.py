"""The default asyncio transport (`Http11Transport`), against scripted servers over real sockets.

Each server reads whole requests and answers with the bytes a test scripts, split and
timed as the test wants, so that every framing and every way of breaking off is exercised.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import respx
import trustme

import encharge_async
from encharge_async._http11 import Http11Transport, _Connection, httpx_is_mocked

from .conftest import WRITE_KEY, wait_until

pytestmark = pytest.mark.anyio

# A script answers one request: it gets the request's bytes and the stream to write to.
Script = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the transport is asyncio's; trio uses httpx's


def reply(*parts: bytes, close: bool = False, pause: float = 0.0) -> Script:
    async def script(request: bytes, writer: asyncio.StreamWriter) -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)  # a server writing in parts, on purpose
        if close:
            writer.close()

    return script


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


class ScriptedServer:
    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.requests: list[bytes] = []
        self.connections = 0
        self.url = ""

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
    *scripts: Script, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(list(scripts))
    listener = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=ssl_context)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}/v1/"
    try:
        yield server
    finally:
        listener.close()
        await asyncio.wait_for(listener.wait_closed(), 5)


def post(body: bytes = b'{"n":1}') -> bytes:
    return b"POST /v1/ HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def transport_for(server: ScriptedServer, timeout: float = 5.0) -> Http11Transport:
    return Http11Transport(httpx.URL(server.url), None, timeout)


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
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_a_connection_the_server_will_not_keep_is_not_reused(head: bytes) -> None:
    async with scripted(reply(head + b"{}"), reply(OK)) as server:
        transport = transport_for(server)
        assert (await transport.request(post()))[2] == b"{}"
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


async def test_interim_responses_are_skipped() -> None:
    async with scripted(reply(b"HTTP/1.1 100 Continue\r\n\r\n", OK)) as server:
        transport = transport_for(server)
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()


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


async def test_a_large_body_is_truncated_but_read_to_its_end() -> None:
    big = b"x" * 200_000
    head = b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % len(big)
    async with scripted(reply(head, big), reply(OK)) as server:
        transport = transport_for(server)
        status, _, body = await transport.request(post())
        assert (status, len(body)) == (500, encharge_async._constants.MAX_RESPONSE_BODY_BYTES)
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 1


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 2xx OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc", "chunked body"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, "too large"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 70_000, "too large"),
    ],
)
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
    [b"", b"HTTP/1.1 200 OK\r\nContent", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"],
    ids=["nothing", "half-head", "half-body"],
)
async def test_a_connection_cut_mid_response_is_a_transport_error(partial: bytes) -> None:
    async with scripted(reply(partial, close=True)) as server:
        transport = transport_for(server)
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await transport.request(post())
        await transport.aclose()


async def test_no_answer_times_out_and_the_connection_is_dropped() -> None:
    async with scripted(reply(b"HTTP/1.1 200 OK\r\n"), reply(OK)) as server:
        transport = transport_for(server, timeout=0.2)
        with pytest.raises(TimeoutError):
            await transport.request(post())
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


async def test_tls_certificates_are_verified() -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    async with scripted(reply(OK), reply(OK), ssl_context=server_context) as server:
        untrusting = Http11Transport(httpx.URL(server.url), None, 5.0)  # system CAs only
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.request(post())
        await untrusting.aclose()
        trusting_context = ssl.create_default_context()
        authority.configure_trust(trusting_context)
        trusting = Http11Transport(httpx.URL(server.url), trusting_context, 5.0)
        assert (await trusting.request(post()))[0] == 200
        await trusting.aclose()


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


async def test_a_transfer_coding_other_than_chunked_ends_with_the_connection() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 1\r\n\r\n"
    async with scripted(reply(head + b"raw bytes", close=True), reply(OK)) as server:
        transport = transport_for(server)
        assert (await transport.request(post()))[2] == b"raw bytes"  # Content-Length ignored
        assert (await transport.request(post()))[0] == 200
        await transport.aclose()
    assert server.connections == 2


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
