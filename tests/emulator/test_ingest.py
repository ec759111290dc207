"""The ingest endpoint over a real socket: success, every refusal, records, duplicates."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from encharge_async.emulator import Emulator

from .conftest import KEY, MODULE_LOOP, Post

pytestmark = MODULE_LOOP

SIGNUP = {"name": "Signed up", "user": {"email": "ann@example.com", "userId": "u1"}}


@pytest.mark.parametrize("path", ["/v1/", "/v1"])
async def test_accepts_an_event_with_an_empty_json_object(emu: Emulator, post: Post, path: str):
    before_wall, before_mono = time.time(), time.monotonic()
    response = await post(
        SIGNUP,
        url=emu.base_url + path,
        headers={"Idempotency-Key": "idem-1", "User-Agent": "tests/1.0"},
    )
    assert response.status_code == 200
    assert response.json() == {}
    [record] = emu.events
    assert record.seq == 1
    assert record.body == SIGNUP
    assert record.name == "Signed up"
    assert record.type is None
    assert record.idempotency_key == "idem-1"
    assert record.user_agent == "tests/1.0"
    assert record.received_at >= before_wall
    assert record.received_monotonic >= before_mono
    assert not record.duplicate
    assert record.fault is None
    assert emu.rejected == []


async def test_record_name_and_type_ignore_non_strings(emu: Emulator, post: Post):
    await post({"type": "group", "objectType": "company", "name": 5})
    [record] = emu.events
    assert record.type == "group"
    assert record.name is None


async def test_accepts_a_charset_parameter(post: Post):
    response = await post(SIGNUP, headers={"Content-Type": "Application/JSON; charset=UTF-8"})
    assert response.status_code == 200


@pytest.mark.slow
async def test_accepts_any_of_several_write_keys(client: httpx.AsyncClient):
    async with Emulator(write_key="a", write_keys=["b", "c"]) as emu:
        for key in ("a", "b", "c"):
            response = await client.post(emu.url, json=SIGNUP, headers={"X-Encharge-Token": key})
            assert response.status_code == 200
        assert len(emu.events) == 3


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (None, "Missing Encharge write key."),
        ("", "Missing Encharge write key."),
        ("wrong", "Invalid Encharge write key."),
        (KEY + "x", "Invalid Encharge write key."),
    ],
)
async def test_refuses_a_missing_or_wrong_write_key(
    emu: Emulator, post: Post, key: str | None, error: str
):
    response = await post(SIGNUP, key=key)
    assert response.status_code == 401
    assert response.json() == {"error": error}
    assert emu.events == []
    [rejected] = emu.rejected
    assert (rejected.status, rejected.error, rejected.fault) == (401, error, None)
    assert rejected.body == SIGNUP
    assert rejected.method == "POST"
    assert rejected.path == "/v1/"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/jsonx", "form"])
async def test_refuses_a_body_that_is_not_declared_json(
    emu: Emulator, client: httpx.AsyncClient, content_type: str | None
):
    headers = {"X-Encharge-Token": KEY}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post(emu.url, content=json.dumps(SIGNUP).encode(), headers=headers)
    assert response.status_code == 415
    assert response.json() == {"error": "Content-Type must be application/json."}
    assert [r.status for r in emu.rejected] == [415]


@pytest.mark.parametrize(
    "content",
    [b"{", b"", b"\xff\xfe{}", b'{"name": NaN}', b"[1, 2] x"],
    ids=["truncated", "empty", "not-utf8", "nan", "trailing"],
)
async def test_refuses_invalid_json(emu: Emulator, post: Post, content: bytes):
    response = await post(content=content)
    assert response.status_code == 400
    assert response.json() == {"error": "The body is not valid JSON."}
    assert emu.rejected[0].body is None


@pytest.mark.slow
async def test_refuses_a_body_larger_than_the_limit(client: httpx.AsyncClient):
    async with Emulator(write_key=KEY, max_body_bytes=64) as emu:
        headers = {"X-Encharge-Token": KEY, "Content-Type": "application/json"}
        big = {"name": "x" * 100, "user": {"email": "a@b.c"}}
        response = await client.post(emu.url, json=big, headers=headers)
        assert response.status_code == 413
        assert response.json() == {"error": "The body is larger than 64 bytes."}

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b" " * 30
            yield b"{}"

        # Streamed in several chunks: the limit is crossed midway, the rest drained.
        response = await client.post(emu.url, content=chunks(), headers=headers)
        assert response.status_code == 413
        small = {"name": "x", "user": {"email": "a@b.c"}}
        response = await client.post(emu.url, json=small, headers=headers)
        assert response.status_code == 200
        assert [r.status for r in emu.rejected] == [413, 413]
        assert emu.rejected[0].body is None


@pytest.mark.slow
async def test_a_body_exactly_at_the_limit_is_read(client: httpx.AsyncClient):
    body = json.dumps({"name": "x", "user": {"email": "a@b.c"}}).encode()
    async with Emulator(write_key=KEY, max_body_bytes=len(body)) as emu:
        headers = {"X-Encharge-Token": KEY, "Content-Type": "application/json"}
        response = await client.post(emu.url, content=body, headers=headers)
        assert response.status_code == 200


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_get_405_with_allow_post(
    emu: Emulator, client: httpx.AsyncClient, method: str
):
    response = await client.request(method, emu.url)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == {"error": "Method not allowed."}
    [rejected] = emu.rejected
    assert (rejected.method, rejected.status) == (method, 405)


@pytest.mark.parametrize("path", ["/", "/v2/", "/v1/x", "/_emulator"])
async def test_unknown_paths_get_404(emu: Emulator, client: httpx.AsyncClient, path: str):
    response = await client.post(emu.base_url + path, json=SIGNUP)
    assert response.status_code == 404
    assert response.json() == {"error": "Not found."}
    assert [r.path for r in emu.rejected] == [path]


INVALID: list[tuple[str, Any, str]] = [
    ("not-an-object", [SIGNUP], "The body must be a JSON object."),
    ("string-body", "hello", "The body must be a JSON object."),
    ("no-user", {"name": "x"}, "user.email or user.userId is required."),
    ("user-no-ids", {"name": "x", "user": {"firstName": "A"}}, "user.email or user.userId is"),
    ("empty-email", {"name": "x", "user": {"email": " "}}, "user.email or user.userId is"),
    ("user-not-object", {"name": "x", "user": "a@b.c"}, "user must be an object."),
    ("properties-list", {**SIGNUP, "properties": [1]}, "properties must be an object."),
    ("email-number", {"name": "x", "user": {"email": 5}}, "user.email must be a string."),
    ("userid-float", {"name": "x", "user": {"userId": 1.5}}, "user.userId must be a string or"),
    ("userid-bool", {"name": "x", "user": {"userId": True}}, "user.userId must be a string or"),
    ("tags-list", {"name": "x", "user": {"email": "a@b.c", "tags": ["a"]}}, "user.tags must be"),
    ("type-identify", {**SIGNUP, "type": "identify"}, "Unknown event type 'identify'"),
    ("type-number", {**SIGNUP, "type": 3}, "Unknown event type 3"),
    ("no-name", {"user": {"email": "a@b.c"}}, "name is required"),
    ("empty-name", {"name": " ", "user": {"email": "a@b.c"}}, "name is required"),
    ("name-number", {"name": 5, "user": {"email": "a@b.c"}}, "name is required"),
    (
        "alias-no-previous",
        {"type": "alias", "user": {"email": "new@b.c"}},
        "An alias needs previousEmail or previousUserId.",
    ),
    (
        "alias-previous-email-number",
        {"type": "alias", "previousEmail": 1, "user": {"email": "new@b.c"}},
        "previousEmail must be a string.",
    ),
    (
        "alias-previous-userid-list",
        {"type": "alias", "previousUserId": [1], "user": {"email": "new@b.c"}},
        "previousUserId must be a string or an integer.",
    ),
    (
        "alias-no-new",
        {"type": "alias", "previousEmail": "old@b.c", "user": {"firstName": "A"}},
        "An alias needs the new user.email or user.userId.",
    ),
    (
        "alias-no-user",
        {"type": "alias", "previousUserId": "u1"},
        "An alias needs the new user.email or user.userId.",
    ),
    ("group-no-object-type", {"type": "group", "properties": {}}, "objectType"),
    ("group-empty-object-type", {"type": "group", "objectType": ""}, "objectType"),
    (
        "group-bad-id",
        {"type": "group", "objectType": "company", "properties": {"id": False}},
        "properties.id must be a string or an integer.",
    ),
    (
        "group-bad-external-id",
        {"type": "group", "objectType": "company", "properties": {"externalId": {}}},
        "properties.externalId must be",
    ),
    (
        "group-user-no-ids",
        {"type": "group", "objectType": "company", "user": {"firstName": "A"}},
        "user.email or user.userId is required to associate a person.",
    ),
]


@pytest.mark.parametrize(("body", "error"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
async def test_refuses_invalid_events_with_400(emu: Emulator, post: Post, body: Any, error: str):
    response = await post(body)
    assert response.status_code == 400
    assert error in response.json()["error"]
    assert emu.events == []
    [rejected] = emu.rejected
    assert rejected.status == 400
    assert rejected.body == body
    assert emu.people == []


VALID: list[tuple[str, dict[str, Any]]] = [
    ("identify", {"name": "identify", "user": {"email": "a@b.c"}}),
    ("numeric-userid", {"name": "Paid", "user": {"userId": 123}}),
    ("nulls", {"name": "x", "type": None, "properties": None, "user": {"email": "a@b.c"}}),
    ("properties", {**SIGNUP, "properties": {"plan": "pro"}, "sourceIp": "1.2.3.4"}),
    ("alias-email", {"type": "alias", "previousEmail": "o@b.c", "user": {"email": "n@b.c"}}),
    ("alias-userid", {"type": "alias", "previousUserId": 1, "user": {"userId": 2}}),
    ("group-no-user", {"type": "group", "objectType": "company"}),
    ("group-empty-user", {"type": "group", "objectType": "company", "user": {}}),
    (
        "group-user",
        {"type": "group", "objectType": "company", "properties": {"id": 5}, "user": {"userId": 1}},
    ),
]


@pytest.mark.parametrize("body", [c[1] for c in VALID], ids=[c[0] for c in VALID])
async def test_accepts_valid_events(emu: Emulator, post: Post, body: dict[str, Any]):
    response = await post(body)
    assert response.status_code == 200, response.text
    assert [r.body for r in emu.events] == [body]


async def test_sequence_numbers_cover_accepted_and_rejected_in_arrival_order(
    emu: Emulator, post: Post
):
    await post(SIGNUP)
    await post(SIGNUP, key="bad")
    await post(SIGNUP)
    assert [r.seq for r in emu.events] == [1, 3]
    assert [r.seq for r in emu.rejected] == [2]


async def test_counts_duplicates_by_idempotency_key(emu: Emulator, post: Post):
    for key in ("a", "b", "a", "a", None):
        headers = {"Idempotency-Key": key} if key else {}
        assert (await post(SIGNUP, headers=headers)).status_code == 200
    await post(SIGNUP, headers={"Idempotency-Key": "c"}, key="bad")  # rejected: not "seen"
    await post(SIGNUP, headers={"Idempotency-Key": "c"})
    assert [r.duplicate for r in emu.events] == [False, False, True, True, False, False]
    assert emu.duplicates == {"a": 2}
    assert emu.stats.duplicates == 2
    # Like Encharge, a duplicate is applied again.
    person = emu.person(email="ann@example.com")
    assert person is not None
    assert person.events == ("Signed up",) * 6


async def test_wait_for_events_waits_then_returns_all(emu: Emulator, post: Post):
    waiter = asyncio.create_task(emu.wait_for_events(3, timeout=5))
    await asyncio.sleep(0)  # not a wait: one loop turn, so that the waiter starts first
    for _ in range(3):
        await post(SIGNUP)
    records = await asyncio.wait_for(waiter, 5)
    assert [r.seq for r in records] == [1, 2, 3]
    assert len(await emu.wait_for_events(2, timeout=0.01)) == 3


async def test_wait_for_events_times_out(emu: Emulator, post: Post):
    await post(SIGNUP)
    with pytest.raises(TimeoutError, match=r"1 of 2 events were accepted within 0\.05 s"):
        await emu.wait_for_events(2, timeout=0.05)
    # A later waiter still works after a timed-out one.
    waiter = asyncio.create_task(emu.wait_for_events(2, timeout=5))
    await post(SIGNUP)
    assert len(await asyncio.wait_for(waiter, 5)) == 2


async def test_reset_forgets_everything(emu: Emulator, post: Post):
    await post(SIGNUP, headers={"Idempotency-Key": "x"})
    await post(SIGNUP, headers={"Idempotency-Key": "x"})
    await post(SIGNUP, key=None)
    emu.reset()
    assert (emu.events, emu.rejected, emu.people, emu.objects) == ([], [], [], [])
    assert emu.duplicates == {}
    assert emu.stats.accepted == 0
    await post(SIGNUP, headers={"Idempotency-Key": "x"})
    assert [(r.seq, r.duplicate) for r in emu.events] == [(1, False)]


@pytest.mark.slow
async def test_the_write_key_is_never_recorded(emu: Emulator, post: Post):
    await post(SIGNUP)
    await post(SIGNUP, key="some-other-secret")
    dumped = json.dumps([r.to_dict() for r in emu.events] + [r.to_dict() for r in emu.rejected])
    assert KEY not in dumped
    assert "some-other-secret" not in dumped
    assert KEY not in repr(emu)
    assert KEY not in repr(emu._state)
