"""Celery: a real worker in a subprocess (kombu's filesystem transport, no broker server).

The worker runs tasks that track events against an emulator that refuses every delivery
(429, retry in 30 s) until the tasks have finished, so that the events wait in the clients'
queues; the test then stops the worker with SIGTERM (a warm shutdown) and checks that
every event arrived: `setup_encharge` closed the client in each process that ran tasks
(prefork children, which end with os._exit() a second after their last task, or the main
process of the threads pool).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from encharge_async import Encharge
from encharge_async.emulator import Emulator

from .test_integrations_servers import ROOT, Server

celery = pytest.importorskip("celery")

KEY = "k-celery"
TASKS = 12
DEADLINE = 15.0

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals"),
]

TASKS_MODULE = """
    import os

    from celery import Celery

    from encharge_async import Encharge
    from encharge_async.integrations.celery import setup_encharge

    app = Celery("tasks", broker="filesystem://")
    folder = os.environ["TEST_BROKER_DIR"]
    app.conf.broker_transport_options = {
        "data_folder_in": folder,
        "data_folder_out": folder,
        "polling_interval": 0.05,
    }
    app.conf.broker_connection_retry_on_startup = True

    options = {"endpoint": os.environ["TEST_EMULATOR_URL"], "shutdown_timeout": 10}
    if os.environ.get("TEST_SETUP", "1") == "1":
        encharge = setup_encharge(app, **options)
    else:  # the control: closed only by atexit, which prefork children skip
        encharge = Encharge(**options)


    @app.task
    def signup(email: str, message_id: str) -> int:
        pid = os.getpid()
        properties = {"pid": pid}
        encharge.track("Registered user", email=email, message_id=message_id, properties=properties)
        return pid
    """


def broker_app(folder: Path) -> Any:
    """A client app on the same filesystem broker, to send the tasks from here."""
    app = celery.Celery("sender", broker="filesystem://")
    app.conf.broker_transport_options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
    }
    return app


async def wait_for_lines(server: Server, text: str, count: int) -> None:
    """Wait until the worker logged `text` `count` times (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while sum(text in line for line in server.output) < count:
        assert loop.time() < deadline, (
            f"only {sum(text in x for x in server.output)}:\n{server.log()}"
        )
        assert server.process.returncode is None, server.log()
        await asyncio.sleep(0.05)


async def wait_for_refusals(emulator: Emulator, server: Server) -> None:
    """Wait until every process that ran tasks had a delivery refused (bounded).

    A 429 pauses that process's deliveries for its Retry-After: from then on its events
    wait in its queue. The tasks return their process id, which the worker logs.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    ran = {
        match[1] for line in server.output if (match := re.search(r"succeeded in \S+: (\d+)", line))
    }
    assert ran, server.log()
    while not ran <= {str(r.body["properties"]["pid"]) for r in emulator.rejected}:
        assert loop.time() < deadline, f"{emulator.fault_counts}:\n{server.log()}"
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
@pytest.mark.slow
@pytest.mark.parametrize("pool", ["prefork", "threads"])
async def test_a_worker_delivers_what_its_tasks_tracked_when_it_stops(
    pool: str, tmp_path: Path
) -> None:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS_MODULE).lstrip(), encoding="utf-8")
    broker = tmp_path / "broker"
    broker.mkdir()
    async with Emulator(write_key=KEY) as emulator:
        emulator.faults.rate_limited_rate = 1.0
        emulator.faults.retry_after = 30
        env = {
            **os.environ,
            "ENCHARGE_WRITE_KEY": KEY,
            "TEST_EMULATOR_URL": emulator.url,
            "TEST_BROKER_DIR": str(broker),
            "PYTHONPATH": os.pathsep.join(
                [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]
            ),
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("ENCHARGE_INGEST_URL", None)
        # Queued before the worker starts: kombu's filesystem transport may read a message
        # file that is still being written.
        sender = broker_app(broker)
        ids = [str(uuid.uuid4()) for _ in range(TASKS)]
        for i, message_id in enumerate(ids):
            sender.send_task("tasks.signup", args=[f"user{i}@example.com", message_id])
        args = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", pool]
        args += ["--concurrency", "2", "--loglevel", "INFO", "--hostname", "w1@localhost"]
        args += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
        process = await asyncio.create_subprocess_exec(
            *args,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        server = Server(process, r"(w1@localhost) ready")
        try:
            await server.started()
            await wait_for_lines(server, "succeeded in", TASKS)
            await wait_for_refusals(emulator, server)
            assert not emulator.events
            emulator.faults.clear()
            code = await server.terminate()  # SIGTERM: Celery's warm shutdown
        finally:
            await server.kill()
        assert code == 0, server.log()
        arrived = {event.idempotency_key for event in emulator.events}
        assert not set(ids) - arrived, f"events lost at shutdown:\n{server.log()}"
        assert len(emulator.events) == TASKS
        assert {record.status for record in emulator.rejected} == {429}  # the injected ones


def test_client_and_options_are_exclusive() -> None:
    from encharge_async.integrations.celery import setup_encharge

    client = Encharge("k-celery", endpoint="http://127.0.0.1:1/v1/")
    app = celery.Celery("t")
    assert setup_encharge(app, client=client) is client
    with pytest.raises(TypeError, match="either client= or"):
        setup_encharge(app, client=client, shutdown_timeout=1)
    client.close()


@pytest.mark.slow
def test_the_signals_close_the_client() -> None:
    from celery.signals import worker_process_shutdown, worker_shutdown

    from encharge_async import ClientClosedError
    from encharge_async.integrations.celery import setup_encharge

    app, other = celery.Celery("mine"), celery.Celery("other")
    child = setup_encharge(app, write_key=KEY, endpoint="http://127.0.0.1:1/v1/")
    worker_process_shutdown.send(sender="w1@localhost", pid=1, exitcode=0)
    with pytest.raises(ClientClosedError):
        child.track("Late", email="jon@example.com")

    class Worker:  # the sender of worker_shutdown: Celery's WorkController
        def __init__(self, app: Any) -> None:
            self.app = app

    main = setup_encharge(
        app, write_key=KEY, endpoint="http://127.0.0.1:1/v1/", shutdown_timeout=0.5
    )
    worker_shutdown.send(sender=Worker(other))  # another app's worker: kept open
    main.track("Kept", email="jon@example.com")
    worker_shutdown.send(sender=Worker(app))
    with pytest.raises(ClientClosedError):
        main.track("Late", email="jon@example.com")
