"""The public names are a contract: pin them."""

from __future__ import annotations

import encharge_async


def test_public_names() -> None:
    assert encharge_async.__all__ == [
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
    for name in encharge_async.__all__:
        assert hasattr(encharge_async, name)


def test_public_classes_live_in_the_public_module() -> None:
    assert encharge_async.AsyncEncharge.__module__ == "encharge_async"
    assert encharge_async.Encharge.__module__ == "encharge_async"
    assert encharge_async.DeliveryError.__module__ == "encharge_async"


def test_exception_tree() -> None:
    e = encharge_async
    for cls in (
        e.ConfigurationError,
        e.ValidationError,
        e.ClientClosedError,
        e.EventLoopError,
        e.QueueFullError,
        e.DeliveryError,
    ):
        assert issubclass(cls, e.EnchargeError)
    assert issubclass(e.ValidationError, ValueError)
    assert issubclass(e.ConfigurationError, ValueError)
    assert issubclass(e.ClientClosedError, RuntimeError)
    assert issubclass(e.EventLoopError, RuntimeError)


def test_user_agent_names_library_and_version() -> None:
    assert encharge_async.USER_AGENT.startswith(f"encharge-async/{encharge_async.__version__} ")
