"""encharge_async.testing: the recorder, the fakes and their assertion messages."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import httpx
import pytest

from encharge_async import AsyncEncharge, DeliveryError, Encharge
from encharge_async.testing import (
    TEST_WRITE_KEY,
    CapturedRequest,
    EnchargeRecorder,
    FakeAsyncEncharge,
    FakeEncharge,
)


async def _track_some(encharge: AsyncEncharge) -> list[str]:
    return [
        await encharge.track(
            "Registered user",
            email="Jon@Example.com",
            user_id=42,
            user={"firstName": "Jon"},
            properties={"plan": "Premium", "source": "ads"},
        ),
        await encharge.identify(email="ann@example.com", user={"tags": "vip"}),
        await encharge.alias(previous_email="jon@example.com", email="jon@new.example"),
        await encharge.group(
            "company", {"externalId": "acme", "name": "Acme"}, user_id=42, user={"role": "cto"}
        ),
    ]


@pytest.mark.slow
@pytest.mark.anyio
async def test_fake_client_records_and_asserts_every_kind_of_call() -> None:
    async with FakeAsyncEncharge() as encharge:
        ids = await _track_some(encharge)
        tracked = await encharge.assert_tracked(
            "Registered user",
            email="jon@example.com",  # case does not matter
            user_id="42",  # nor int versus text
            user={"firstName": "Jon"},
            properties={"plan": "Premium"},
            count=1,
        )
        assert tracked.message_id == ids[0]
        assert tracked.kind == "track"
        assert tracked.attempt == 1
        assert tracked.accepted
        assert tracked.headers["x-encharge-token"] == TEST_WRITE_KEY
        assert tracked.headers["idempotency-key"] == ids[0]
        assert tracked.content.startswith(b'{"name":"Registered user"')
        identified = await encharge.assert_identified(email="ann@example.com", user={"tags": "vip"})
        assert (identified.kind, identified.name) == ("identify", "identify")
        aliased = await encharge.assert_aliased(
            previous_email="JON@example.com", email="jon@new.example"
        )
        assert aliased.message_id == ids[2]
        grouped = await encharge.assert_grouped(
            "company", properties={"externalId": "acme"}, user_id=42, user={"role": "cto"}
        )
        assert (grouped.kind, grouped.name) == ("group", "group")
        await encharge.assert_not_tracked("Registered user", email="ann@example.com")
        await encharge.assert_not_tracked("Paid")
    recorder = encharge.recorder
    # Each person's events arrive in order; different people's may interleave.
    assert sorted(r.message_id for r in recorder.events) == sorted(ids)
    assert recorder.events[0].message_id == ids[0]
    assert [b for b in recorder.bodies if b.get("type") == "alias"] == [
        {
            "type": "alias",
            "previousEmail": "jon@example.com",
            "user": {"email": "jon@new.example"},
        }
    ]
    assert recorder.requests == recorder.events  # nothing refused, nothing retried
    # The assertions still work once the client is closed.
    await encharge.assert_tracked("Registered user", count=1)


@pytest.mark.anyio
async def test_assert_tracked_failure_lists_what_was_captured() -> None:
    async with FakeAsyncEncharge() as encharge:
        await _track_some(encharge)
        with pytest.raises(AssertionError) as failure:
            await encharge.assert_tracked("Registered user", email="someone@else.com")
    message = str(failure.value)
    assert message.startswith(
        "expected a tracked event 'Registered user' with email='someone@else.com'; 0 matched."
    )
    assert "Accepted 4 event(s):" in message
    assert (
        '1. track \'Registered user\' {"properties": {"plan": "Premium", "source": "ads"}, '
        '"user": {"email": "Jon@Example.com", "firstName": "Jon", "userId": 42}}' in message
    )
    assert '2. identify {"user": {"email": "ann@example.com", "tags": "vip"}}' in message
    assert '. alias {"previousEmail": "jon@example.com"' in message
    assert '. group {"objectType": "company"' in message
    assert "Refused" not in message


@pytest.mark.anyio
async def test_each_assertion_fails_with_its_criteria() -> None:
    async with FakeAsyncEncharge() as encharge:
        await encharge.track("Paid", user_id=1, properties={"amount": 10})
        await encharge.track("Paid", user_id=2)
        cases: list[tuple[Callable[[], Awaitable[object]], str]] = [
            (
                lambda: encharge.assert_tracked("Paid", count=1),
                "expected a tracked event 'Paid', 1 time(s); 2 matched.",
            ),
            (
                lambda: encharge.assert_tracked("Paid", properties={"amount": 11}),
                "expected a tracked event 'Paid' with properties={'amount': 11}; 0 matched.",
            ),
            (
                lambda: encharge.assert_identified(user_id=1),
                "expected an identify with user_id=1; 0 matched.",
            ),
            (
                lambda: encharge.assert_aliased(previous_user_id=1, user_id=3),
                "expected an alias with user_id=3, previous_user_id=1; 0 matched.",
            ),
            (
                lambda: encharge.assert_grouped("company", properties={"id": 1}),
                "expected a group event for 'company' with properties={'id': 1}; 0 matched.",
            ),
            (
                lambda: encharge.assert_not_tracked("Paid", user_id=2),
                "expected no tracked event 'Paid' with user_id=2; 1 matched.",
            ),
        ]
        for check, expected in cases:
            with pytest.raises(AssertionError) as failure:
                await check()
            assert str(failure.value).startswith(expected + "\nAccepted 2 event(s):")
        with pytest.raises(ValueError, match="count must be at least 1"):
            await encharge.assert_tracked("Paid", count=0)


@pytest.mark.anyio
async def test_fail_next_makes_the_next_events_fail() -> None:
    errors: list[DeliveryError] = []
    async with FakeAsyncEncharge(max_retries=2, on_error=errors.append) as encharge:
        encharge.recorder.fail_next(400, body={"error": "name too long"})
        with pytest.raises(DeliveryError, match="name too long") as refused:
            await encharge.track("Refused", user_id=1, wait=True)
        assert refused.value.status == 400
        # Two events answered 503 on every attempt: they fail once retries run out.
        encharge.recorder.fail_next(503, count=2)
        await encharge.track("Unavailable", user_id=2)
        await encharge.track("Unavailable", user_id=3)
        await encharge.track("Fine", user_id=4)
        await encharge.assert_tracked("Fine")
        with pytest.raises(AssertionError) as failure:
            await encharge.assert_tracked("Unavailable")
    assert [e.status for e in errors] == [400, 503, 503]
    assert [e.attempts for e in errors] == [1, 3, 3]
    message = str(failure.value)
    assert "Accepted 1 event(s):" in message
    assert "Refused 7 request(s):" in message
    assert 'track \'Refused\' {"user": {"userId": 1}}  -> HTTP 400 (attempt 1)' in message
    assert "-> HTTP 503 (attempt 3)" in message


@pytest.mark.anyio
async def test_fail_next_for_some_attempts_then_success() -> None:
    async with FakeAsyncEncharge() as encharge:
        recorder = encharge.recorder
        recorder.fail_next(503, attempts=2, headers={"Retry-After": "0"})
        recorder.fail_next(429, attempts=1, body="slow down")  # queued after the first
        first = await encharge.track("Retried", user_id=1, wait=True)
        second = await encharge.track("Limited", user_id=2, wait=True)
        await encharge.track("Plain", user_id=3, wait=True)
    statuses = [(r.name, r.status, r.attempt) for r in recorder.requests]
    assert statuses == [
        ("Retried", 503, 1),
        ("Retried", 503, 2),
        ("Retried", 200, 3),
        ("Limited", 429, 1),
        ("Limited", 200, 2),
        ("Plain", 200, 1),
    ]
    assert [r.message_id for r in recorder.events[:2]] == [first, second]
    assert encharge.stats.retried == 3


@pytest.mark.anyio
async def test_error_bodies_and_headers_reach_the_client() -> None:
    async with FakeAsyncEncharge() as encharge:
        encharge.recorder.fail_next(422, body="plain text", headers={"X-Reason": "test"})
        with pytest.raises(DeliveryError) as failure:
            await encharge.track("E", user_id=1, wait=True)
    assert failure.value.body == "plain text"
    assert failure.value.status == 422


def test_fail_next_validates_its_arguments() -> None:
    recorder = EnchargeRecorder()
    with pytest.raises(ValueError, match="4xx or 5xx"):
        recorder.fail_next(200)
    with pytest.raises(ValueError, match="at least 1"):
        recorder.fail_next(500, count=0)
    with pytest.raises(ValueError, match="at least 1"):
        recorder.fail_next(500, attempts=0)


@pytest.mark.slow
@pytest.mark.anyio
async def test_clear_forgets_requests_and_scripted_failures() -> None:
    async with FakeAsyncEncharge() as encharge:
        encharge.recorder.fail_next(400)
        await encharge.track("Before", user_id=1)
        await encharge.settle()
        encharge.recorder.fail_next(400)
        encharge.recorder.clear()
        await encharge.track("After", user_id=1)
        await encharge.assert_tracked("After")
    assert [(r.name, r.status) for r in encharge.recorder.requests] == [("After", 200)]


@pytest.mark.slow
@pytest.mark.anyio
async def test_assertions_say_when_the_queue_did_not_drain() -> None:
    async with FakeAsyncEncharge(assert_timeout=0.05, shutdown_timeout=0.1) as encharge:
        # A 503 asking to come back in a minute: the event stays queued.
        encharge.recorder.fail_next(503, attempts=1, headers={"Retry-After": "60"})
        await encharge.track("Parked", user_id=1)
        with pytest.raises(AssertionError, match=r"^1 event\(s\) were still undelivered after"):
            await encharge.assert_tracked("Parked")
        with pytest.raises(AssertionError, match="cannot tell that none of them matches"):
            await encharge.assert_not_tracked("Parked")
        checks: list[Callable[[], Awaitable[object]]] = [
            lambda: encharge.assert_identified(user_id=1),
            lambda: encharge.assert_aliased(user_id=1),
            lambda: encharge.assert_grouped("company"),
        ]
        for check in checks:
            with pytest.raises(AssertionError, match="still undelivered"):
                await check()


@pytest.mark.anyio
async def test_long_reports_are_cut() -> None:
    async with FakeAsyncEncharge() as encharge:
        for i in range(25):
            await encharge.track("Viewed", user_id=i, properties={"page": "x" * 300})
        with pytest.raises(AssertionError) as failure:
            await encharge.assert_tracked("Bought")
    lines = str(failure.value).splitlines()
    assert lines[1] == "Accepted 25 event(s):"
    assert len(lines) == 2 + 20 + 1
    assert lines[-1] == "  ... and 5 more"
    assert all(len(line) <= 210 and line.endswith("...") for line in lines[2:22])


@pytest.mark.anyio
async def test_a_recorder_as_the_transport_of_any_client() -> None:
    recorder = EnchargeRecorder()
    async with AsyncEncharge("my-key", transport=recorder) as encharge:
        await encharge.track("Registered user", email="jon@example.com", wait=True)
    event = recorder.assert_tracked("Registered user", email="jon@example.com")
    assert event.headers["x-encharge-token"] == "my-key"
    assert recorder.report() == (
        "Accepted 1 event(s):\n"
        '  1. track \'Registered user\' {"user": {"email": "jon@example.com"}}'
    )
    assert EnchargeRecorder().report() == "Accepted 0 event(s)."


@pytest.mark.anyio
async def test_fakes_can_share_a_recorder_but_not_take_a_transport() -> None:
    recorder = EnchargeRecorder()
    async with FakeAsyncEncharge(recorder=recorder) as first:
        await first.track("From first", user_id=1)
    async with FakeAsyncEncharge(recorder=recorder) as second:
        await second.track("From second", user_id=1)
    assert [r.name for r in recorder.events] == ["From first", "From second"]
    with pytest.raises(TypeError, match="recorder="):
        FakeAsyncEncharge(transport=httpx.MockTransport(lambda request: httpx.Response(200)))


def test_captured_request_of_an_unusual_body() -> None:
    captured = CapturedRequest(
        body={"name": "E", "user": "not a dict", "properties": ["x"]},
        content=b"",
        headers=httpx.Headers(),
        status=200,
        attempt=1,
    )
    assert (captured.user, captured.properties, captured.message_id) == ({}, {}, "")


@pytest.mark.slow
def test_sync_fake_client() -> None:
    with FakeEncharge() as encharge:
        assert isinstance(encharge, Encharge)
        encharge.track("Registered user", email="jon@example.com", properties={"plan": "Pro"})
        encharge.identify(user_id=7, user={"plan": "Pro"})
        encharge.alias(previous_user_id=7, user_id=8)
        encharge.group("company", {"externalId": "acme"}, user_id=8)
        event = encharge.assert_tracked("Registered user", properties={"plan": "Pro"}, count=1)
        assert event.user == {"email": "jon@example.com"}
        encharge.assert_identified(user_id=7)
        encharge.assert_aliased(previous_user_id=7, user_id="8")
        encharge.assert_grouped("company", user_id=8)
        encharge.assert_not_tracked("Paid")
        with pytest.raises(AssertionError, match=re.escape("expected no tracked event")):
            encharge.assert_not_tracked("Registered user")
        encharge.recorder.fail_next(400)
        with pytest.raises(DeliveryError):
            encharge.track("Refused", user_id=1, wait=True)
        with pytest.raises(AssertionError, match="Refused 1 request"):
            encharge.assert_tracked("Refused")


@pytest.mark.slow
def test_sync_fake_assertions_say_when_the_queue_did_not_drain() -> None:
    with FakeEncharge(assert_timeout=0.05, shutdown_timeout=0.1) as encharge:
        encharge.recorder.fail_next(503, attempts=1, headers={"Retry-After": "60"})
        encharge.track("Parked", user_id=1)
        with pytest.raises(AssertionError, match="still undelivered"):
            encharge.assert_tracked("Parked")
        with pytest.raises(AssertionError, match="cannot tell"):
            encharge.assert_not_tracked("Parked")
        with pytest.raises(AssertionError, match="still undelivered"):
            encharge.assert_identified(user_id=1)
        with pytest.raises(AssertionError, match="still undelivered"):
            encharge.assert_aliased(user_id=1)
        with pytest.raises(AssertionError, match="still undelivered"):
            encharge.assert_grouped("company")


@pytest.mark.anyio
async def test_the_documented_error_handling_example() -> None:
    errors: list[DeliveryError] = []
    async with FakeAsyncEncharge(on_error=errors.append, max_retries=2) as encharge:
        encharge.recorder.fail_next(400, body={"error": "Invalid email"})
        with pytest.raises(DeliveryError, match="Invalid email"):
            await encharge.track("Registered user", email="jon@example.com", wait=True)

        encharge.recorder.fail_next(503, attempts=1)  # one 503, then accepted on retry
        await encharge.track("Paid", user_id=42)
        await encharge.assert_tracked("Paid", user_id=42)
    assert [e.status for e in errors] == [400]
    assert [r.status for r in encharge.recorder.requests] == [400, 503, 200]


@pytest.mark.anyio
async def test_the_documented_failure_message() -> None:
    async with FakeAsyncEncharge() as encharge:
        await encharge.identify(email="jon@example.com", user={"firstName": "Jon"})
        await encharge.track(
            "Registered user", email="jon@example.com", properties={"plan": "Free"}
        )
        with pytest.raises(AssertionError) as failure:
            await encharge.assert_tracked("Registered user", email="ann@example.com")
    assert str(failure.value) == (
        "expected a tracked event 'Registered user' with email='ann@example.com'; 0 matched.\n"
        "Accepted 2 event(s):\n"
        '  1. identify {"user": {"email": "jon@example.com", "firstName": "Jon"}}\n'
        "  2. track 'Registered user' "
        '{"properties": {"plan": "Free"}, "user": {"email": "jon@example.com"}}'
    )


# -- hold() / release() ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_held_requests_wait_in_flight_until_released() -> None:
    async with FakeAsyncEncharge(max_concurrency=1) as encharge:
        encharge.recorder.hold()
        for i in range(3):
            await encharge.track("Held", user_id=i)
        assert await encharge.recorder.wait_for_requests(1) == 1
        assert (encharge.recorder.held, encharge.stats.in_flight) == (1, 1)
        assert (encharge.stats.queued, encharge.recorder.requests) == (2, [])

        encharge.recorder.release(1)  # that one is answered; the next one is held
        await encharge.recorder.wait_for_requests(2)
        assert encharge.recorder.held == 1
        assert [r.user["userId"] for r in encharge.recorder.requests] == [0]

        encharge.recorder.release()  # all of them, and stop holding
        await encharge.track("Not held", user_id=9)
        await encharge.assert_tracked("Held", count=3)
        await encharge.assert_tracked("Not held")
        assert (encharge.recorder.held, encharge.recorder.received) == (0, 4)


@pytest.mark.anyio
async def test_release_n_lets_the_next_requests_through_when_fewer_are_held() -> None:
    async with FakeAsyncEncharge(max_concurrency=1) as encharge:
        encharge.recorder.hold()
        encharge.recorder.release(2)  # credits for the next two requests
        for i in range(3):
            await encharge.track("E", user_id=i)
        await encharge.recorder.wait_for_requests(3)
        assert encharge.recorder.held == 1
        assert len(encharge.recorder.events) == 2
        encharge.recorder.release()


@pytest.mark.anyio
async def test_fail_next_applies_to_released_requests() -> None:
    async with FakeAsyncEncharge(max_retries=0) as encharge:
        encharge.recorder.hold()
        encharge.recorder.fail_next(400)
        await encharge.track("Refused", user_id=1)
        await encharge.recorder.wait_for_requests(1)
        encharge.recorder.release()
        result = await encharge.settle()
    assert (result.failed, encharge.recorder.requests[0].status) == (1, 400)


@pytest.mark.anyio
async def test_held_requests_leave_when_the_client_gives_up() -> None:
    encharge = FakeAsyncEncharge(shutdown_timeout=0.05)
    async with encharge:
        encharge.recorder.hold()
        await encharge.track("Held", user_id=1)
        await encharge.recorder.wait_for_requests(1)
    assert (encharge.stats.dropped, encharge.recorder.held) == (1, 0)


@pytest.mark.anyio
async def test_wait_for_requests_times_out_with_a_clear_message() -> None:
    recorder = EnchargeRecorder()
    recorder.hold()
    with pytest.raises(TimeoutError, match=r"^0 of 1 requests arrived within 0\.01s \(0 held\)$"):
        await recorder.wait_for_requests(1, timeout=0.01)
    with pytest.raises(TimeoutError, match="0 of 2 requests"):
        recorder.wait_for_requests_blocking(2, timeout=0.01)
    with pytest.raises(ValueError, match="at least 1"):
        recorder.release(0)


def test_the_sync_fake_holds_and_releases_across_threads() -> None:
    with FakeEncharge(max_concurrency=1) as encharge:
        encharge.recorder.hold()
        encharge.track("Held", user_id=1)
        encharge.track("Queued", user_id=2)
        assert encharge.recorder.wait_for_requests_blocking(1) == 1
        assert encharge.flush(timeout=0.01).pending == 2
        assert encharge.recorder.held == 1
        encharge.recorder.release()
        encharge.assert_tracked("Queued")
        encharge.assert_tracked("Held")


@pytest.mark.anyio
async def test_clear_keeps_held_requests_held() -> None:
    async with FakeAsyncEncharge() as encharge:
        await encharge.track("Before", user_id=1)
        await encharge.settle()
        encharge.recorder.hold()
        await encharge.track("Held", user_id=2)
        await encharge.recorder.wait_for_requests(2)
        encharge.recorder.clear()
        assert (encharge.recorder.received, encharge.recorder.held) == (1, 1)
        encharge.recorder.release()
        await encharge.assert_tracked("Held")
        await encharge.assert_not_tracked("Before")
