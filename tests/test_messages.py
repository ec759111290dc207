"""What errors and log lines quote: sizes refused before serialising, values shortened and
escaped, personal data left out, server bodies scrubbed of the key in every form."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tracemalloc
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from encharge_async import AsyncEncharge, ConfigurationError, DeliveryError, ValidationError
from encharge_async._builders import build_track
from encharge_async._json import use_orjson

from .conftest import WRITE_KEY, ClientFactory, Recorder

BIG = 64 * 1024 * 1024  # a value far over max_event_bytes; tests stay fast and small


@pytest.fixture(params=[True, False], ids=["orjson", "stdlib"])
def serialiser(request: pytest.FixtureRequest) -> Iterator[None]:
    use_orjson(request.param)
    try:
        yield
    finally:
        use_orjson(True)


def _peak_while(call: Any) -> tuple[int, BaseException]:
    """The traced memory peak (bytes) of `call()`, which must raise; and what it raised."""
    tracemalloc.start()
    try:
        call()
    except Exception as exc:
        raised = exc
    else:  # pragma: no cover - the assertion below says what went wrong
        raise AssertionError("the call did not raise")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, raised


@pytest.mark.parametrize(
    "where",
    [
        "property",
        "nested property",
        "in a list",
        "beside a datetime",
        "user field",
        "name",
        "email",
        "user_id",
        "source_ip",
        "group property",
        "many items",
        "many items beside a Decimal",
    ],
)
@pytest.mark.slow
@pytest.mark.usefixtures("serialiser")
def test_an_oversized_value_is_refused_before_serialising(where: str) -> None:
    """Refusing a 64 MiB value costs a small fraction of it: no copy, no serialisation."""
    import datetime
    import decimal

    big = "x" * BIG
    big_email = big + "@example.com"
    many = [1] * (BIG // 8)  # 8 MiB of items, ~16 MiB of JSON
    client = AsyncEncharge(WRITE_KEY)
    calls: dict[str, Any] = {
        "property": lambda: client.track_nowait("E", user_id="1", properties={"a": big}),
        "nested property": lambda: client.track_nowait(
            "E", email="a@example.com", user_id="1", properties={"a": {"b": {"c": big}}}
        ),
        "in a list": lambda: client.track_nowait("E", user_id="1", properties={"a": [1, big]}),
        "beside a datetime": lambda: client.track_nowait(
            "E", user_id="1", properties={"at": datetime.datetime(2020, 1, 1), "a": big}
        ),
        "user field": lambda: client.identify_nowait(user={"email": "a@example.com", "bio": big}),
        "name": lambda: client.track_nowait(big, email="a@example.com", user_id="1"),
        "email": lambda: client.track_nowait("E", email=big_email, user_id="1"),
        "user_id": lambda: client.track_nowait("E", email="a@example.com", user_id=big),
        "source_ip": lambda: client.track_nowait("E", user_id="1", source_ip=big),
        "group property": lambda: client.group_nowait("company", {"id": "1", "about": big}),
        "many items": lambda: client.track_nowait("E", user_id="1", properties={"a": many}),
        "many items beside a Decimal": lambda: client.track_nowait(
            "E", user_id="1", properties={"n": decimal.Decimal(1), "a": {"b": many}}
        ),
    }
    peak, raised = _peak_while(calls[where])
    assert isinstance(raised, ValidationError), raised
    assert peak < BIG // 16, f"refusing cost {peak} bytes for a {BIG}-byte value"
    message = str(raised)
    assert len(message) < 300, message
    assert "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" not in message


def test_the_refusal_says_at_least_how_large() -> None:
    with pytest.raises(ValidationError, match=r"at least \d+ bytes.*max_event_bytes=1000"):
        build_track("E", None, "1", None, {"a": "y" * 5000}, None, 1000)
    # Just over the limit, found by serialising (escapes make the JSON longer than the text).
    with pytest.raises(ValidationError, match=r"is \d+ bytes, over max_event_bytes=1000"):
        build_track("E", None, "1", None, {"a": "\n" * 600}, None, 1000)


@pytest.mark.slow
@pytest.mark.usefixtures("serialiser")
def test_values_that_take_the_careful_path_still_serialise() -> None:
    """Non-plain values (subclasses, NaN-free floats, tuples, deep lists) keep working."""
    import collections
    import decimal
    import enum

    class Plan(enum.Enum):
        PRO = "pro"

    properties = {
        "ordered": collections.OrderedDict(a=1),
        "amount": decimal.Decimal("1.50"),
        "plan": Plan.PRO,
        "pair": (1, "two", 3.5, None, True),
        "deep": [[[[{"k": [1.0, -0.0]}]]]],
    }
    entry = build_track("E", None, "1", None, properties, None, 1 << 20)
    assert json.loads(entry.body)["properties"] == {
        "ordered": {"a": 1},
        "amount": "1.50",
        "plan": "pro",
        "pair": [1, "two", 3.5, None, True],
        "deep": [[[[{"k": [1.0, -0.0]}]]]],
    }
    for bad in (float("nan"), float("inf"), object()):
        with pytest.raises(ValidationError):
            build_track("E", None, "1", None, {"nested": {"x": [bad]}}, None, 1 << 20)


# -- messages: shortened, escaped, no personal data --------------------------------------------


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c, v: c.track_nowait(v, user_id="1"), "name"),
        (lambda c, v: c.track_nowait("E", user_id="1", source_ip=v), "source_ip"),
        (lambda c, v: c.track_nowait("E", email=v), "email"),
        (lambda c, v: c.track_nowait("E", user_id="1", message_id=v), "message_id"),
        (lambda c, v: c.group_nowait(v, {}), "object_type"),
    ],
)
def test_bad_values_are_quoted_short_and_escaped(call: Any, field: str) -> None:
    client = AsyncEncharge(WRITE_KEY, max_event_bytes=1000)
    # The second: only whitespace (\x1c and \u2028 are), so an invalid name or object type.
    for value in ("\r\nFORGED log line" + "z" * 2_000_000, " \r\n\x1c\u2028 "):
        with pytest.raises(ValidationError) as info:
            call(client, value)
        message = str(info.value)
        assert len(message) < 300, (field, len(message))
        assert message.isprintable(), (field, message)
        if len(value) > 100 and field != "object_type":  # too large: its name is 'group'
            assert str(len(value)) in message  # the length of what was cut


def test_conflicting_identifiers_are_named_not_quoted() -> None:
    client = AsyncEncharge(WRITE_KEY)
    with pytest.raises(ValidationError) as info:
        client.track_nowait(
            "E", email="jane@example.com", user={"email": "john.private@example.com"}
        )
    assert str(info.value) == "email conflicts with user['email']"
    with pytest.raises(ValidationError) as info:
        client.track_nowait("E", user_id="jane-42", user={"userId": "john-43"})
    assert str(info.value) == "user_id conflicts with user['userId']"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_delivery_error_quotes_a_long_name_shortly(make_client: ClientFactory) -> None:
    errors: list[DeliveryError] = []
    recorder = Recorder(lambda request: httpx.Response(400, text="no"))
    client = make_client(transport=httpx.MockTransport(recorder), on_error=errors.append)
    async with client:
        client.track_nowait("N\n" * 100_000, user_id="1")
    assert len(errors) == 1
    text = str(errors[0])
    assert len(text) < 400, text
    assert text.isprintable(), text
    assert "(200000 characters)" in text


# -- server bodies: the key scrubbed in every form, then cut, then escaped ------------------------


def _echoes() -> dict[str, str]:
    key = WRITE_KEY
    return {
        # The key straddles the preview's cut (500 characters).
        "straddling": "e" * 488 + key + "tail",
        "json": json.dumps({"error": f"bad token {key}"}).replace(
            key, "".join(f"\\u{ord(c):04x}" for c in key)
        ),
        "json mixed": json.dumps({"token": key[:5] + "".join(f"\\u{ord(c):04X}" for c in key[5:])}),
        "percent": f"GET /x?token={urllib.parse.quote(key)}&a=1",
        "percent all": "token=" + "".join(f"%{ord(c):02X}" for c in key),
        "forged line": f"bad\r\nINFO encharge_async: everything delivered {key}\n\x1b[2J",
    }


class _RawServer:
    """A loopback HTTP server that answers every request with one raw response."""

    def __init__(self, status: int, body: bytes) -> None:
        self.response = (
            b"HTTP/1.1 %d Bad\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (status, len(body), body)
        )
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            writer.write(self.response)
            await writer.drain()
        finally:
            writer.close()

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("kind", list(_echoes()))
@pytest.mark.parametrize("transport", ["lean", "httpx"])
@pytest.mark.anyio
async def test_server_bodies_are_scrubbed_cut_and_escaped(
    kind: str, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="encharge_async")
    body = _echoes()[kind]
    errors: list[DeliveryError] = []
    options: dict[str, Any] = {"on_error": errors.append, "max_retries": 0}
    if transport == "httpx":
        options["transport"] = httpx.MockTransport(lambda request: httpx.Response(400, text=body))
    async with (
        _RawServer(400, body.encode()) as url,
        AsyncEncharge(WRITE_KEY, endpoint=url, **options) as client,
    ):
        client.track_nowait("E", user_id="1")
    assert len(errors) == 1
    error = errors[0]
    texts = [str(error), error.body, repr(error)]
    texts += [logging.Formatter().format(record) for record in caplog.records]
    assert any("Bad Request" in t or "HTTP 400" in t for t in texts)
    pieces = {WRITE_KEY[i : i + 8] for i in range(len(WRITE_KEY) - 7)}
    for text in texts:
        # What a reader would decode: JSON escapes (however many backslashes), %XX.
        decoded = re.sub(r"\\+u([0-9a-fA-F]{4})", lambda m: chr(int(m[1], 16)), text)
        decoded = urllib.parse.unquote(decoded.replace("\\/", "/"))
        assert not any(piece in decoded for piece in pieces), text
        assert "\r" not in text, text
        assert "\x1b" not in text, text
        assert text.count("\n") == 0 or text.startswith("Traceback"), text
    assert len(error.body) < 600


# -- the endpoint and proxy: no userinfo echoed, bad ports refused ---------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://user:s3cretpw@ingest.example.com/v1/",
        "http://user:s3cretpw@127.0.0.1:8000/v1/",
        "ftp://user:s3cretpw@ingest.example.com/",
        "socks5://user:s3cretpw@ingest.example.com/",
        "mailto:user:s3cretpw@example.com",
        "user:s3cretpw@ingest.example.com/v1/",
        "https://user:s3cretpw@ingest.example.com:99999/",
        "https://user:s3cretpw@[::1/",
        "https://user:s3cretpw@ingest.example.com\n/",
    ],
)
def test_no_endpoint_error_echoes_userinfo(endpoint: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncEncharge(WRITE_KEY, endpoint=endpoint)
    assert "s3cretpw" not in str(info.value)


@pytest.mark.parametrize("port", ["0", "65536", "99999", "-1", "abc"])
def test_bad_ports_are_refused(port: str) -> None:
    with pytest.raises(ConfigurationError, match="endpoint"):
        AsyncEncharge(WRITE_KEY, endpoint=f"https://ingest.example.com:{port}/v1/")
    with pytest.raises(ConfigurationError, match="proxy") as info:
        AsyncEncharge(WRITE_KEY, proxy=f"http://user:s3cretpw@proxy.example.com:{port}/")
    assert "s3cretpw" not in str(info.value)
