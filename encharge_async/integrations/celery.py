"""Celery: close the sync client when a worker process stops, so its queue is delivered.

```python
from celery import Celery

from encharge_async.integrations.celery import setup_encharge

app = Celery("proj")
encharge = setup_encharge(app)  # an Encharge; takes its keyword arguments


@app.task
def welcome(email: str) -> None:
    encharge.track("Welcomed", email=email)
```

The prefork pool ends its child processes with `os._exit()`, which skips the `atexit`
handler that closes the client elsewhere: without this, what a child queued in its last
moments is lost.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown, worker_shutdown

from .._sync import Encharge

__all__ = ["setup_encharge"]


def setup_encharge(
    app: Celery,
    client: Encharge | None = None,
    *,
    close_timeout: float | None = None,
    **options: Any,
) -> Encharge:
    """Return a client that the worker processes of `app` close when they stop.

    `client` is the client to close (in a Django project, `get_encharge()` from
    `encharge_async.integrations.django`); without it, `Encharge(**options)` is created,
    configured from the environment for what `options` leaves out. Creating it starts
    nothing: each prefork child starts its own background thread on its first event.

    The client is closed, within `close_timeout` (default: its `shutdown_timeout`):

    - in each prefork child, on `worker_process_shutdown` (the worker's warm shutdown,
      or `max_tasks_per_child` recycling the child);
    - in the worker's main process, on `worker_shutdown`: the process where the solo,
      threads, gevent and eventlet pools run their tasks.

    Celery's own time to stop must exceed that bound (a process manager's grace period
    after SIGTERM, say).

    Raises:
        ConfigurationError: from `Encharge(**options)`.
        TypeError: both `client` and `options` given.
    """
    if client is not None and options:
        raise TypeError("pass either client= or the client's options, not both")
    encharge = client if client is not None else Encharge(**options)

    def close_in_child(**kwargs: Any) -> None:
        encharge.close(close_timeout)

    def close_in_worker(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", app) is app:
            encharge.close(close_timeout)

    # weak=False: the receivers are closures that nothing else keeps alive.
    worker_process_shutdown.connect(close_in_child, weak=False)
    worker_shutdown.connect(close_in_worker, weak=False)
    return encharge
