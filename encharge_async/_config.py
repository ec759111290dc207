"""The client's configuration: `Config`, every option validated once, and the checks it uses.

Each check fails with a ConfigurationError that names the option. `AsyncEncharge`, the sync
`Encharge` and the testing fakes all build one `Config` and share it.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import math
import os
import ssl
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ._constants import (
    DEFAULT_ENDPOINT,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_TIME,
    DEFAULT_OVERFLOW,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_SPOOL_AFTER,
    DEFAULT_SPOOL_MAX_AGE,
    DEFAULT_SPOOL_MAX_BYTES,
    DEFAULT_SPOOL_MODE,
    DEFAULT_TIMEOUT,
    DISABLED_ENV,
    ENDPOINT_ENV,
    WRITE_KEY_ENV,
)
from ._exceptions import ConfigurationError
from ._types import BeforeSend, OnDelivered, OnDrop, OnError, Overflow, RetryWait, SpoolMode

if TYPE_CHECKING:
    from ._spool import Spool

__all__ = [
    "Config",
    "check_bool",
    "check_default_properties",
    "check_hook",
    "check_non_negative_int",
    "check_overflow",
    "check_positive_int",
    "check_proxy",
    "check_seconds",
    "check_spool",
    "check_spool_mode",
    "check_verify",
    "resolve_disabled",
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
    if not isinstance(endpoint, (str, httpx.URL)):
        raise ConfigurationError(f"endpoint must be a URL string, got {type(endpoint).__name__}")
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL as exc:
        # httpx's message does not repeat the URL, which may hold a password.
        raise ConfigurationError(f"endpoint is not a valid URL: {exc}") from None
    if url.userinfo:
        raise ConfigurationError("endpoint must not contain a user name or password")
    if url.scheme not in ("http", "https") or not url.host:
        # Not shown: without an authority (mailto:user:password@host), userinfo is not split
        # off, and the whole text may be a secret.
        raise ConfigurationError(
            f"endpoint must be an absolute http(s) URL such as {DEFAULT_ENDPOINT}"
        )
    shown = repr(str(url))[:200]
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigurationError(f"endpoint {shown} has a port outside 1-65535")
    if url.scheme == "http" and not _is_loopback(url.host):
        raise ConfigurationError(
            f"endpoint {shown} uses plain http:// to a non-loopback host; the write key "
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


def resolve_disabled(disabled: object) -> bool:
    """`disabled=` when given (a bool), else ENCHARGE_DISABLED from the environment."""
    if disabled is None:
        text = os.environ.get(DISABLED_ENV, "").strip().lower()
        if text in ("", "0", "false", "no", "off"):
            return False
        if text in ("1", "true", "yes", "on"):
            return True
        raise ConfigurationError(
            f"{DISABLED_ENV} must be 1/true/yes/on or 0/false/no/off, got {text[:20]!r}"
        )
    if not isinstance(disabled, bool):
        raise ConfigurationError(f"disabled must be True or False, got {type(disabled).__name__}")
    return disabled


def check_default_properties(value: object) -> Mapping[str, Any] | None:
    """A dict of JSON values merged into every track event's properties (copied here)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ConfigurationError("default_properties must be a dict with string keys")
    from . import _json
    from ._exceptions import ValidationError

    try:
        _json.dumps({"properties": value})
    except ValidationError as exc:
        raise ConfigurationError(f"default_properties: {exc}") from None
    return dict(value)


def check_verify(verify: object) -> bool | str | os.PathLike[str] | ssl.SSLContext:
    """`verify=`: True (the CA bundle), False (no verification), a CA bundle path, a context."""
    if isinstance(verify, (bool, str, os.PathLike, ssl.SSLContext)):
        return verify
    raise ConfigurationError(
        "verify must be True, False, a CA bundle path or an ssl.SSLContext, "
        f"got {type(verify).__name__}"
    )


def check_proxy(proxy: object) -> httpx.URL | None:
    """`proxy=`: an http:// proxy URL (its credentials, if any, never shown)."""
    if proxy is None:
        return None
    try:
        url = httpx.URL(proxy)  # type: ignore[arg-type]
    except (TypeError, httpx.InvalidURL):
        raise ConfigurationError("proxy must be a URL such as http://proxy.example:3128") from None
    if url.scheme not in ("http", "https", "socks5", "socks5h") or not url.host:
        raise ConfigurationError(
            f"proxy must be an http://, https:// or socks5:// URL, got scheme {url.scheme[:20]!r}"
        )
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigurationError("proxy has a port outside 1-65535")
    return url


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {type(value).__name__}")
    return value


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


def check_overflow(value: object) -> Overflow:
    if value == "drop_newest" or value == "drop_oldest" or value == "block":
        return value
    raise ConfigurationError(f"overflow must be one of {_OVERFLOW_POLICIES}, got {value!r}")


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


