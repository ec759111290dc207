"""Per-person ordering under concurrency, latency, retries and aliases."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import anyio
import anyio.lowlevel
import httpx
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from encharge_async.testing import EnchargeRecorder

from .conftest import ClientFactory, Recorder, wait_until

pytestmark = pytest.mark.anyio


def person_of(request: httpx.Request) -> str:
    body = json.loads(request.content)
    return str(body["user"].get("userId") or body["user"].get("email"))


@pytest.mark.slow
async def test_each_persons_events_arrive_in_order_under_random_latency(
    make_client: ClientFactory,
) -> None:
    rng = random.Random(7)
    in_flight: set[str] = set()
    overlaps: list[str] = []
    arrived: dict[str, list[int]] = defaultdict(list)

    async def jittery(request: httpx.Request) -> httpx.Response:
        person = person_of(request)
        if person in in_flight:
            overlaps.append(person)
        in_flight.add(person)
        await anyio.sleep(rng.uniform(0, 0.004))  # injected latency: what is tested
        arrived[person].append(json.loads(request.content)["properties"]["n"])
        in_flight.discard(person)
        return httpx.Response(200)

    async with make_client(
        transport=httpx.MockTransport(Recorder(jittery)), max_concurrency=16
    ) as client:
        for n in range(600):
            await client.track("E", user_id=f"p{rng.randrange(12)}", properties={"n": n})
        result = await client.flush(timeout=20)
    assert result.delivered == 600
    assert overlaps == []
    for sequence in arrived.values():
        assert sequence == sorted(sequence)


async def test_different_people_are_delivered_in_parallel(
    make_client: ClientFactory, held: EnchargeRecorder
) -> None:
    async with make_client(transport=held, max_concurrency=8) as client:
        for i in range(16):
            await client.track("E", user_id="same-person", properties={"n": i})
        await held.wait_for_requests(1)
        await anyio.wait_all_tasks_blocked()  # the idle workers had their chance
        assert (held.held, client.stats.in_flight) == (1, 1)  # one at a time per person
        for i in range(16):
            await client.track("E", user_id=f"person-{i}")
        await held.wait_for_requests(8)
        await anyio.wait_all_tasks_blocked()
        assert (held.held, client.stats.in_flight) == (8, 8)  # as many as max_concurrency
        held.release()
        result = await client.flush(timeout=10)
    assert result.delivered == 32


async def test_email_and_user_id_both_order(make_client: ClientFactory, recorder: Recorder) -> None:
    """An event carrying both identifiers orders with events carrying either one."""
    async with make_client(max_concurrency=8) as client:
        await client.identify(email="jon@example.com")
        await client.track("Linked", email="JON@example.com", user_id="42")
        await client.track("ById", user_id="42")
    assert recorder.names() == ["identify", "Linked", "ById"]


async def test_alias_orders_between_old_and_new_identifier(make_client: ClientFactory) -> None:
    order: list[str] = []
    rng = random.Random(3)

    async def jittery(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(rng.uniform(0, 0.005))  # injected latency: what is tested
        body = json.loads(request.content)
        order.append(body.get("name") or body["type"])
        return httpx.Response(200)

    transport = httpx.MockTransport(Recorder(jittery))
    async with make_client(transport=transport, max_concurrency=8) as client:
        for i in range(5):
            await client.track(f"old-{i}", email="old@example.com")
        await client.alias(previous_email="old@example.com", email="new@example.com")
        for i in range(5):
            await client.track(f"new-{i}", email="new@example.com")
        await client.flush(timeout=10)
    alias_at = order.index("alias")
    assert sorted(order[:alias_at]) == [f"old-{i}" for i in range(5)]
    assert order[alias_at + 1 :] == [f"new-{i}" for i in range(5)]


async def test_group_updates_of_one_object_stay_in_order(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    async with make_client(max_concurrency=8) as client:
        for i in range(10):
            await client.group("company", {"externalId": "acme", "version": i})
    versions = [b["properties"]["version"] for b in recorder.bodies]
    assert versions == list(range(10))


async def test_a_retried_event_holds_back_only_its_own_person(make_client: ClientFactory) -> None:
    """Even with one delivery slot, a person in backoff does not block anyone else."""
    failures_left = 1
    order: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal failures_left
        body = json.loads(request.content)
        person = body["user"]["userId"]
        if person == "slow" and failures_left:
            failures_left -= 1
            return httpx.Response(503)
        order.append(f"{person}:{body['name']}")
        return httpx.Response(200)

    import tenacity

    async with make_client(
        transport=httpx.MockTransport(Recorder(flaky)),
        max_concurrency=1,
        retry_wait=tenacity.wait_fixed(60),  # until aclose() retries it at once
    ) as client:
        await client.track("first", user_id="slow")
        await client.track("second", user_id="slow")
        for i in range(5):
            await client.track(f"e{i}", user_id="fast")
        await wait_until(lambda: len(order) == 5)  # while "first" waits for its retry
    assert client.stats.delivered == 7
    assert order[:5] == [f"fast:e{i}" for i in range(5)]
    assert order[5:] == ["slow:first", "slow:second"]


async def test_a_user_id_equal_to_the_email_is_one_lane_not_a_deadlock(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    """Lanes are hashes of the identifiers: equal identifiers must not make an event wait on
    itself."""
    async with make_client(max_concurrency=4) as client:
        await client.track("first", email="a@example.com", user_id="a@example.com")
        await client.track("second", email="a@example.com")
        result = await client.flush(timeout=5)
    assert result.delivered == 2
    assert recorder.names() == ["first", "second"]


def test_lanes_are_the_hashes_of_the_ordering_keys() -> None:
    """Every event's lanes come from `ordering_keys`, one function, whatever its kind."""
    from encharge_async._builders import build_alias, build_group, build_identify, build_track
    from encharge_async._ordering import lanes_of

    events = [
        build_track(
            "T",
            email="Jon@Example.com",
            user_id="42",
            user=None,
            properties=None,
            source_ip=None,
            max_bytes=10_000,
        ),
        build_track(
            "T", email=None, user_id=42, user=None, properties=None, source_ip=None, max_bytes=999
        ),
        build_identify(
            email=None, user_id=None, user={"email": "x@example.com", "userId": 7}, max_bytes=10_000
        ),
        build_alias(
            previous_email="old@example.com",
            previous_user_id="o1",
            email="new@example.com",
            user_id=None,
            max_bytes=10_000,
        ),
        build_group(
            "company", {"id": 5}, email="e@example.com", user_id=None, user=None, max_bytes=10_000
        ),
        build_group("company", {"name": "x"}, email=None, user_id=None, user=None, max_bytes=100),
    ]
    assert [event.ordering_keys for event in events] == [
        ("u:42", "e:jon@example.com"),
        ("u:42",),
        ("u:7", "e:x@example.com"),
        ("u:o1", "e:old@example.com", "e:new@example.com"),
        ("e:e@example.com", "o:company:5"),
        (),
    ]
    for event in events:
        assert event.lanes == lanes_of(event.ordering_keys)
    # An int user id and its string spelling are one person, in one lane.
    assert events[0].lanes[0] == events[1].lanes[0]


