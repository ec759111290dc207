"""Bad input: every public call either queues a valid wire event or raises ValidationError.

Hypothesis feeds arbitrary JSON-like and non-JSON values, huge strings, deep nesting,
invalid emails and IPs and wrong types into `track`, `identify`, `alias`, `group` and their
`*_nowait` twins (called on the loop and from another thread), with every keyword, into one
long-lived client running on a blocking portal (asyncio, then trio). Each call must either
raise `ValidationError` (and queue nothing), or return a message id whose request reaches
the recording transport with a body that `json.loads` parses and that follows the wire
format (shared/encharge-ingest-api.md; the emulator's checks of docs/emulator.md agree).

Before the storm, events for one person are queued behind a request held at a gate; after
it, a valid event is still delivered (the worker did not die) and the held ones arrive, in
order (nothing already queued was lost).

Inputs that hit known library bugs are kept out of the storm (`_without_known_bugs`) and
pinned by the xfail tests at the end.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import ipaddress
import itertools
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from types import MappingProxyType
from typing import Any

import anyio
import httpx
import pytest
import tenacity
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encharge_async import AsyncEncharge, ValidationError
from encharge_async.emulator._validate import validate as emulator_validate

from ..conftest import wait_until
from .conftest import Stopwatch, summary

KEY = "wk-storm-0123456789"
ENDPOINT = "https://ingest.example.test/v1/"
# Per backend. Derandomized: every run tries the same inputs. To explore new ones, run with
# RELIABILITY_STORM_EXAMPLES=5000 RELIABILITY_STORM_RANDOM=1.
STORM_EXAMPLES = int(os.environ.get("RELIABILITY_STORM_EXAMPLES", "150"))
STORM_RANDOM = os.environ.get("RELIABILITY_STORM_RANDOM") == "1"
HELD_PERSON = f"held-{uuid.uuid4()}"  # never drawn by the strategies
HELD_EVENTS = 20
WAIT_TIMEOUT = 10.0

# Soak, fault and crash tests: the full suite runs them.
pytestmark = pytest.mark.slow


# -- values -------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: object


class Opaque:
    """An object nothing knows how to serialise."""

    def __repr__(self) -> str:
        return "<Opaque>"


@dataclasses.dataclass(frozen=True)
class Deep:
    """Stands for a structure nested `depth` levels deep, built when the call is made.

    (Hypothesis cannot print such a structure when it reports an example.)
    """

    depth: int

    def build(self) -> Any:
        value: Any = "leaf"
        for level in range(self.depth):
            value = {"a": value} if level % 2 else [value]
        return value


def _materialise(value: Any) -> Any:
    """Build the Deep markers of a call argument (top level, or one mapping level down)."""
    if isinstance(value, Deep):
        return value.build()
    if isinstance(value, dict):
        return {key: _materialise(item) for key, item in value.items()}
    if isinstance(value, MappingProxyType):
        return MappingProxyType(_materialise(dict(value)))
    return value


def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> Any:
    """About four draws in five from `valid`."""
    return st.integers(0, 4).flatmap(lambda pick: invalid if pick == 0 else valid)


SURROGATES = st.sampled_from(["\ud800", "a\udfffb", "\udc80@x"])
TEXT = st.text(max_size=12) | SURROGATES | st.sampled_from(["", " ", "\t\n", "\x00", "🙂"])
NON_BLANK = st.text(min_size=1, max_size=16).filter(lambda text: text.strip() != "")
HUGE_TEXT = st.sampled_from([10_000, 1_048_000, 1_048_576, 1_100_000]).map(lambda n: "x" * n)
INTS = st.integers() | st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**40])
FLOATS = st.floats()  # NaN and infinities included
SCALARS = st.none() | st.booleans() | INTS | FLOATS | TEXT
# Values the library turns into JSON (docs/design.md): ISO dates, UUIDs, Decimals...
CONVERTIBLE = st.sampled_from(
    [
        datetime.datetime(2026, 11, 26, 7, 58, 19, tzinfo=datetime.timezone.utc),
        datetime.date(2026, 11, 26),
        datetime.time(7, 58),
        uuid.UUID(int=7),
        decimal.Decimal("1.5"),
        Color.RED,
        {1, "a"},
        frozenset({"b"}),
        Point(1, "y"),
        (1, "tuple"),
    ]
)
NON_JSON = st.sampled_from(
    [
        b"bytes",
        bytearray(b"x"),
        1j,
        Opaque(),
        decimal.Decimal("NaN"),
        decimal.Decimal("-Infinity"),
        Point(2, 1j),
        print,
        range(3),
        Ellipsis,
        MappingProxyType({"a": 1}),
        memoryview(b"m"),
    ]
)
JSON_KEYS = st.text(max_size=8) | st.integers(-5, 5) | st.none() | st.booleans()
KEYS = JSON_KEYS | SURROGATES | st.floats() | st.sampled_from([(1, 2), b"k", frozenset()])
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | INTS
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | CONVERTIBLE,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(JSON_KEYS, children, max_size=3)
    ),
    max_leaves=8,
)
VALUES = st.recursive(
    SCALARS | CONVERTIBLE | NON_JSON | HUGE_TEXT,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(KEYS, children, max_size=3)
        | st.tuples(children, children)
    ),
    max_leaves=8,
)
# Around 1,000 levels, whether the stdlib encoder (and decoder) copes depends on the
# recursion limit, which hypothesis raises while it runs: depths are either always
# serialisable (orjson stops at 254, the stdlib takes over) or never.
DEEP = st.sampled_from([1, 100, 253, 254, 255, 600, 50_000]).map(Deep)
JUNK = VALUES | DEEP

EMAILS = mostly(
    st.emails().map(str) | st.sampled_from(["a@b", "A@B.example", "x@", "@", " @ ", "j@e.com\n"]),
    TEXT | HUGE_TEXT.map(lambda text: text + "@example.com") | JUNK,
)
USER_IDS = mostly(NON_BLANK | INTS, st.sampled_from(["", " ", "\t"]) | JUNK)
IPS = mostly(
    st.ip_addresses().map(str) | st.just("fe80::1%eth0"),
    st.sampled_from(["999.1.1.1", "1.2.3", "::g", " 1.2.3.4", "1.2.3.4\n", ""]) | TEXT | JUNK,
)
NAMES = mostly(
    NON_BLANK | st.sampled_from(["Registered user", "identify", "alias"]),
    TEXT | HUGE_TEXT | JUNK,
)
OBJECT_TYPES = mostly(NON_BLANK | st.just("company"), TEXT | JUNK)


def _user_dicts() -> st.SearchStrategy[Any]:
    known = st.fixed_dictionaries(
        {},
        optional={
            "email": EMAILS,
            "userId": USER_IDS,
            "tags": mostly(st.text(max_size=20), JUNK),
            "firstName": mostly(JSON_VALUES, VALUES),
            "ip": IPS,
        },
    )
    extra = mostly(
        st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=3),
        st.dictionaries(KEYS, VALUES, max_size=3),
    )
    return st.builds(lambda a, b: {**b, **a}, known, extra)


USERS = mostly(_user_dicts(), st.builds(MappingProxyType, _user_dicts()) | JUNK)
PROPERTIES = mostly(
    st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=4)
    | st.fixed_dictionaries({}, optional={"id": USER_IDS, "externalId": USER_IDS, "n": INTS}),
    st.dictionaries(KEYS, VALUES, max_size=4)
    | st.dictionaries(st.just("deep"), DEEP, min_size=1)
    | st.builds(MappingProxyType, st.dictionaries(st.text(max_size=3), VALUES, max_size=2))
    | JUNK,
)
# A valid message id is made unique when the call is made: ids must not collide.
UNIQUE_ID, UNIQUE_ID_200 = "<unique>", "<unique-200>"
MESSAGE_IDS = mostly(
    st.sampled_from([UNIQUE_ID, UNIQUE_ID_200]),
    st.sampled_from(["", "a b", "é", "x" * 201, "tab\tid", "new\nline", 5, b"id", None]),
)


REPR_LIMIT = 600  # nesting that repr() still handles


def _shallow(value: Any) -> Any:
    return Deep(REPR_LIMIT) if isinstance(value, Deep) and value.depth > REPR_LIMIT else value


def _sanitised(mapping: Any, *, person: bool, group: bool) -> Any:
    """A copy of `mapping` (a user or a group's properties) without the known-bug inputs."""
    if isinstance(mapping, MappingProxyType):
        return MappingProxyType(_sanitised(dict(mapping), person=person, group=group))
    if not isinstance(mapping, dict):
        return _shallow(mapping)
    clean = {key: _shallow(value) if person else value for key, value in mapping.items()}
    # user.tags must be a string: the library sends any value (Encharge refuses it).
    if person and not isinstance(clean.get("tags", ""), (str, type(None))):
        clean["tags"] = "sanitised"
    # A group's id/externalId must be a string or an int: the library sends any value.
    if group:
        for key in ("id", "externalId"):
            value = clean.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
                clean[key] = "sanitised"
    return clean


def _without_known_bugs(call: Call) -> Call:
    """Keep inputs that hit the known library bugs (see the xfail tests) out of the storm.

    A wrong-typed argument (or user field) nested too deeply for repr() raises
    RecursionError while its ValidationError message is built: such values are made
    shallower. Deeply nested event *contents* (properties) stay: they must be refused.
    """
    args = [_shallow(arg) for arg in call.args]
    if call.method.startswith("group"):
        args[1] = _sanitised(call.args[1], person=False, group=True)
    call.args = tuple(args)
    call.kwargs = {key: _shallow(value) for key, value in call.kwargs.items()}
    if "user" in call.kwargs:
        call.kwargs["user"] = _sanitised(call.kwargs["user"], person=True, group=False)
    return call


# -- calls --------------------------------------------------------------------------------


@dataclasses.dataclass
class Call:
    method: str  # "track", "track_nowait", ...
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    channel: str  # "await" (async methods), "loop" or "thread" (*_nowait)

    def __repr__(self) -> str:  # keep hypothesis' failure reports readable
        def short(value: Any) -> str:
            text = repr(value)
            return text if len(text) <= 80 else f"{text[:60]}...<{len(text)} chars>"

        args = ", ".join(short(a) for a in self.args)
        kwargs = ", ".join(f"{k}={short(v)}" for k, v in self.kwargs.items())
        return f"{self.method}({args}; {kwargs}) via {self.channel}"


PERSON_KEYWORDS = {"email": EMAILS, "user_id": USER_IDS, "user": USERS}
ASYNC_KEYWORDS = {
    "wait": st.sampled_from([False, True, 0, 1, None, "yes"]),
    "timeout": st.none() | st.floats(min_value=1.0, max_value=WAIT_TIMEOUT),
}


def _keywords(
    keywords: dict[str, Any], usually: list[tuple[str, ...]]
) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of `keywords`; usually with one of the `usually` groups present."""
    options = [
        st.fixed_dictionaries(
            {name: keywords[name] for name in group},
            optional={k: v for k, v in keywords.items() if k not in group},
        )
        for group in usually
    ]
    return st.one_of(*options, st.fixed_dictionaries({}, optional=keywords))


def _calls() -> st.SearchStrategy[Call]:
    def method(
        name: str,
        args: st.SearchStrategy[tuple[Any, ...]],
        keywords: dict[str, Any],
        usually: list[tuple[str, ...]],
    ) -> st.SearchStrategy[Call]:
        keywords = {**keywords, "message_id": MESSAGE_IDS}
        return st.one_of(
            st.builds(
                partial(Call, name, channel="await"),
                args,
                _keywords({**keywords, **ASYNC_KEYWORDS}, usually),
            ),
            st.builds(
                lambda a, k, channel: Call(f"{name}_nowait", a, k, channel),
                args,
                _keywords(keywords, usually),
                st.sampled_from(["loop", "thread"]),
            ),
        )

    person = [("email",), ("user_id",), ("user",), ("email", "user_id")]
    track = method(
        "track",
        st.tuples(NAMES),
        {**PERSON_KEYWORDS, "properties": PROPERTIES, "source_ip": IPS},
        person,
    )
    identify = method("identify", st.tuples(), PERSON_KEYWORDS, person)
    alias = method(
        "alias",
        st.tuples(),
        {
            "previous_email": EMAILS,
            "previous_user_id": USER_IDS,
            "email": EMAILS,
            "user_id": USER_IDS,
        },
        [
            (old, new)
            for old in ("previous_email", "previous_user_id")
            for new in ("email", "user_id")
        ],
    )
    group = method("group", st.tuples(OBJECT_TYPES, PROPERTIES), PERSON_KEYWORDS, [(), *person])
    return st.one_of(track, identify, alias, group).map(_without_known_bugs)


# -- the wire format ------------------------------------------------------------------------


def _is_email(value: Any) -> bool:
    return isinstance(value, str) and "@" in value


def _is_user_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and value.strip() != "")


def _check_user(user: Any, *, required: bool) -> None:
    assert isinstance(user, dict), user
    email, user_id, tags = user.get("email"), user.get("userId"), user.get("tags")
    assert email is None or _is_email(email), email
    assert user_id is None or _is_user_id(user_id), user_id
    assert tags is None or isinstance(tags, str), tags
    if required:
        assert email is not None or user_id is not None, "no email and no userId"


def check_wire(body: Any, method: str) -> None:
    """The rules of shared/encharge-ingest-api.md, as the emulator also applies them."""
    assert isinstance(body, dict)
    kind = method.removesuffix("_nowait")
    if kind in ("track", "identify"):
        assert set(body) <= {"name", "user", "properties", "sourceIp"}, set(body)
        assert isinstance(body["name"], str)
        assert body["name"].strip()
        if kind == "identify":
            assert body["name"] == "identify"
        _check_user(body["user"], required=True)
        assert isinstance(body.get("properties", {}), dict)
        if "sourceIp" in body:
            ipaddress.ip_address(body["sourceIp"])
    elif kind == "alias":
        assert set(body) <= {"type", "user", "previousEmail", "previousUserId"}, set(body)
        assert body["type"] == "alias"
        previous_email, previous_user_id = body.get("previousEmail"), body.get("previousUserId")
        assert previous_email is None or _is_email(previous_email)
        assert previous_user_id is None or _is_user_id(previous_user_id)
        assert previous_email is not None or previous_user_id is not None
        _check_user(body["user"], required=True)
    else:
        assert set(body) <= {"type", "objectType", "properties", "user"}, set(body)
        assert body["type"] == "group"
        assert isinstance(body["objectType"], str)
        assert body["objectType"].strip()
        properties = body["properties"]
        assert isinstance(properties, dict)
        for key in ("id", "externalId"):
            object_id = properties.get(key)
            assert object_id is None or (
                isinstance(object_id, (str, int)) and not isinstance(object_id, bool)
            ), object_id
        if "user" in body:
            _check_user(body["user"], required=True)
    # A second opinion: the emulator's own checks (docs/emulator.md).
    assert emulator_validate(body) is None, emulator_validate(body)


def check_matches(body: dict[str, Any], call: Call) -> None:
    """The body carries the identifiers the call was given."""
    kind = call.method.removesuffix("_nowait")
    kwargs = call.kwargs
    if kind == "track":
        assert body["name"] == call.args[0]
        if "source_ip" in kwargs and kwargs["source_ip"] is not None:
            assert body["sourceIp"] == kwargs["source_ip"]
    if kind == "group":
        assert body["objectType"] == call.args[0]
    if kind == "alias":
        for keyword, field in (
            ("previous_email", "previousEmail"),
            ("previous_user_id", "previousUserId"),
        ):
            if kwargs.get(keyword) is not None:
                assert body[field] == kwargs[keyword]
    user = body.get("user", {})
    if kwargs.get("email") is not None:
        assert user["email"] == kwargs["email"]
    if kwargs.get("user_id") is not None:
        assert user["userId"] == kwargs["user_id"]


# -- the client under the storm --------------------------------------------------------------


class GatedRecorder(httpx.AsyncBaseTransport):
    """Answers 200 to everything, recording bodies; holds HELD_PERSON's requests at a gate."""

    def __init__(self, gate: anyio.Event) -> None:
        self.gate = gate
        self.bodies: dict[str, bytes] = {}
        self.order: list[str] = []
        self.attempts: dict[str, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        message_id = request.headers["idempotency-key"]
        if HELD_PERSON.encode() in content:
            await self.gate.wait()
        self.attempts[message_id] = self.attempts.get(message_id, 0) + 1
        self.bodies[message_id] = content
        self.order.append(message_id)
        return httpx.Response(200, json={})


class Storm:
    def __init__(self, portal: BlockingPortal, backend: str) -> None:
        self.portal = portal
        self.backend = backend
        self.gate = portal.call(anyio.Event)
        self.recorder = GatedRecorder(self.gate)
        self.client = AsyncEncharge(
            KEY,
            endpoint=ENDPOINT,
            transport=self.recorder,
            max_queue_size=100_000,
            max_queue_bytes=512 * 1024 * 1024,
            retry_wait=tenacity.wait_none(),
            max_concurrency=4,
            shutdown_timeout=5,
        )
        self.ids = itertools.count()
        self.accepted: list[str] = []
        self.outcomes: dict[str, int] = {"accepted": 0, "ValidationError": 0}
        self.channels: dict[str, int] = {"await": 0, "loop": 0, "thread": 0}
        self.examples = 0

    def invoke(self, call: Call) -> str | None:
        """Make the call; return its message id, or None after a ValidationError."""
        args = tuple(_materialise(arg) for arg in call.args)
        kwargs = {key: _materialise(value) for key, value in call.kwargs.items()}
        if kwargs.get("message_id") in (UNIQUE_ID, UNIQUE_ID_200):
            unique = f"custom-{next(self.ids)}-{threading.get_ident()}"
            kwargs["message_id"] = (
                unique.ljust(200, "x") if kwargs["message_id"] == UNIQUE_ID_200 else unique
            )
        function: Callable[..., Any] = getattr(self.client, call.method)
        before = self.portal.call(lambda: self.client.stats.enqueued)
        self.channels[call.channel] += 1
        try:
            if call.channel == "thread":
                message_id = function(*args, **kwargs)
            else:
                message_id = self.portal.call(partial(function, *args, **kwargs))
        except ValidationError as exc:
            refusal: ValidationError | None = exc
        else:
            refusal = None
        if refusal is not None:
            assert str(refusal)  # it says what is wrong
            self.outcomes["ValidationError"] += 1
            # Nothing was queued (the loop has run whatever a thread handed it before).
            assert self.portal.call(lambda: self.client.stats.enqueued) == before
            return None
        assert isinstance(message_id, str)
        assert message_id
        if isinstance(kwargs.get("message_id"), str):
            assert message_id == kwargs["message_id"]
        self.outcomes["accepted"] += 1
        self.accepted.append(message_id)
        return message_id

    def delivered(self, message_ids: list[str]) -> dict[str, bytes]:
        async def wait() -> None:
            await wait_until(
                lambda: all(m in self.recorder.bodies for m in message_ids), WAIT_TIMEOUT
            )

        self.portal.call(wait)
        return {m: self.recorder.bodies.pop(m) for m in message_ids}


@pytest.fixture(params=["asyncio", "trio"])
def storm(request: pytest.FixtureRequest) -> Iterator[Storm]:
    with start_blocking_portal(backend=request.param) as portal:
        storm = Storm(portal, request.param)
        portal.call(storm.client.__aenter__)
        try:
            yield storm
        finally:
            portal.call(storm.client.aclose)


def test_every_call_queues_a_valid_event_or_raises_validation_error(storm: Storm) -> None:
    clock = Stopwatch()
    client, portal = storm.client, storm.portal
    held = [
        portal.call(partial(client.track, "Held", user_id=HELD_PERSON, properties={"n": n}))
        for n in range(HELD_EVENTS)
    ]

    @settings(
        max_examples=STORM_EXAMPLES,
        derandomize=not STORM_RANDOM,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(calls=st.lists(_calls(), min_size=1, max_size=4))
    def storm_of_calls(calls: list[Call]) -> None:
        storm.examples += 1
        made = [(call, storm.invoke(call)) for call in calls]
        accepted = [(call, mid) for call, mid in made if mid is not None]
        bodies = storm.delivered([mid for _, mid in accepted])
        for call, mid in accepted:
            body = json.loads(bodies[mid])
            check_wire(body, call.method)
            check_matches(body, call)

    storm_of_calls()

    # The worker survived: a valid event sent after the storm is delivered.
    after = portal.call(partial(client.track, "After the storm", user_id="after", wait=True))
    # Nothing queued before the storm was lost: release the held person's events.
    portal.call(storm.gate.set)
    result = portal.call(client.flush, WAIT_TIMEOUT)
    assert result.complete
    assert after in storm.recorder.attempts
    held_order = [m for m in storm.recorder.order if m in set(held)]
    assert held_order == held
    stats = client.stats
    assert (stats.failed, stats.dropped, stats.queued, stats.in_flight) == (0, 0, 0, 0)
    assert stats.delivered == stats.enqueued == storm.outcomes["accepted"] + HELD_EVENTS + 1
    assert set(storm.recorder.attempts.values()) == {1}
    # The storm was a mix: many calls were queued, many refused.
    assert storm.outcomes["accepted"] > 50
    assert storm.outcomes["ValidationError"] > 50
    summary(
        "bad input storm",
        backend=storm.backend,
        examples=storm.examples,
        calls=sum(storm.outcomes.values()),
        queued_valid=storm.outcomes["accepted"],
        validation_errors=storm.outcomes["ValidationError"],
        other_exceptions=0,
        via=storm.channels,
        held_then_delivered=len(held_order),
        seconds=clock.elapsed,
    )


# -- known bugs -----------------------------------------------------------------------------


def _outcome(function: Callable[[], object]) -> object:
    """The call's result, or the exception it raised."""
    try:
        return function()
    except Exception as exc:
        return exc


@pytest.fixture
def client() -> Iterator[tuple[BlockingPortal, AsyncEncharge]]:
    with start_blocking_portal() as portal:
        encharge = AsyncEncharge(
            KEY, endpoint=ENDPOINT, transport=httpx.MockTransport(lambda r: httpx.Response(200))
        )
        portal.call(encharge.__aenter__)
        try:
            yield portal, encharge
        finally:
            portal.call(encharge.aclose)


def test_a_cycle_in_properties_is_a_validation_error(
    client: tuple[BlockingPortal, AsyncEncharge],
) -> None:
    _, encharge = client
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    result = _outcome(lambda: encharge.track_nowait("E", user_id="u", properties=cyclic))
    assert isinstance(result, ValidationError), repr(result)


@pytest.mark.parametrize("method", ["track_nowait", "group_nowait", "identify_nowait"])
def test_a_deeply_nested_wrong_typed_argument_is_a_validation_error(
    client: tuple[BlockingPortal, AsyncEncharge], method: str
) -> None:
    _, encharge = client
    deep = Deep(50_000).build()
    calls: dict[str, Callable[[], object]] = {
        "track_nowait": lambda: encharge.track_nowait(deep, user_id="u"),
        "group_nowait": lambda: encharge.group_nowait(deep, {}),
        "identify_nowait": lambda: encharge.identify_nowait(email=deep),
    }
    result = _outcome(calls[method])
    assert isinstance(result, ValidationError), repr(result)


def test_user_tags_that_are_not_a_string_are_a_validation_error(
    client: tuple[BlockingPortal, AsyncEncharge],
) -> None:
    _, encharge = client
    result = _outcome(lambda: encharge.track_nowait("E", user={"email": "a@b.c", "tags": 5}))
    assert isinstance(result, ValidationError), repr(result)


@pytest.mark.parametrize("object_id", [[1], True, 1.5, {"a": 1}])
def test_group_ids_that_are_not_strings_or_ints_are_a_validation_error(
    client: tuple[BlockingPortal, AsyncEncharge], object_id: object
) -> None:
    _, encharge = client
    result = _outcome(lambda: encharge.group_nowait("company", {"externalId": object_id}))
    assert isinstance(result, ValidationError), repr(result)


@pytest.mark.parametrize("timeout", ["5", float("nan")])
def test_a_bad_timeout_is_refused_before_anything_is_queued(
    client: tuple[BlockingPortal, AsyncEncharge], timeout: object
) -> None:
    portal, encharge = client
    before = encharge.stats.enqueued
    call = partial(encharge.track, "E", user_id="u", wait=True, timeout=timeout)  # type: ignore[arg-type]
    result = _outcome(lambda: portal.call(call))
    queued = portal.call(lambda: encharge.stats.enqueued) - before
    assert isinstance(result, ValidationError), repr(result)
    assert queued == 0
