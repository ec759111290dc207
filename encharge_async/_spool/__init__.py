"""A durable, embedded, write-ahead spool of accepted events (SQLite, WAL mode).

It holds events on local disk until Encharge has acknowledged them, so that a crash or a
restart loses nothing that `append` accepted. See docs/spool.md.

```python
spool = await Spool.open("/var/lib/app/encharge-{slot}.spool")
result = await spool.append([SpooledEvent.from_event(event)])  # durable on return
...
await spool.ack([event.message_id])  # delivered, or failed for good
await spool.close()
```

Only bodies, message ids, names, ordering keys, times and attempt counts are stored: never
the write key. Every SQLite call runs in the spool's own thread, never on the event loop.
"""

from ._api import Spool
from ._database import SCHEMA_VERSION
from ._model import (
    AppendResult,
    SpoolClosedError,
    SpoolCorruptError,
    SpooledEvent,
    SpoolError,
    SpoolLimits,
    SpoolLockedError,
    SpoolStats,
)

__all__ = [
    "SCHEMA_VERSION",
    "AppendResult",
    "Spool",
    "SpoolClosedError",
    "SpoolCorruptError",
    "SpoolError",
    "SpoolLimits",
    "SpoolLockedError",
    "SpoolStats",
    "SpooledEvent",
]
