"""The write key never shows up in reprs, logs, errors or stats."""

from __future__ import annotations

import logging
import pickle

import anyio
import httpx
import pytest

from encharge_async import AsyncEncharge, DeliveryError

from .conftest import WRITE_KEY, ClientFactory, Recorder, wait_until

pytestmark = pytest.mark.anyio


@pytest.mark.slow
async def test_write_key_never_leaks_with_debug_logging(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    calls = 0

    async def hostile(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        kind = request.url.params.get("kind") or ""
        name = request.content.decode()
        if "echo" in name:
            return httpx.Response(401, text=f"bad token {WRITE_KEY}")
        if "retry" in name and calls % 2:
            return httpx.Response(503, text=f"busy {WRITE_KEY}", headers={"Retry-After": "0"})
        if "boom" in name:
            raise httpx.ConnectError(f"cannot connect with {WRITE_KEY}")
        if "crash" in name:
            raise RuntimeError(f"transport bug {WRITE_KEY}{kind}")
        if "slow" in name:
            await anyio.sleep(3600)  # never answers, on purpose: dropped at shutdown
        return httpx.Response(200)

    errors: list[DeliveryError] = []
    client = make_client(
        transport=httpx.MockTransport(Recorder(hostile)),
        on_error=errors.append,
        max_retries=2,
        max_queue_size=8,
        max_concurrency=2,
        shutdown_timeout=0.2,
        timeout=1,
    )
    for name in ("echo", "retry", "boom", "crash", "ok", "slow", "slow", "x", "y", "z"):
        client.track_nowait(name, user_id=name)
    await wait_until(lambda: len(errors) >= 3)  # echo, boom and crash failed for good
    await client.aclose()
    assert client.stats.dropped > 0
    assert len(errors) >= 3

    texts = [repr(client), repr(client.stats)]
    texts += [str(e) + e.body + repr(e) for e in errors]
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
        texts.extend(str(v) for v in record.__dict__.values())
    assert texts
    for text in texts:
        assert WRITE_KEY not in text


async def test_delivery_error_pickles_without_the_key(make_client: ClientFactory) -> None:
    recorder = Recorder(lambda request: httpx.Response(400, json={"error": "bad"}))
    async with make_client(transport=httpx.MockTransport(recorder)) as client:
        with pytest.raises(DeliveryError) as info:
            await client.track("E", user_id=1, wait=True)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.status, copy.message_id, copy.body, copy.attempts) == (
        400,
        info.value.message_id,
        '{"error":"bad"}',
        1,
    )
    assert str(copy) == str(info.value).replace(" 'E'", "")


def test_key_not_in_client_attributes_repr() -> None:
    client = AsyncEncharge(WRITE_KEY)
    assert WRITE_KEY not in repr(client)
    assert WRITE_KEY not in str(client)
    assert WRITE_KEY not in repr(client.stats)
