"""encharge_async: an asyncio client for the Encharge Ingest API.

```python
async with AsyncEncharge(write_key="...") as encharge:
    await encharge.track("Registered user", email="jon@example.com")
```
"""

from ._client import AsyncEncharge
from ._events import Event
from ._exceptions import (
    ClientClosedError,
    ConfigurationError,
    DeliveryError,
    EnchargeError,
    EventLoopError,
    QueueFullError,
    ValidationError,
)
from ._sender import USER_AGENT
from ._spool import SpoolError, SpoolLockedError
from ._stats import ErrorInfo, FlushResult, Stats
from ._sync import Encharge
from ._types import DropReason, OnDelivered, OnDrop, OnError, Overflow, RetryWait, SpoolMode
from ._version import __version__

__all__ = [
    "USER_AGENT",
    "AsyncEncharge",
    "ClientClosedError",
    "ConfigurationError",
    "DeliveryError",
    "DropReason",
    "Encharge",
    "EnchargeError",
    "ErrorInfo",
    "Event",
    "EventLoopError",
    "FlushResult",
    "OnDelivered",
    "OnDrop",
    "OnError",
    "Overflow",
    "QueueFullError",
    "RetryWait",
    "SpoolError",
    "SpoolLockedError",
    "SpoolMode",
    "Stats",
    "ValidationError",
    "__version__",
]

# Objects show up as encharge_async.X in reprs, tracebacks and docs, as httpx does it.
for _name in __all__:
    if not _name.startswith("__") and _name != "USER_AGENT":
        _obj = globals()[_name]
        if getattr(_obj, "__module__", "").startswith("encharge_async."):
            _obj.__module__ = __name__
del _name, _obj
# No NullHandler: with no logging configured (a script, uvicorn, which configures only its
# own loggers), the library's warnings and errors reach stderr through Python's last-resort
# handler. Configure the "encharge_async" logger to route or silence them.