def check_spool_mode(mode: object) -> SpoolMode:
    if mode == "overflow" or mode == "always":
        return mode
    raise ConfigurationError(f"spool_mode must be 'overflow' or 'always', got {mode!r}")


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


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """Every option of a client, validated. Build it with `Config.create`.

    `retry_wait` is None for the default backoff; `spool` is None without a spool.
    """

    write_key: str = dataclasses.field(repr=False)
    url: httpx.URL
    max_queue_size: int
    max_queue_bytes: int
    max_event_bytes: int
    overflow: Overflow
    max_concurrency: int
    max_retries: int
    max_retry_time: float
    timeout: float
    shutdown_timeout: float
    transport: httpx.AsyncBaseTransport | None
    on_error: OnError | None
    on_drop: OnDrop | None
    on_delivered: OnDelivered | None
    retry_wait: RetryWait | None
    spool: str | os.PathLike[str] | Spool | None
    spool_mode: SpoolMode
    spool_after: float
    spool_max_bytes: int
    spool_max_age: float
    before_send: BeforeSend | None
    default_properties: Mapping[str, Any] | None
    disabled: bool
    verify: bool | str | os.PathLike[str] | ssl.SSLContext
    proxy: httpx.URL | None = dataclasses.field(repr=False)
    trust_env: bool

    @classmethod
    def create(
        cls,
        write_key: str | None = None,
        *,
        endpoint: str | httpx.URL | None = None,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        overflow: Overflow = DEFAULT_OVERFLOW,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_time: float = DEFAULT_MAX_RETRY_TIME,
        timeout: float = DEFAULT_TIMEOUT,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        on_error: OnError | None = None,
        on_drop: OnDrop | None = None,
        on_delivered: OnDelivered | None = None,
        retry_wait: RetryWait | None = None,
        spool: str | os.PathLike[str] | Spool | None = None,
        spool_mode: SpoolMode = DEFAULT_SPOOL_MODE,
        spool_after: float = DEFAULT_SPOOL_AFTER,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        spool_max_age: float = DEFAULT_SPOOL_MAX_AGE,
        before_send: BeforeSend | None = None,
        default_properties: Mapping[str, Any] | None = None,
        disabled: bool | None = None,
        verify: bool | str | os.PathLike[str] | ssl.SSLContext = True,
        proxy: str | httpx.URL | None = None,
        trust_env: bool = True,
    ) -> Config:
        """Validate every option (the client constructors' keywords) into a `Config`.

        Raises:
            ConfigurationError: naming the first option that is wrong.
        """
        queue_bytes = check_positive_int("max_queue_bytes", max_queue_bytes)
        event_bytes = check_positive_int("max_event_bytes", max_event_bytes)
        if event_bytes > queue_bytes:
            raise ConfigurationError(
                f"max_event_bytes={event_bytes} is larger than max_queue_bytes="
                f"{queue_bytes}: such an event could never be queued"
            )
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise ConfigurationError(
                f"transport must be an httpx.AsyncBaseTransport, got {type(transport).__name__}"
            )
        if retry_wait is not None and not callable(retry_wait):
            raise ConfigurationError(
                f"retry_wait must be callable, got {type(retry_wait).__name__}"
            )
        off = resolve_disabled(disabled)
        return cls(
            # Switched off, a client needs no key (it never sends); one given is still checked.
            write_key="" if off and write_key is None else resolve_write_key(write_key),
            url=resolve_endpoint(endpoint),
            max_queue_size=check_positive_int("max_queue_size", max_queue_size),
            max_queue_bytes=queue_bytes,
            max_event_bytes=event_bytes,
            overflow=check_overflow(overflow),
            max_concurrency=check_positive_int("max_concurrency", max_concurrency),
            max_retries=check_non_negative_int("max_retries", max_retries),
            max_retry_time=check_seconds("max_retry_time", max_retry_time),
            timeout=check_seconds("timeout", timeout),
            shutdown_timeout=check_seconds("shutdown_timeout", shutdown_timeout, allow_zero=True),
            transport=transport,
            on_error=check_hook("on_error", on_error),
            on_drop=check_hook("on_drop", on_drop),
            on_delivered=check_hook("on_delivered", on_delivered),
            retry_wait=retry_wait,
            spool=check_spool(spool),
            spool_mode=check_spool_mode(spool_mode),
            spool_after=check_seconds("spool_after", spool_after),
            spool_max_bytes=check_positive_int("spool_max_bytes", spool_max_bytes),
            spool_max_age=check_seconds("spool_max_age", spool_max_age),
            before_send=check_hook("before_send", before_send),
            default_properties=check_default_properties(default_properties),
            disabled=off,
            verify=check_verify(verify),
            proxy=check_proxy(proxy),
            trust_env=check_bool("trust_env", trust_env),
        )

    @property
    def spool_always(self) -> bool:
        """Whether every event is written to the spool before `await track()` returns."""
        return self.spool is not None and self.spool_mode == "always"

    @property
    def never_blocks(self) -> bool:
        """Whether `track()` etc. may queue and return without awaiting anything."""
        return self.disabled or (self.overflow != "block" and not self.spool_always)

    @property
    def wait_bound(self) -> float:
        """How long a `wait=True` call made without a timeout waits for its outcome."""
        return self.max_retry_time + self.timeout + self.shutdown_timeout
