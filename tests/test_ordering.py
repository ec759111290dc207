"""Per-person ordering under concurrency, latency, retries and aliases."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import anyio
import httpx
import pytest

from .conftest import ClientFactory, Recorder

pytestmark = pytest.mark.anyio


def person_of(request: httpx.Request) -> str:
    body = json.loads(request.content)
    return str(body["user"].get("userId") or body["user"].get("email"))


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
        await anyio.sleep(rng.uniform(0, 0.004))
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


async def test_different_people_are_delivered_in_parallel(make_client: ClientFactory) -> None:
    active = peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await anyio.sleep(0.01)
        active -= 1
        return httpx.Response(200)

    transport = httpx.MockTransport(Recorder(slow))
    async with make_client(transport=transport, max_concurrency=8) as client:
        for i in range(16):
            await client.track("E", user_id="same-person", properties={"n": i})
        result = await client.flush(timeout=10)
        assert peak == 1
        for i in range(16):
            await client.track("E", user_id=f"person-{i}")
        await client.flush(timeout=10)
    assert result.delivered == 16
    assert peak == 8


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
        await anyio.sleep(rng.uniform(0, 0.005))
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
    failures_left = 3
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
        retry_wait=tenacity.wait_fixed(0.2),
    ) as client:
        await client.track("first", user_id="slow")
        await client.track("second", user_id="slow")
        for i in range(5):
            await client.track(f"e{i}", user_id="fast")
        result = await client.flush(timeout=10)
    assert result.delivered == 7
    assert order[:5] == [f"fast:e{i}" for i in range(5)]
    assert order[5:] == ["slow:first", "slow:second"]
