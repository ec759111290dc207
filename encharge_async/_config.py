"""Checks of the client's configuration, each failing with a ConfigurationError that names it."""

from __future__ import annotations

import inspect
import ipaddress
import math
import os
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from ._constants import DEFAULT_ENDPOINT, ENDPOINT_ENV, WRITE_KEY_ENV
from ._exceptions import ConfigurationError

__all__ = [
    "check_hook",
    "check_non_negative_int",
    "check_overflow",
    "check_positive_int",
    "check_seconds",
    "check_spool",
    "check_spool_mode",
    "resolve_endpoint",
    "resolve_write_key",
]

_OVERFLOW_POLICIES = ("drop_newest", "drop_oldest", "block")
_H = TypeVar("_H", bound=Callable[..., object])


def resolve_write_key(write_key: str | None) -> str:
    """The write key from the argument, else from ENCHARGE_WRITE_KEY."""
    if write_key is None:
        write_key = os.environ.get(WRITE_KEY_ENV)
    if write_key is None:
        raise ConfigurationError(
            f"no write key: pass write_key=... or set {WRITE_KEY_ENV} (the Encharge write key, "
            "from Settings > Ingest API; not the REST API key)"
        )
    if not isinstance(write_key, str):
        raise ConfigurationError(f"write_key must be a string, got {type(write_key).__name__}")
    write_key = write_key.strip()
    if not write_key:
        raise ConfigurationError(f"the write key is empty (check write_key= or {WRITE_KEY_ENV})")
    if not write_key.isascii() or not write_key.isprintable() or " " in write_key:
        # Never echo the key itself, not even a bad one.
        raise ConfigurationError("the write key contains spaces or non-printable characters")
    return write_key


def resolve_endpoint(endpoint: str | httpx.URL | None) -> httpx.URL:
    """The endpoint from the argument, else ENCHARGE_INGEST_URL, else the public one.

    Plain http:// is refused unless the host is a loopback address: the write key must
    never travel in clear text.
    """
    if endpoint is None:
        endpoint = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    try:
        url = httpx.URL(endpoint)
    except (TypeError, httpx.InvalidURL) as exc:
        raise ConfigurationError(f"endpoint {str(endpoint)!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigurationError(
            f"endpoint {str(endpoint)!r} must be an absolute http(s) URL such as {DEFAULT_ENDPOINT}"
        )
    if url.userinfo:
        raise ConfigurationError("endpoint must not contain a user name or password")
    if url.scheme == "http" and not _is_loopback(url.host):
        raise ConfigurationError(
            f"endpoint {str(url)!r} uses plain http:// to a non-loopback host; the write key "
            "would travel in clear text. Use https://"
        )
    return url


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
    return value


def check_non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be an int >= 0, got {value!r}")
    return value


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be finite and {bound}, got {value!r}")
    return float(value)


def check_overflow(value: object) -> str:
    if value not in _OVERFLOW_POLICIES:
        raise ConfigurationError(f"overflow must be one of {_OVERFLOW_POLICIES}, got {value!r}")
    return str(value)


def check_spool(spool: object) -> Any:
    """A path (str or PathLike) or an open `Spool`, or None."""
    from ._spool import Spool

    if spool is None or isinstance(spool, (str, os.PathLike, Spool)):
        if isinstance(spool, str) and not spool.strip():
            raise ConfigurationError("spool must be a file path, got an empty string")
        return spool
    raise ConfigurationError(
        f"spool must be a file path or an encharge_async Spool, got {type(spool).__name__}"
    )


def check_spool_mode(mode: object) -> str:
    if mode not in ("overflow", "always"):
        raise ConfigurationError(f"spool_mode must be 'overflow' or 'always', got {mode!r}")
    return str(mode)


def check_hook(name: str, hook: _H | None) -> _H | None:
    if hook is None:
        return None
    if not callable(hook):
        raise ConfigurationError(f"{name} must be callable, got {type(hook).__name__}")
    if inspect.iscoroutinefunction(hook):
        raise ConfigurationError(
            f"{name} must be a plain function: hooks run inside the delivery worker and must not"
            " await; start a task from it if you need to"
        )
    return hook
