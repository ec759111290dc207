"""before_send=, default_properties= and disabled=, on both clients and the testing fakes."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from encharge_async import (
    AsyncEncharge,
    ClientClosedError,
    ConfigurationError,
    Encharge,
    ValidationError,
)
from encharge_async.testing import EnchargeRecorder, FakeAsyncEncharge

from .conftest import ENDPOINT, WRITE_KEY, ClientFactory, Recorder

pytestmark = pytest.mark.anyio


def redact(event: dict[str, Any]) -> dict[str, Any] | None:
    if event.get("name") == "Internal":
        return None
    properties = event.get("properties")
    if isinstance(properties, dict) and "card" in properties:
        event["properties"] = {**properties, "card": "<redacted>"}
    if event.get("type") != "alias":  # an alias's user holds only the new identifiers
        event["user"]["tags"] = "shaped"
    return event


async def test_before_send_changes_and_filters(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    async with make_client(before_send=redact) as client:
        await client.track("Paid", user_id="1", properties={"card": "4242", "plan": "pro"})
        filtered_id = await client.track("Internal", user_id="1")
        await client.identify(email="jon@example.com")
        await client.alias(previous_user_id="1", user_id="2")
        await client.group("company", {"externalId": "acme"}, user_id="2")
        result = await client.flush(timeout=5)
    assert isinstance(filtered_id, str)
    assert recorder.names() == ["Paid", "identify", "alias", "group"]
    paid = recorder.bodies[0]
    assert paid["properties"] == {"card": "<redacted>", "plan": "pro"}
    assert [body["user"].get("tags") for body in recorder.bodies] == [
        "shaped",
        "shaped",
        None,
        "shaped",
    ]
    assert result.delivered == 4
    stats = client.stats
    # A filtered event is counted on its own, not as enqueued or dropped.
    assert (stats.enqueued, stats.filtered, stats.dropped) == (4, 1, 0)


async def test_before_send_result_is_validated(make_client: ClientFactory) -> None:
    def drop_identifiers(event: dict[str, Any]) -> dict[str, Any]:
        return {"name": event["name"], "user": {"firstName": "Jon"}}

    async with make_client(before_send=drop_identifiers) as client:
        hook_said = "the event before_send returned cannot be sent: .*needs an email or a user_id"
        with pytest.raises(ValidationError, match=hook_said):
            await client.track("E", user_id="1")
        with pytest.raises(ValidationError, match=hook_said):
            client.track_nowait("E", user_id="1")
    assert client.stats.enqueued == 0


@pytest.mark.slow
async def test_before_send_errors_reach_the_caller_chained(make_client: ClientFactory) -> None:
    def broken(event: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("oops")

    def unknown_field(event: dict[str, Any]) -> dict[str, Any]:
        return {**event, "timestamp": "2020-01-01T00:00:00Z"}

    def not_a_dict(event: dict[str, Any]) -> Any:
        return ["no"]

    async with make_client(before_send=broken) as client:
        with pytest.raises(ValidationError, match="before_send raised KeyError") as info:
            await client.track("E", user_id="1")
        assert isinstance(info.value.__cause__, KeyError)
    async with make_client(before_send=unknown_field) as client:
        with pytest.raises(ValidationError, match=r"unknown top-level field.*timestamp"):
            await client.track("E", user_id="1")

    def alias_with_fields(event: dict[str, Any]) -> dict[str, Any]:
        event["user"]["plan"] = "pro"
        return event

    async with make_client(before_send=alias_with_fields) as client:
        with pytest.raises(ValidationError, match="takes only email and userId"):
            await client.alias(previous_user_id="1", user_id="2")
    async with make_client(before_send=not_a_dict) as client:
        with pytest.raises(ValidationError, match="must return the event's dict or None"):
            await client.identify(user_id="1")


async def test_before_send_with_wait_returns_for_filtered_events(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    async with make_client(before_send=lambda event: None, overflow="block") as client:
        message_id = await client.track("E", user_id="1", wait=True, timeout=1)
    assert message_id
    assert recorder.requests == []
    assert client.stats.filtered == 1


def test_before_send_must_be_a_plain_function() -> None:
    async def hook(event: dict[str, Any]) -> dict[str, Any]:
        return event

    with pytest.raises(ConfigurationError, match="before_send must be a plain function"):
        AsyncEncharge(WRITE_KEY, before_send=hook)  # type: ignore[arg-type]


async def test_default_properties_merge_under_the_calls_own(
    make_client: ClientFactory, recorder: Recorder
) -> None:
    defaults = {"app": "web", "release": "1.2"}
    async with make_client(default_properties=defaults) as client:
        defaults["app"] = "changed after construction"  # copied at construction
        await client.track("A", user_id="1")
        await client.track("B", user_id="1", properties={"release": "1.3", "n": 1})
        await client.identify(user_id="1")  # only track events have properties
    assert [body.get("properties") for body in recorder.bodies] == [
        {"app": "web", "release": "1.2"},
        {"app": "web", "release": "1.3", "n": 1},
        None,
    ]


def test_default_properties_are_validated_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="default_properties"):
        AsyncEncharge(WRITE_KEY, default_properties={"bad": float("nan")})
    with pytest.raises(ConfigurationError, match="default_properties must be a dict"):
        AsyncEncharge(WRITE_KEY, default_properties=["x"])  # type: ignore[arg-type]


async def test_disabled_validates_and_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCHARGE_WRITE_KEY", raising=False)
    recorder = Recorder()
    # No write key, and an endpoint nothing listens on: a disabled client needs neither.
    async with AsyncEncharge(
        endpoint="http://127.0.0.1:9/", disabled=True, transport=httpx.MockTransport(recorder)
    ) as client:
        assert await client.track("E", user_id="1")
        assert client.track_nowait("E", user_id="1")
        assert await client.identify(email="jon@example.com", wait=True)
        with pytest.raises(ValidationError):
            await client.track("", user_id="1")
        with pytest.raises(ValidationError):
            client.track_nowait("E")
        assert (await client.flush()).complete
    assert (await client.aclose()).complete
    assert recorder.requests == []
    assert client.stats.enqueued == 0
    with pytest.raises(ClientClosedError):
        client.track_nowait("E", user_id="1")


@pytest.mark.parametrize(("value", "off"), [("1", True), ("true", True), ("0", False), ("", False)])
def test_disabled_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, off: bool
) -> None:
    monkeypatch.setenv("ENCHARGE_DISABLED", value)
    monkeypatch.setenv("ENCHARGE_WRITE_KEY", WRITE_KEY)
    client = AsyncEncharge()
    assert client._config.disabled is off
    # An explicit argument wins over the environment.
    assert AsyncEncharge(disabled=not off)._config.disabled is (not off)


def test_a_bad_disabled_environment_value_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENCHARGE_DISABLED", "maybe")
    with pytest.raises(ConfigurationError, match="ENCHARGE_DISABLED"):
        AsyncEncharge(WRITE_KEY)


def test_the_sync_client_disabled_starts_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCHARGE_WRITE_KEY", raising=False)
    threads = threading.active_count()
    with Encharge(disabled=True) as client:
        assert client.track("E", user_id="1")
        assert client.track("E", user_id="1", wait=True)
        with pytest.raises(ValidationError):
            client.identify()
        assert client.flush().complete
        assert threading.active_count() == threads
    with pytest.raises(ClientClosedError):
        client.track("E", user_id="1")


def test_the_sync_client_shapes_events() -> None:
    recorder = EnchargeRecorder()
    with Encharge(
        WRITE_KEY,
        endpoint=ENDPOINT,
        transport=recorder,
        before_send=redact,
        default_properties={"app": "worker"},
    ) as client:
        client.track("Paid", user_id="1", properties={"card": "4242"})
        client.track("Internal", user_id="1")
        client.flush(timeout=5)
        assert client.stats.filtered == 1
    bodies = [json.loads(r.content) for r in recorder.requests]
    assert [b["properties"] for b in bodies] == [{"app": "worker", "card": "<redacted>"}]


async def test_the_fakes_apply_the_same_options() -> None:
    async with FakeAsyncEncharge(before_send=redact, default_properties={"app": "web"}) as encharge:
        await encharge.track("Paid", user_id="1", properties={"card": "4242"})
        await encharge.track("Internal", user_id="1")
        await encharge.assert_tracked("Paid", properties={"app": "web", "card": "<redacted>"})
        await encharge.assert_not_tracked("Internal")


@pytest.mark.slow
async def test_a_filtered_event_still_checks_the_callers_message_id(
    make_client: ClientFactory,
) -> None:
    async with make_client(before_send=lambda event: None) as client:
        for bad in (123, "has space", ""):
            with pytest.raises(ValidationError, match="message_id must be"):
                await client.track("E", user_id="1", message_id=bad)  # type: ignore[arg-type]
        assert await client.track("E", user_id="1", message_id="mine-1") == "mine-1"
    assert client.stats.filtered == 1
