"""Construction: configuration errors, environment, endpoint safety, repr."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from encharge_async import AsyncEncharge, ConfigurationError

from .conftest import WRITE_KEY


def test_write_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCHARGE_WRITE_KEY", " env-key ")
    monkeypatch.setenv("ENCHARGE_INGEST_URL", "http://127.0.0.1:9999/v1/")
    client = AsyncEncharge()
    assert client.endpoint == "http://127.0.0.1:9999/v1/"
    assert "env-key" not in repr(client)


def test_default_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCHARGE_INGEST_URL", raising=False)
    assert AsyncEncharge(WRITE_KEY).endpoint == "https://ingest.encharge.io/v1/"


@pytest.mark.parametrize("key", [None, "", "   "])
def test_missing_or_empty_write_key(monkeypatch: pytest.MonkeyPatch, key: str | None) -> None:
    monkeypatch.delenv("ENCHARGE_WRITE_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="write key"):
        AsyncEncharge(key)


def test_write_key_with_bad_characters_is_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncEncharge("abc\ndef-secret")
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigurationError, match="must be a string"):
        AsyncEncharge(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://ingest.encharge.io/v1/",
        "http://10.0.0.5/v1/",
        "ftp://ingest.encharge.io/",
        "/v1/",
        "https://user:pass@ingest.encharge.io/v1/",
        "http://[::1",
    ],
)
def test_unsafe_or_invalid_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ConfigurationError, match="endpoint"):
        AsyncEncharge(WRITE_KEY, endpoint=endpoint)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:8000/v1/",
        "http://127.8.9.10/v1",
        "http://localhost:1234/v1/",
        "http://api.localhost/v1/",
        "http://[::1]:8080/v1/",
        "https://ingest.encharge.io/v1",
        httpx.URL("https://example.com/ingest"),
    ],
)
def test_loopback_http_and_https_are_accepted(endpoint: str | httpx.URL) -> None:
    assert AsyncEncharge(WRITE_KEY, endpoint=endpoint).endpoint == str(endpoint)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_queue_size": 0}, "max_queue_size must be a positive int"),
        ({"max_queue_size": -1}, "max_queue_size must be a positive int"),
        ({"max_queue_size": True}, "max_queue_size must be a positive int"),
        ({"max_queue_bytes": 0}, "max_queue_bytes must be a positive int"),
        ({"max_event_bytes": 1.5}, "max_event_bytes must be a positive int"),
        ({"max_concurrency": 0}, "max_concurrency must be a positive int"),
        ({"max_retries": -1}, "max_retries must be an int >= 0"),
        ({"max_retry_time": 0}, "max_retry_time must be finite and > 0"),
        ({"max_retry_time": float("inf")}, "max_retry_time must be finite"),
        ({"timeout": -1}, "timeout must be finite and > 0"),
        ({"timeout": float("nan")}, "timeout must be a number of seconds"),
        ({"timeout": "5"}, "timeout must be a number of seconds"),
        ({"shutdown_timeout": -0.1}, "shutdown_timeout must be finite and >= 0"),
        ({"overflow": "drop"}, "overflow must be one of"),
        ({"transport": object()}, "transport must be an httpx.AsyncBaseTransport"),
        ({"on_error": 3}, "on_error must be callable"),
        ({"max_queue_bytes": 10, "max_event_bytes": 20}, "could never be queued"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AsyncEncharge(WRITE_KEY, **kwargs)


def test_async_hooks_are_refused() -> None:
    async def hook(event: object, reason: object) -> None:
        pass

    with pytest.raises(ConfigurationError, match="on_drop must be a plain function"):
        AsyncEncharge(WRITE_KEY, on_drop=hook)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        AsyncEncharge(WRITE_KEY, max_concurrency=0)


def test_zero_retries_and_zero_shutdown_timeout_are_allowed() -> None:
    AsyncEncharge(WRITE_KEY, max_retries=0, shutdown_timeout=0)


def test_repr_shows_state_not_key() -> None:
    client = AsyncEncharge(WRITE_KEY)
    text = repr(client)
    assert WRITE_KEY not in text
    assert text == (
        "<AsyncEncharge endpoint='https://ingest.encharge.io/v1/' state=unopened "
        "queued=0 in_flight=0>"
    )
