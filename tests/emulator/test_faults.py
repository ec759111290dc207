"""Fault injection: every mode over a real socket, determinism, counts and settings."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from encharge_async.emulator import FAULT_KINDS, Emulator, Faults
from encharge_async.emulator import _app as app_module
from encharge_async.emulator._app import EmulatorApp
from encharge_async.emulator._faults import FaultInjector
from encharge_async.emulator._http import Message, Scope
from encharge_async.emulator._state import EmulatorState

from ..conftest import wait_until
from .conftest import KEY, MODULE_LOOP, Post

pytestmark = MODULE_LOOP

EVENT = {"name": "Paid", "user": {"email": "a@b.c"}}
HEADERS = {"X-Encharge-Token": KEY, "Content-Type": "application/json"}


def _only(counts: dict[str, int]) -> dict[str, int]:
    return {kind: n for kind, n in counts.items() if n}


async def test_no_faults_by_default(emu: Emulator, post: Post):
    assert (await post(EVENT)).status_code == 200
    assert emu.fault_counts == dict.fromkeys(FAULT_KINDS, 0)
    assert emu.faults == Faults()


async def test_fixed_latency_delays_and_is_counted(emu: Emulator, post: Post):
    emu.faults.latency = 0.01
    assert (await post(EVENT)).status_code == 200
    assert _only(emu.fault_counts) == {"latency": 1}
    emu.faults.latency = (0.001, 0.002)
    assert (await post(EVENT)).status_code == 200
    assert _only(emu.stats.faults) == {"latency": 2}
    assert len(emu.events) == 2


async def test_error_rate_answers_server_errors_and_records_no_event(emu: Emulator, post: Post):
    emu.faults.error_rate = 1.0
    emu.faults.error_statuses = (502,)
    response = await post(EVENT, headers={"Idempotency-Key": "e1"})
    assert response.status_code == 502
    assert response.json() == {"error": "Injected server error."}
    assert emu.events == []
    [rejected] = emu.rejected
    assert (rejected.status, rejected.fault, rejected.body) == (502, "error", EVENT)
    assert _only(emu.fault_counts) == {"error": 1}
    # The retry succeeds and is not a duplicate: the first attempt was never accepted.
    emu.faults.error_rate = 0.0
    assert (await post(EVENT, headers={"Idempotency-Key": "e1"})).status_code == 200
    assert [e.duplicate for e in emu.events] == [False]


async def _statuses(emu: Emulator, client: httpx.AsyncClient, n: int) -> list[int]:
    return [(await client.post(emu.url, json=EVENT, headers=HEADERS)).status_code for _ in range(n)]


@pytest.mark.slow
async def test_error_faults_are_deterministic_for_a_seed(client: httpx.AsyncClient):
    runs = []
    for _ in range(2):
        async with Emulator(write_key=KEY, seed=1234, error_rate=0.5) as emu:
            runs.append(await _statuses(emu, client, 24))
            emu.reset()
            assert await _statuses(emu, client, 24) == runs[-1]
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500, 502, 503}


async def test_random_429_with_retry_after(emu: Emulator, post: Post):
    emu.faults.rate_limited_rate = 1.0
    emu.faults.retry_after = 7
    response = await post(EVENT)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json() == {"error": "Too many requests."}
    emu.faults.retry_after = "Wed, 21 Oct 2015 07:28:00 GMT"
    response = await post(EVENT)
    assert response.headers["retry-after"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    assert _only(emu.fault_counts) == {"rate_limited": 2}
    assert [r.fault for r in emu.rejected] == ["rate_limited", "rate_limited"]
    assert emu.events == []


async def test_rate_limit_token_bucket(emu: Emulator, post: Post):
    emu.faults.rate_limit = 0.01  # one token per 100 s: the bucket does not refill here
    emu.faults.rate_limit_burst = 2
    statuses = [(await post(EVENT)).status_code for _ in range(2)]
    response = await post(EVENT)
    assert statuses == [200, 200]
    assert response.status_code == 429
    assert response.headers["retry-after"] == "100"
    assert response.json() == {"error": "Rate limit exceeded."}
    assert _only(emu.fault_counts) == {"rate_limit_exceeded": 1}
    emu.faults.rate_limit = None
    assert (await post(EVENT)).status_code == 200
    assert len(emu.events) == 3


@pytest.mark.slow
async def test_max_in_flight_refuses_requests_beyond_the_cap_at_once(emu: Emulator, post: Post):
    emu.faults.max_in_flight = 2
    emu.faults.latency = 0.5  # the first two are in hand meanwhile
    held = [asyncio.ensure_future(post(EVENT)) for _ in range(2)]
    await wait_until(lambda: emu.fault_counts["latency"] == 2)
    refused = await post(EVENT)
    assert refused.status_code == 429
    assert "retry-after" not in refused.headers
    assert refused.json() == {"error": "Too many concurrent requests."}
    emu.faults.max_in_flight_retry_after = 3
    assert (await post(EVENT)).headers["retry-after"] == "3"
    assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
    assert (await post(EVENT)).status_code == 200  # in hand again: one
    assert _only(emu.fault_counts) == {"latency": 3, "concurrency_limit_exceeded": 2}
    assert [r.fault for r in emu.rejected] == ["concurrency_limit_exceeded"] * 2
    assert len(emu.events) == 3


async def test_max_in_flight_counts_requests_in_hand():
    injector = FaultInjector(Faults(max_in_flight=3))
    assert [injector.crowded(n) is None for n in (1, 2, 3, 4)] == [True, True, True, False]
    assert injector.counts()["concurrency_limit_exceeded"] == 1
    injector.faults.max_in_flight_retry_after = "5"
    refusal = injector.crowded(9)
    assert refusal is not None
    assert (refusal.status, refusal.headers) == (429, (("Retry-After", "5"),))
    assert FaultInjector(Faults()).crowded(10_000) is None


async def test_token_bucket_refills_with_time():
    now = [0.0]
    injector = FaultInjector(Faults(rate_limit=2.0), clock=lambda: now[0])
    assert [injector.refusal() for _ in range(2)] == [None, None]  # burst = ceil(2.0)
    refusal = injector.refusal()
    assert refusal is not None
    assert (refusal.status, refusal.headers) == (429, (("Retry-After", "1"),))
    now[0] += 0.5  # one token back
    assert injector.refusal() is None
    assert injector.refusal() is not None
    now[0] += 100.0  # refilled, but never beyond the burst
    assert [injector.refusal() is None for _ in range(3)] == [True, True, False]
    injector.faults.rate_limit_burst = 1  # a new bucket, full
    now[0] += 100.0
    assert [injector.refusal() is None for _ in range(2)] == [True, False]


async def test_drop_before_loses_the_event(emu: Emulator, post: Post):
    emu.faults.drop_rate = 1.0
    with pytest.raises(httpx.TransportError):
        await post(EVENT, headers={"Idempotency-Key": "d1"})
    assert emu.events == []
    [rejected] = emu.rejected
    assert (rejected.status, rejected.fault) == (None, "drop_before")
    assert rejected.error == "Connection dropped (injected)."
    assert _only(emu.fault_counts) == {"drop_before": 1}
    emu.faults.drop_rate = 0.0
    assert (await post(EVENT, headers={"Idempotency-Key": "d1"})).status_code == 200
    assert emu.duplicates == {}


async def test_drop_after_records_the_event_so_a_retry_duplicates_it(emu: Emulator, post: Post):
    emu.faults.drop_rate = 1.0
    emu.faults.drop_mode = "after"
    with pytest.raises(httpx.TransportError):
        await post(EVENT, headers={"Idempotency-Key": "d2"})
    [record] = emu.events
    assert (record.fault, record.duplicate) == ("drop_after", False)
    emu.faults.drop_rate = 0.0
    assert (await post(EVENT, headers={"Idempotency-Key": "d2"})).status_code == 200
    assert [e.duplicate for e in emu.events] == [False, True]
    assert emu.duplicates == {"d2": 1}
    assert _only(emu.fault_counts) == {"drop_after": 1}
    assert emu.rejected == []


async def test_drop_after_of_a_refused_request_hides_the_refusal(emu: Emulator, post: Post):
    emu.faults.drop_rate = 1.0
    emu.faults.drop_mode = "after"
    with pytest.raises(httpx.TransportError):
        await post(EVENT, key="wrong")
    [rejected] = emu.rejected
    assert (rejected.status, rejected.fault) == (401, "drop_after")


async def test_faulted_answers_come_before_the_write_key_check(emu: Emulator, post: Post):
    emu.faults.error_rate = 1.0
    emu.faults.error_statuses = (503,)
    assert (await post(EVENT, key=None)).status_code == 503


@pytest.mark.slow
async def test_slow_body_stalls_until_the_client_times_out(emu: Emulator, post: Post):
    emu.faults.slow_body = 30.0
    with pytest.raises(httpx.ReadTimeout):
        await post(EVENT, timeout=0.2)
    [record] = emu.events  # handled: a client that retries makes a duplicate
    assert record.fault == "slow_body"
    assert _only(emu.fault_counts) == {"slow_body": 1}


async def test_slow_body_completes_after_the_stall(emu: Emulator, post: Post):
    emu.faults.slow_body = 0.05
    response = await post(EVENT)
    assert (response.status_code, response.json()) == (200, {})


async def test_slow_body_rate_zero_never_stalls(emu: Emulator, post: Post):
    emu.faults.slow_body = 30.0
    emu.faults.slow_body_rate = 0.0
    assert (await post(EVENT)).status_code == 200
    assert emu.events[0].fault is None


async def test_faults_change_while_running(emu: Emulator, post: Post):
    emu.faults.error_rate = 1.0
    assert (await post(EVENT)).status_code >= 500
    emu.faults.clear()
    assert (await post(EVENT)).status_code == 200


@pytest.mark.slow
async def test_fault_keywords_and_faults_object(client: httpx.AsyncClient):
    base = Faults(error_rate=1.0, retry_after=3)
    emu = Emulator(
        write_key=KEY,
        faults=base,
        latency=(0.0, 0.001),
        error_rate=0.0,
        error_statuses=[503],
        rate_limited_rate=0.0,
        retry_after=9,
        rate_limit=1000.0,
        rate_limit_burst=5,
        max_in_flight=64,
        max_in_flight_retry_after=2,
        drop_rate=0.0,
        drop_mode="after",
        slow_body=0.0,
        slow_body_rate=0.5,
    )
    assert emu.faults is base
    assert base.to_dict() == {
        "latency": [0.0, 0.001],
        "error_rate": 0.0,
        "error_statuses": [503],
        "rate_limited_rate": 0.0,
        "retry_after": 9,
        "rate_limit": 1000.0,
        "rate_limit_burst": 5,
        "max_in_flight": 64,
        "max_in_flight_retry_after": 2,
        "drop_rate": 0.0,
        "drop_mode": "after",
        "slow_body": 0.0,
        "slow_body_rate": 0.5,
    }
    async with emu:
        assert (await client.post(emu.url, json=EVENT, headers=HEADERS)).status_code == 200


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("latency", -1, ValueError),
        ("latency", (2, 1), ValueError),
        ("latency", (1, 2, 3), ValueError),
        ("latency", "1", TypeError),
        ("latency", float("nan"), ValueError),
        ("error_rate", 1.5, ValueError),
        ("error_rate", True, TypeError),
        ("error_statuses", (), ValueError),
        ("error_statuses", (200,), ValueError),
        ("error_statuses", "500", ValueError),
        ("error_statuses", 503.0, ValueError),
        ("retry_after", -1, ValueError),
        ("retry_after", " ", ValueError),
        ("retry_after", 1.5, ValueError),
        ("rate_limit", 0, ValueError),
        ("rate_limit", float("inf"), ValueError),
        ("rate_limit_burst", 0, ValueError),
        ("rate_limit_burst", 1.0, ValueError),
        ("max_in_flight", 0, ValueError),
        ("max_in_flight", True, ValueError),
        ("max_in_flight_retry_after", -1, ValueError),
        ("drop_mode", "sometimes", ValueError),
        ("slow_body", -0.1, ValueError),
        ("slow_body_rate", 2, ValueError),
        ("drop_rat", 1.0, AttributeError),
    ],
)
async def test_invalid_fault_settings_are_refused(field: str, value: Any, error: type[Exception]):
    faults = Faults()
    with pytest.raises(error):
        setattr(faults, field, value)
    assert faults == Faults()


async def test_fault_settings_are_normalised():
    # Lists and single values, as they come from JSON or a command line, are accepted.
    loose: dict[str, Any] = {"latency": [1, 2], "error_statuses": [500], "error_rate": 1}
    faults = Faults(**loose, retry_after="0")
    assert faults.latency == (1.0, 2.0)
    assert faults.error_statuses == (500,)
    assert isinstance(faults.error_rate, float)
    setattr(faults, "error_statuses", 503)  # noqa: B010
    assert faults.error_statuses == (503,)
    faults.clear()
    assert faults == Faults()


async def test_emulator_keyword_validation():
    with pytest.raises(ValueError, match="error_rate"):
        Emulator(write_key=KEY, error_rate=2.0)


# The app on its own, with an aborter that cannot reach the socket (the fallback).


def _app(faults: Faults, aborted: bool = False) -> EmulatorApp:
    state = EmulatorState([KEY], max_body_bytes=1024, faults=faults, seed=None)
    return EmulatorApp(state, abort=lambda scope: aborted)


def _scope() -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/",
        "client": ("127.0.0.1", 1),
        "headers": [(b"x-encharge-token", KEY.encode()), (b"content-type", b"application/json")],
    }


async def _call(app: EmulatorApp, hang: bool = False) -> list[Message]:
    sent: list[Message] = []
    body = b'{"name": "x", "user": {"email": "a@b.c"}}'
    # Popped from the end: the body, then (after a cut) a stray message before the end.
    messages: list[Message] = [
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.request", "body": body, "more_body": False},
    ]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        if hang:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(_scope(), receive, send), 5)
    return sent


async def test_a_drop_that_cannot_reach_the_socket_leaves_the_answer_unfinished():
    sent = await _call(_app(Faults(drop_rate=1.0)))
    assert [m["type"] for m in sent] == ["http.response.start"]


async def test_a_stall_cut_by_shutdown_that_cannot_reach_the_socket():
    app = _app(Faults(slow_body=30.0))
    app.begin_shutdown()
    sent = await _call(app)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["more_body"] is True


async def test_a_cut_waits_for_the_disconnect_only_so_long(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(app_module, "_CUT_WAIT", 0.01)
    sent = await _call(_app(Faults(drop_rate=1.0), aborted=True), hang=True)
    assert sent == []


@pytest.mark.slow
async def test_a_client_that_leaves_mid_body_is_not_recorded():
    app = _app(Faults())

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        raise AssertionError("nothing should be sent")

    await app(_scope(), receive, send)
    await app({"type": "lifespan"}, receive, send)
    assert app._state.stats().accepted == app._state.stats().rejected == 0
