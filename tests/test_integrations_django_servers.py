"""A Django project under real servers, in subprocesses, against an emulator.

The test writes a minimal project (settings, urls, views, wsgi, asgi) into its temporary
directory and serves it with gunicorn (WSGI, `--preload`, 2 workers) or uvicorn (Django's
ASGI handler), sends it requests, stops it with SIGTERM and checks that every event its
views tracked reached the emulator: the process-wide client delivers what is in flight
when the server stops (at exit under gunicorn, in the lifespan under uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from encharge_async.emulator import Emulator

from .test_integrations_servers import ROOT, Server

pytest.importorskip("django")

KEY = "k-django"
LATENCY = 0.3  # seconds the emulator takes per event: events are in flight at SIGTERM

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals"),
]

PROJECT = {
    "djproj/__init__.py": "",
    "djproj/settings.py": """
        import os

        SECRET_KEY = "test-only-not-secret"
        DEBUG = False
        ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
        ROOT_URLCONF = "djproj.urls"
        INSTALLED_APPS = ["encharge_async.integrations.django"]
        MIDDLEWARE = []
        USE_TZ = True
        # The write key comes from ENCHARGE_WRITE_KEY; the rest from here.
        ENCHARGE = {
            "endpoint": os.environ["TEST_EMULATOR_URL"],
            "shutdown_timeout": 10,
            "atexit_timeout": float(os.environ.get("TEST_ATEXIT_TIMEOUT", "10")),
        }
        """,
    "djproj/urls.py": """
        from django.urls import path

        from . import views

        urlpatterns = [
            path("signup", views.signup),
            path("asignup", views.asignup),
        ]
        """,
    "djproj/views.py": """
        import os
        import time

        from django.http import HttpRequest, JsonResponse

        from encharge_async.integrations.django import get_encharge


        def signup(request: HttpRequest) -> JsonResponse:
            email = request.GET["email"]
            message_id = get_encharge().track("Registered user", email=email)
            return JsonResponse({"message_id": message_id, "pid": os.getpid()})


        async def asignup(request: HttpRequest) -> JsonResponse:
            started = time.perf_counter()
            email = request.GET["email"]
            message_id = get_encharge().track("Registered user", email=email)
            seconds = time.perf_counter() - started  # reported, not asserted
            return JsonResponse({"message_id": message_id, "seconds": seconds})
        """,
    "djproj/wsgi.py": """
        import os

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")

        from django.core.wsgi import get_wsgi_application

        from encharge_async.integrations.django import get_encharge

        application = get_wsgi_application()
        # Under --preload this runs in the master, whose client then has a thread and a
        # connection: the forked workers must start clean, without sending it again.
        # (wait=True: a fork while the client is still starting may deadlock the child.)
        get_encharge().track("Server started", user_id="server", wait=True, timeout=10)
        """,
    "djproj/asgi.py": """
        import os

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")

        from django.core.asgi import get_asgi_application

        from encharge_async.integrations.django import encharge_asgi

        application = get_asgi_application()
        if os.environ.get("TEST_LIFESPAN", "1") == "1":
            application = encharge_asgi(application)
        """,
}


def write_project(directory: Path) -> None:
    for name, text in PROJECT.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")


@contextlib.asynccontextmanager
async def serve(
    args: list[str], emulator: Emulator, url_pattern: str, tmp_path: Path
) -> AsyncIterator[Server]:
    """Serve the project in `tmp_path`; kill the server (and its workers) on the way out."""
    write_project(tmp_path)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "djproj.settings",
        "ENCHARGE_WRITE_KEY": KEY,
        "TEST_EMULATOR_URL": emulator.url,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "XDG_RUNTIME_DIR": str(tmp_path),  # where gunicorn puts its control socket
    }
    env.pop("ENCHARGE_INGEST_URL", None)  # the settings give the endpoint
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group: kill() reaches the workers too
    )
    server = Server(process, url_pattern)
    try:
        await server.started()
        yield server
    finally:
        await server.kill()


async def post_all(base_url: str, paths: list[str]) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        responses = await asyncio.gather(*(http.post(path) for path in paths))
    for response in responses:
        assert response.status_code == 200, response.text
    return [response.json() for response in responses]


async def wait_for_refusals(emulator: Emulator, count: int) -> None:
    """Wait until the emulator refused `count` deliveries (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while emulator.fault_counts.get("rate_limited", 0) < count:
        assert loop.time() < deadline, emulator.fault_counts
        await asyncio.sleep(0.05)


def missing(emulator: Emulator, ids: list[str]) -> set[str]:
    return set(ids) - {event.idempotency_key for event in emulator.events}


async def test_django_under_gunicorn_preload_with_two_workers(tmp_path: Path) -> None:
    async with Emulator(write_key=KEY, latency=LATENCY) as emulator:
        args = [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2"]
        args += ["--bind", "127.0.0.1:0", "--graceful-timeout", "20", "djproj.wsgi"]
        async with serve(args, emulator, r"Listening at: (http://\S+)", tmp_path) as server:
            answers = await post_all(
                server.url, [f"/signup?email=user{i}@example.com" for i in range(20)]
            )
            assert await server.terminate() == 0, server.log()
        ids = [str(answer["message_id"]) for answer in answers]
        assert not missing(emulator, ids), f"events lost at shutdown:\n{server.log()}"
        assert not emulator.rejected
        names = sorted(str(event.name) for event in emulator.events)
        # The master's event once: the workers did not inherit its queue.
        assert names == ["Registered user"] * 20 + ["Server started"], server.log()
        booted = [line for line in server.output if "Booting worker" in line]
        assert len(booted) == 2, server.log()


async def test_django_asgi_under_uvicorn(tmp_path: Path) -> None:
    async with Emulator(write_key=KEY) as emulator:
        # Every delivery is refused (429, retry in 30 s) while the views run: that they
        # answer shows that track() hands the event over and never waits for Encharge;
        # and only the close at shutdown (cutting the wait short) can deliver them.
        emulator.faults.rate_limited_rate = 1.0
        emulator.faults.retry_after = 30
        args = [sys.executable, "-m", "uvicorn", "djproj.asgi:application"]
        args += ["--host", "127.0.0.1", "--port", "0"]
        async with serve(args, emulator, r"Uvicorn running on (http://\S+)", tmp_path) as server:
            async_answers = await post_all(
                server.url, [f"/asignup?email=a{i}@example.com" for i in range(15)]
            )
            sync_answers = await post_all(
                server.url, [f"/signup?email=s{i}@example.com" for i in range(15)]
            )
            # One refusal is enough: a 429 pauses the client's deliveries for 30 s.
            await wait_for_refusals(emulator, 1)
            assert not emulator.events  # nothing could be delivered yet
            emulator.faults.clear()
            # uvicorn re-raises the signal once it has shut down gracefully.
            assert await server.terminate() in (0, -signal.SIGTERM), server.log()
        ids = [str(answer["message_id"]) for answer in async_answers + sync_answers]
        assert not missing(emulator, ids), f"events lost at shutdown:\n{server.log()}"
        assert len(emulator.events) == 30
        assert "Application shutdown complete" in server.log()
        seconds = sorted(float(str(answer["seconds"])) for answer in async_answers)
        # Reported with -s, not asserted: the first call starts the client's thread.
        print(
            f"track() in an async view: median {seconds[7] * 1e6:.0f} us, first-ever call "
            f"(starts the thread) up to {seconds[-1] * 1e3:.1f} ms"
        )
