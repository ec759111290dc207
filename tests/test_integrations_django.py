"""The Django integration in this process: settings, the shared client, checks, ASGI.

Its real servers (gunicorn, uvicorn) are in test_integrations_django_servers.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import tenacity

pytest.importorskip("django")

from django.conf import settings

if not settings.configured:
    settings.configure(
        INSTALLED_APPS=["encharge_async.integrations.django"],
        ENCHARGE={},
        USE_TZ=True,
    )
    import django

    django.setup()

from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from encharge_async import ConfigurationError, Encharge, FlushResult
from encharge_async.integrations.django import (
    close_encharge,
    encharge_asgi,
    encharge_options,
    get_encharge,
)
from encharge_async.integrations.django.apps import _EnchargeConfig, check_settings
from encharge_async.testing import EnchargeRecorder

from .conftest import ENDPOINT, WRITE_KEY


@pytest.fixture
def recorder() -> EnchargeRecorder:
    return EnchargeRecorder()


@pytest.fixture
def configured(recorder: EnchargeRecorder) -> Iterator[EnchargeRecorder]:
    """settings.ENCHARGE pointing at `recorder`; the shared client closed afterwards."""
    options = {
        "write_key": WRITE_KEY,
        "endpoint": ENDPOINT,
        "transport": recorder,
        "retry_wait": tenacity.wait_none(),
        "shutdown_timeout": 5,
    }
    with override_settings(ENCHARGE=options):
        yield recorder
        close_encharge(timeout=1)


def test_the_installed_app_is_found_by_its_module_name() -> None:
    from django.apps import apps

    config = apps.get_app_config("encharge_async")
    assert isinstance(config, _EnchargeConfig)


def test_settings_are_the_client_options(configured: EnchargeRecorder) -> None:
    client = get_encharge()
    assert client.endpoint == ENDPOINT
    message_id = client.track("Registered user", email="jon@example.com")
    assert close_encharge().pending == 0
    assert [event.message_id for event in configured.events] == [message_id]


def test_one_client_per_process_however_many_threads_ask(configured: EnchargeRecorder) -> None:
    barrier = threading.Barrier(8)
    seen: list[Encharge] = []

    def ask() -> None:
        barrier.wait(5)
        seen.append(get_encharge())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(seen) == 8
    assert len({id(client) for client in seen}) == 1


def test_close_then_get_makes_a_new_client(configured: EnchargeRecorder) -> None:
    first = get_encharge()
    first.track("Registered user", email="jon@example.com")
    close_encharge()
    assert close_encharge() == FlushResult()  # nothing open any more
    second = get_encharge()
    assert second is not first
    second.track("Paid", email="jon@example.com")
    close_encharge()
    assert [event.body["name"] for event in configured.events] == ["Registered user", "Paid"]


def test_changing_the_setting_replaces_the_client(configured: EnchargeRecorder) -> None:
    first = get_encharge()
    first.track("Registered user", email="jon@example.com")
    with override_settings(ENCHARGE={**settings.ENCHARGE, "shutdown_timeout": 3}):
        second = get_encharge()
        assert second is not first
    assert len(configured.events) == 1  # the replaced client delivered before closing


def test_without_the_setting_the_environment_configures_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENCHARGE_WRITE_KEY", WRITE_KEY)
    monkeypatch.setenv("ENCHARGE_INGEST_URL", ENDPOINT)
    with override_settings():
        del settings.ENCHARGE
        assert encharge_options() == {}
        try:
            assert get_encharge().endpoint == ENDPOINT
        finally:
            close_encharge()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("wk_secret", "must be a dict of Encharge's keyword arguments, not a str"),
        ({"write_key": WRITE_KEY, "batch_size": 10}, "unexpected keyword argument 'batch_size'"),
    ],
)
def test_a_malformed_setting_is_improperly_configured(value: Any, message: str) -> None:
    with override_settings(ENCHARGE=value):
        with pytest.raises(ImproperlyConfigured, match=message) as raised:
            get_encharge()
        assert WRITE_KEY not in str(raised.value)
        [error] = check_settings()
        assert error.id == "encharge_async.E001"


def test_the_check_reports_what_the_client_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCHARGE_WRITE_KEY", raising=False)
    with override_settings(ENCHARGE={"shutdown_timeout": 5}):
        [error] = check_settings()
        assert error.id == "encharge_async.E002"
        assert "write key" in error.msg
        with pytest.raises(ConfigurationError):
            get_encharge()
    with override_settings(ENCHARGE={"write_key": WRITE_KEY, "max_queue_size": 0}):
        [error] = check_settings()
        assert error.id == "encharge_async.E002"
    with override_settings(ENCHARGE={"write_key": WRITE_KEY}):
        assert check_settings() == []


def test_shaping_options_pass_through() -> None:
    # encharge_options() binds against Encharge's signature: every client option works.
    options = {
        "write_key": WRITE_KEY,
        "disabled": True,
        "default_properties": {"app": "django"},
        "before_send": None,
    }
    with override_settings(ENCHARGE=options):
        assert encharge_options() == options


@pytest.mark.asyncio
async def test_the_asgi_wrapper_closes_the_client_at_lifespan_shutdown(
    configured: EnchargeRecorder,
) -> None:
    http_scopes: list[str] = []

    async def django_app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"  # Django refuses lifespan: the wrapper answers it
        http_scopes.append(scope["path"])
        get_encharge().track("Registered user", email="jon@example.com")

    app = encharge_asgi(django_app)
    await app({"type": "http", "path": "/signup"}, _never, _never)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    task: asyncio.Future[None] = asyncio.ensure_future(
        app({"type": "lifespan"}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    assert (await asyncio.wait_for(outbox.get(), 5))["type"] == "lifespan.startup.complete"
    await inbox.put({"type": "lifespan.shutdown"})
    assert (await asyncio.wait_for(outbox.get(), 10))["type"] == "lifespan.shutdown.complete"
    await asyncio.wait_for(task, 5)
    assert http_scopes == ["/signup"]
    assert len(configured.events) == 1  # delivered by the close


async def _never(*args: Any) -> Any:
    raise AssertionError("not called")  # pragma: no cover
