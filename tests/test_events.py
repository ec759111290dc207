"""Wire format and validation, through the public API."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import re
import uuid
from typing import Any

import pytest

from encharge_async import AsyncEncharge, Event, ValidationError
from encharge_async._json import use_orjson

from .conftest import WRITE_KEY, ClientFactory, Recorder

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["orjson", "stdlib"])
def serialiser(request: pytest.FixtureRequest) -> Any:
    use_orjson(request.param == "orjson")
    yield request.param
    use_orjson(True)


async def test_wire_format_of_each_call(make_client: ClientFactory, recorder: Recorder) -> None:
    async with make_client() as client:
        await client.track(
            "Registered user",
            email="jon@example.com",
            user_id="42",
            user={"firstName": "Jon"},
            properties={"plan": "Premium", "trial": {"days": 14}},
            source_ip="203.0.113.7",
        )
        await client.track("Created page", user_id=123)
        await client.identify(email="jon@example.com", user={"tags": "vip, beta"})
        await client.alias(previous_email="old@example.com", email="new@example.com")
        await client.alias(previous_user_id="42", user_id="u-42")
        await client.group("company", {"externalId": "acme", "name": "Acme"}, user_id="42")
        await client.group("company", {"name": "Solo"})
    bodies = sorted(recorder.bodies, key=repr)
    assert bodies == sorted(
        [
            {
                "name": "Registered user",
                "user": {"firstName": "Jon", "email": "jon@example.com", "userId": "42"},
                "properties": {"plan": "Premium", "trial": {"days": 14}},
                "sourceIp": "203.0.113.7",
            },
            {"name": "Created page", "user": {"userId": 123}},
            {"name": "identify", "user": {"tags": "vip, beta", "email": "jon@example.com"}},
            {
                "type": "alias",
                "user": {"email": "new@example.com"},
                "previousEmail": "old@example.com",
            },
            {"type": "alias", "user": {"userId": "u-42"}, "previousUserId": "42"},
            {
                "type": "group",
                "objectType": "company",
                "properties": {"externalId": "acme", "name": "Acme"},
                "user": {"userId": "42"},
            },
            {"type": "group", "objectType": "company", "properties": {"name": "Solo"}},
        ],
        key=repr,
    )


async def test_nowait_twins_send_the_same_wire_format(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    async with make_client(max_concurrency=1) as client:
        client.track_nowait("Paid", email="a@example.com", properties={"n": 1}, source_ip="::1")
        client.identify_nowait(user_id=7, user={"lastName": "Doe"})
        client.alias_nowait(previous_user_id=7, user_id=8, email="b@example.com")
        client.group_nowait("team", {"id": "t1"}, email="a@example.com")
    assert sorted(recorder.bodies, key=repr) == sorted(
        [
            {
                "name": "Paid",
                "user": {"email": "a@example.com"},
                "properties": {"n": 1},
                "sourceIp": "::1",
            },
            {"name": "identify", "user": {"lastName": "Doe", "userId": 7}},
            {"type": "alias", "user": {"email": "b@example.com", "userId": 8}, "previousUserId": 7},
            {
                "type": "group",
                "objectType": "team",
                "properties": {"id": "t1"},
                "user": {"email": "a@example.com"},
            },
        ],
        key=repr,
    )


async def test_returns_message_id_sent_as_idempotency_key(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    async with make_client() as client:
        ids = [await client.track("E", user_id=i) for i in range(20)]
    assert len(set(ids)) == 20
    assert all(isinstance(i, str) and len(i) == 36 for i in ids)
    assert sorted(r.headers["idempotency-key"] for r in recorder.requests) == sorted(ids)


@pytest.mark.slow
async def test_rich_values_become_json(
    make_client: ClientFactory, recorder: Recorder, serialiser: str
) -> None:
    class Plan(enum.Enum):
        PRO = "pro"

    @dataclasses.dataclass
    class Point:
        x: int

    when = datetime.datetime(2020, 10, 27, 7, 58, 19, tzinfo=datetime.timezone.utc)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    async with make_client() as client:
        await client.track(
            "Rich",
            email="a@example.com",
            user={"signedUp": when, "birthday": datetime.date(1990, 1, 2)},
            properties={
                "at": datetime.time(7, 5),
                "id": ident,
                "price": decimal.Decimal("9.99"),
                "plan": Plan.PRO,
                "tags": {"x"},
                "point": Point(3),
                "big": 2**70,
                "n": 1.5,
                "none": None,
                1: "int key",  # type: ignore[dict-item]
            },
        )
    body = recorder.bodies[0]
    assert body["user"]["signedUp"] == "2020-10-27T07:58:19+00:00"
    assert body["user"]["birthday"] == "1990-01-02"
    assert body["properties"] == {
        "at": "07:05:00",
        "id": "12345678-1234-5678-1234-567812345678",
        "price": "9.99",
        "plan": "pro",
        "tags": ["x"],
        "point": {"x": 3},
        "big": 2**70,
        "n": 1.5,
        "none": None,
        "1": "int key",
    }


async def test_caller_may_mutate_after_enqueue(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    props: dict[str, Any] = {"step": 1}
    user: dict[str, Any] = {"firstName": "Jon"}
    async with make_client() as client:
        client.track_nowait("Step", email="a@example.com", user=user, properties=props)
        props["step"] = 2
        user["firstName"] = "Changed"
    assert recorder.bodies[0]["properties"] == {"step": 1}
    assert recorder.bodies[0]["user"]["firstName"] == "Jon"


BAD_TRACK_CALLS: list[tuple[dict[str, Any], str]] = [
    ({"name": ""}, "name must be a non-empty string"),
    ({"name": "   "}, "name must be a non-empty string"),
    ({"name": None}, "name must be a non-empty string"),
    ({"name": "E", "email": None}, "needs an email or a user_id"),
    ({"name": "E", "user": {"firstName": "x"}}, "needs an email or a user_id"),
    ({"name": "E", "email": "not-an-email"}, "email must be an email address"),
    ({"name": "E", "email": 42}, "email must be an email address"),
    ({"name": "E", "user": {"email": ["a@b"]}}, "user.email must be an email address"),
    ({"name": "E", "user_id": True}, "user_id must be a string or an int"),
    ({"name": "E", "user_id": 4.5}, "user_id must be a string or an int"),
    ({"name": "E", "user_id": " "}, "user_id must not be empty"),
    ({"name": "E", "user": {"userId": None, "email": "a@b.c"}}, "user.userId must be"),
    ({"name": "E", "user": "jon"}, "user must be a dict"),
    ({"name": "E", "user_id": 1, "properties": [1]}, "properties must be a dict"),
    ({"name": "E", "user_id": 1, "source_ip": "999.1.1.1"}, "source_ip must be an IPv4 or IPv6"),
    ({"name": "E", "user_id": 1, "source_ip": 17}, "source_ip must be a string"),
    ({"name": "E", "user_id": 1, "properties": {"x": float("nan")}}, "properties.x: nan"),
    ({"name": "E", "user_id": 1, "properties": {"x": [float("inf")]}}, "properties.x[0]: inf"),
    (
        {"name": "E", "user_id": 1, "properties": {"x": decimal.Decimal("NaN")}},
        "properties.x: Decimal value is not finite",
    ),
    (
        {"name": "E", "user_id": 1, "properties": {"x": object()}},
        "properties.x: Object of type object is not JSON serializable",
    ),
    ({"name": "E", "user_id": 1, "user": {"a": {"b": b"bytes"}}}, "user.a.b: Object of type bytes"),
    (
        {"name": "E", "user_id": 1, "properties": {(1, 2): "tuple key"}},
        "key (1, 2) is not a string",
    ),
    (
        {"name": "E", "email": "a@example.com", "user": {"email": "b@example.com"}},
        "conflicts with user['email']",
    ),
    ({"name": "E", "user_id": 1, "user": {"userId": 2}}, "conflicts with user['userId']"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_TRACK_CALLS)
@pytest.mark.parametrize("serialiser_name", ["orjson", "stdlib"])
def test_bad_track_input_names_the_field(
    kwargs: dict[str, Any], message: str, serialiser_name: str
) -> None:
    use_orjson(serialiser_name == "orjson")
    try:
        client = AsyncEncharge(WRITE_KEY)
        call = dict(kwargs)
        name = call.pop("name")
        with pytest.raises(ValidationError, match=re.escape(message)):
            client.track_nowait(name, **call)
        assert client.stats.enqueued == 0
    finally:
        use_orjson(True)


def test_validation_error_is_a_value_error() -> None:
    client = AsyncEncharge(WRITE_KEY)
    with pytest.raises(ValueError, match="needs an email or a user_id"):
        client.identify_nowait()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "alias needs previous_email or previous_user_id"),
        ({"previous_email": "a@example.com"}, "alias needs email or user_id"),
        ({"email": "a@example.com"}, "alias needs previous_email or previous_user_id"),
        ({"previous_email": "nope", "email": "a@example.com"}, "previous_email must be an email"),
        ({"previous_user_id": False, "user_id": 1}, "previous_user_id must be a string or an int"),
        ({"previous_user_id": 1, "email": "x"}, "email must be an email address"),
    ],
)
def test_bad_alias(kwargs: dict[str, Any], message: str) -> None:
    client = AsyncEncharge(WRITE_KEY)
    with pytest.raises(ValidationError, match=message):
        client.alias_nowait(**kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("", {}), {}, "object_type must be a non-empty string"),
        ((None, {}), {}, "object_type must be a non-empty string"),
        (("company", None), {}, "properties must be a dict"),
        (("company", {}), {"user": {"name": "x"}}, "group's user needs an email or a user_id"),
        (("company", {"at": float("nan")}), {}, "properties.at: nan"),
    ],
)
def test_bad_group(args: tuple[Any, Any], kwargs: dict[str, Any], message: str) -> None:
    client = AsyncEncharge(WRITE_KEY)
    with pytest.raises(ValidationError, match=message):
        client.group_nowait(*args, **kwargs)


def test_event_over_max_event_bytes() -> None:
    client = AsyncEncharge(WRITE_KEY, max_event_bytes=100)
    with pytest.raises(ValidationError, match=r"over max_event_bytes=100"):
        client.track_nowait("E", user_id=1, properties={"blob": "x" * 200})


def test_deep_nesting_is_a_validation_error() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    client = AsyncEncharge(WRITE_KEY)
    with pytest.raises(ValidationError, match="nested too deeply"):
        client.track_nowait("E", user_id=1, properties=deep)


@pytest.mark.parametrize("fast", [True, False], ids=["orjson", "stdlib"])
def test_the_nesting_limit_is_the_same_with_both_serialisers(fast: bool) -> None:
    """MAX_NESTING_DEPTH counts the event itself: its properties may nest one level less.
    Both serialisers, on every Python, draw the line at the same depth."""
    from encharge_async import _json
    from encharge_async._constants import MAX_NESTING_DEPTH

    def nested(levels: int) -> dict[str, Any]:
        value: dict[str, Any] = {"leaf": 1}
        for _ in range(levels - 1):
            value = {"a": value}
        return value

    from encharge_async._builders import build_track

    _json.use_orjson(fast)
    try:
        build_track("E", None, "1", None, nested(MAX_NESTING_DEPTH - 1), None, 1 << 20)
        with pytest.raises(ValidationError, match="nested too deeply"):
            build_track("E", None, "1", None, nested(MAX_NESTING_DEPTH), None, 1 << 20)
    finally:
        _json.use_orjson(True)


async def test_bad_input_leaves_the_queue_and_worker_alone(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    async with make_client() as client:
        await client.track("Before", user_id=1)
        for bad in ({"x": float("nan")}, {"y": object()}):
            with pytest.raises(ValidationError):
                await client.track("Bad", user_id=1, properties=bad)
        await client.track("After", user_id=1)
    assert recorder.names() == ["Before", "After"]
    assert client.stats.delivered == 2
    assert client.stats.enqueued == 2


async def test_event_payload_and_repr(make_client: ClientFactory) -> None:
    seen: list[Event] = []
    async with make_client(on_delivered=seen.append) as client:
        mid = await client.track("Paid", email="a@example.com", properties={"n": 1})
    (event,) = seen
    assert event.message_id == mid
    assert event.name == "Paid"
    assert event.payload == {
        "name": "Paid",
        "user": {"email": "a@example.com"},
        "properties": {"n": 1},
    }
    assert event.size == len(event.body)
    assert event.attempts == 1
    assert repr(event) == f"<Event 'Paid' message_id={mid!r} size={event.size}>"


async def test_caller_chosen_message_id(make_client: ClientFactory, recorder: Recorder) -> None:
    async with make_client(max_concurrency=1) as client:
        assert await client.track("E", user_id=1, message_id="order-1001") == "order-1001"
        assert client.identify_nowait(user_id=1, message_id="id-2") == "id-2"
        await client.alias(previous_user_id=1, user_id=2, message_id="alias-3")
        client.group_nowait("company", {"id": 1}, message_id="group-4")
    keys = sorted(r.headers["idempotency-key"] for r in recorder.requests)
    assert keys == ["alias-3", "group-4", "id-2", "order-1001"]


@pytest.mark.parametrize("bad", ["", "has space", "x" * 201, "caf\u00e9", "line\nbreak", 42])
def test_bad_message_id(bad: Any) -> None:
    client = AsyncEncharge(WRITE_KEY)
    with pytest.raises(ValidationError, match="message_id must be 1 to 200 printable ASCII"):
        client.track_nowait("E", user_id=1, message_id=bad)


async def test_message_ids_are_unique_stable_and_sent_as_the_idempotency_key(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    dropped: list[str] = []
    async with (
        make_client(
            max_concurrency=1, max_queue_size=3, on_drop=lambda e, r: dropped.append(e.message_id)
        ) as a,
        make_client() as b,
    ):
        ids = [await a.track("E", user_id=i) for i in range(5)]  # two dropped at the door
        ids += [b.track_nowait("E", user_id=i) for i in range(3)]
        await a.flush(timeout=5)
        await b.flush(timeout=5)
    assert len(set(ids)) == len(ids) == 8
    uuid_shaped = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-\d{12}"
    assert all(re.fullmatch(uuid_shaped, message_id) for message_id in ids)
    sent = [r.headers["idempotency-key"] for r in recorder.requests]
    assert sorted(sent + dropped) == sorted(ids)
    assert len(dropped) == 2