_ids = st.one_of(
    st.text(min_size=1, max_size=12).filter(lambda t: not t.isspace()),
    st.integers(min_value=-(2**40), max_value=2**40),
)
_emails = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.text(alphabet="abcXYZ019._", min_size=1, max_size=8),
    st.sampled_from(["Example.com", "example.COM", "b.io"]),
)


@given(
    kind=st.sampled_from(["track", "identify", "alias", "group"]),
    email=st.none() | _emails,
    user_id=st.none() | _ids,
    previous_email=st.none() | _emails,
    previous_user_id=st.none() | _ids,
    object_id=st.none() | _ids,
)
@pytest.mark.slow
def test_live_and_spooled_events_of_a_person_share_their_lanes(
    kind: str,
    email: str | None,
    user_id: str | int | None,
    previous_email: str | None,
    previous_user_id: str | int | None,
    object_id: str | int | None,
) -> None:
    """An event read back from the spool (by a later process, from its stored body) gets
    exactly the lanes it had when it was built on the caller's line."""
    from encharge_async._builders import (
        build_alias,
        build_group,
        build_identify,
        build_track,
        entry_from_wire,
    )
    from encharge_async._spool import SpooledEvent

    assume(email is not None or user_id is not None)
    if kind == "track":
        entry = build_track("T", email, user_id, None, {"n": 1}, None, 10_000)
    elif kind == "identify":
        entry = build_identify(email=email, user_id=user_id, user=None, max_bytes=10_000)
    elif kind == "alias":
        assume(previous_email is not None or previous_user_id is not None)
        entry = build_alias(
            previous_email=previous_email,
            previous_user_id=previous_user_id,
            email=email,
            user_id=user_id,
            max_bytes=10_000,
        )
    else:
        fields = {} if object_id is None else {"externalId": object_id}
        entry = build_group(
            "company", fields, email=email, user_id=user_id, user=None, max_bytes=10_000
        )
    stored = SpooledEvent.from_event(entry)
    restored = entry_from_wire(stored.name, stored.body, stored.message_id, stored.attempts)
    assert restored.lanes == entry.lanes
    assert restored.ordering_keys == stored.keys


@pytest.mark.slow
async def test_the_queue_order_stays_bounded_behind_a_stuck_head(
    make_client: ClientFactory,
) -> None:
    """One person retrying for a long time heads the queue's order; the entries of the many
    events delivered behind it are pruned rather than kept (and their memory with them)."""
    release = anyio.Event()

    async def stuck_then_ok(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["user"]["userId"] == "stuck" and not release.is_set():
            return httpx.Response(503)
        return httpx.Response(200)

    import tenacity

    async with make_client(
        transport=httpx.MockTransport(Recorder(stuck_then_ok)),
        retry_wait=tenacity.wait_fixed(0.05),
        max_retries=1000,
    ) as client:
        await client.track("stuck", user_id="stuck")
        for i in range(2000):
            await client.track("flowing", user_id=f"p{i}")
            if i % 100 == 0:
                await anyio.lowlevel.checkpoint()
        await wait_until(lambda: client.stats.delivered >= 2000, timeout=10)
        # White-box: the order deque holds the stuck event and at most the pruning slack.
        assert client.stats.queued + client.stats.in_flight == 1
        assert client._pipeline.queue.order_entries <= 2 + 64
        release.set()
        result = await client.flush(timeout=5)
    assert result.delivered == 1
