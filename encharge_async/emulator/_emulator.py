"""`Emulator`: a local Encharge ingest endpoint for tests, served on loopback."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._constants import EMULATOR_MAX_EVENT_BYTES, EMULATOR_MAX_EVENTS, EMULATOR_MAX_REJECTED
from ._faults import DropMode, Faults
from ._model import CustomObject, Person
from ._network import allowed_host_names, is_loopback, local_addresses
from ._records import EventRecord, RejectedRecord, Stats
from ._state import EmulatorState

if TYPE_CHECKING:
    from ._app import EmulatorApp
    from ._server import ServerHandle

__all__ = ["DEFAULT_DEV_WRITE_KEY", "DEFAULT_MAX_BODY_BYTES", "Emulator"]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
#: The CLI's write key when none is given: fine on loopback, refused off it.
DEFAULT_DEV_WRITE_KEY = "dev"
_START_TIMEOUT = 10.0


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class Emulator:
    """A local Encharge Ingest API on a real socket, for tests.

    Use ``async with Emulator(write_key="k") as emu:`` or ``await emu.start()`` /
    ``await emu.stop()``; point the client at ``emu.url``. Fault keywords set fields of
    ``emu.faults`` (on top of `faults`, if given). Raises ValueError for no or empty
    write keys and for invalid fault values.

    Off loopback (`host` such as ``"0.0.0.0"``), anyone on the network can reach it: it
    then refuses the guessable write key ``"dev"`` and needs an `inspect_token`, which
    ``/_emulator/*`` then requires (``Authorization: Bearer <token>``); on loopback the
    token is optional. Requests must carry a `Host` the emulator serves (loopback names,
    its addresses, `allowed_hosts`; ``"*"`` allows any), else 421. At most `max_events`
    accepted events (and `max_event_bytes` of their bodies) and `max_rejected` rejected
    requests are kept, the oldest going first; `stats` counts every one.
    """

    def __init__(
        self,
        *,
        write_key: str | None = None,
        write_keys: Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        stop_timeout: float = 5.0,
        faults: Faults | None = None,
        latency: float | tuple[float, float] | None = None,
        error_rate: float | None = None,
        error_statuses: Iterable[int] | None = None,
        rate_limited_rate: float | None = None,
        retry_after: int | str | None = None,
        rate_limit: float | None = None,
        rate_limit_burst: int | None = None,
        max_in_flight: int | None = None,
        max_in_flight_retry_after: int | str | None = None,
        drop_rate: float | None = None,
        drop_mode: DropMode | None = None,
        slow_body: float | None = None,
        slow_body_rate: float | None = None,
        inspect_token: str | None = None,
        allowed_hosts: Iterable[str] = (),
        max_events: int = EMULATOR_MAX_EVENTS,
        max_event_bytes: int = EMULATOR_MAX_EVENT_BYTES,
        max_rejected: int = EMULATOR_MAX_REJECTED,
    ) -> None:
        if isinstance(write_keys, str):
            raise TypeError("write_keys must be a list of keys; use write_key= for one key")
        if isinstance(allowed_hosts, str):
            raise TypeError("allowed_hosts must be a list of host names")
        keys = ([write_key] if write_key is not None else []) + list(write_keys or ())
        if not is_loopback(host):
            where = f"{host or '0.0.0.0'!r} (not loopback: reachable from the network)"
            if DEFAULT_DEV_WRITE_KEY in keys:
                raise ValueError(
                    f"binding {where} needs an explicit write key, not the guessable "
                    f"{DEFAULT_DEV_WRITE_KEY!r} (write_key=, --write-key or $ENCHARGE_WRITE_KEY)"
                )
            if inspect_token is None:
                raise ValueError(
                    f"binding {where} needs an inspection token for /_emulator/ "
                    "(inspect_token=, --inspect-token or $ENCHARGE_EMULATOR_INSPECT_TOKEN)"
                )
        self._allowed_hosts = tuple(allowed_hosts)
        self._faults = faults if faults is not None else Faults()
        options: dict[str, Any] = {
            "latency": latency,
            "error_rate": error_rate,
            "error_statuses": error_statuses,
            "rate_limited_rate": rate_limited_rate,
            "retry_after": retry_after,
            "rate_limit": rate_limit,
            "rate_limit_burst": rate_limit_burst,
            "max_in_flight": max_in_flight,
            "max_in_flight_retry_after": max_in_flight_retry_after,
            "drop_rate": drop_rate,
            "drop_mode": drop_mode,
            "slow_body": slow_body,
            "slow_body_rate": slow_body_rate,
        }
        for name, value in options.items():
            if value is not None:
                setattr(self._faults, name, value)
        self._state = EmulatorState(
            keys,
            max_body_bytes=max_body_bytes,
            faults=self._faults,
            seed=seed,
            max_events=max_events,
            max_event_bytes=max_event_bytes,
            max_rejected=max_rejected,
            inspect_token=inspect_token,
        )
        self._host = host
        self._port = port
        self._stop_timeout = stop_timeout
        self._bound: tuple[str, int] | None = None
        self._server: ServerHandle | None = None
        self._app: EmulatorApp | None = None

    def __repr__(self) -> str:
        where = self.url if self._bound else "stopped"
        return f"<Emulator {where} events={len(self._state.store.events)}>"

    # Lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving on the current event loop.

        Raises RuntimeError if already running, OSError if the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        try:
            from ._server import ServerHandle
        except ImportError as exc:
            raise ImportError(
                "the emulator needs uvicorn: pip install 'encharge-async[emulator]'"
            ) from exc
        from ._app import EmulatorApp

        self._state.allowed_hosts = allowed_host_names(self._host, self._allowed_hosts)
        server = ServerHandle(self._host, self._port)
        app = EmulatorApp(self._state, server.abort)
        self._bound = await server.start(app, _START_TIMEOUT)
        self._server, self._app = server, app

    async def stop(self) -> None:
        """Stop serving, in bounded time even with requests still open. Idempotent."""
        server, app = self._server, self._app
        if server is None or app is None:
            return
        self._server = self._app = None
        self._bound = None
        app.begin_shutdown()
        await server.stop(self._stop_timeout)

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """Whether the emulator is serving."""
        return self._server is not None

    # Where it listens ----------------------------------------------------------------

    @property
    def host(self) -> str:
        """The host bound (raises RuntimeError when not running)."""
        return self._address()[0]

    @property
    def port(self) -> int:
        """The port bound (raises RuntimeError when not running)."""
        return self._address()[1]

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``, for the inspection endpoints under ``/_emulator/``."""
        host, port = self._address()
        return f"http://{_url_host(host)}:{port}"

    @property
    def url(self) -> str:
        """The ingest endpoint, ``http://HOST:PORT/v1/`` (raises RuntimeError when not running).

        Bound to every interface, a loopback URL: the one that works from this machine.
        """
        return f"{self.base_url}/v1/"

    @property
    def urls(self) -> list[str]:
        """The ingest endpoint at every address it can be reached at, loopback first.

        Bound to every interface, that is this machine's interface addresses.
        """
        host, port = self._address()
        return [f"http://{_url_host(address)}:{port}/v1/" for address in local_addresses(host)]

    @property
    def exposed(self) -> bool:
        """Whether it listens beyond loopback (reachable from the network)."""
        return not is_loopback(self._host)

    def _address(self) -> tuple[str, int]:
        if self._bound is None:
            raise RuntimeError("the emulator is not running")
        return self._bound

    # What it received ----------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The live fault settings: assign fields to change them while running."""
        return self._faults

    @property
    def events(self) -> list[EventRecord]:
        """Accepted events, in arrival order."""
        return list(self._state.store.events.records)

    @property
    def rejected(self) -> list[RejectedRecord]:
        """Requests that were not accepted (errors, injected faults), in arrival order."""
        return list(self._state.store.rejected.records)

    @property
    def duplicates(self) -> dict[str, int]:
        """For each Idempotency-Key accepted more than once, how many extra copies."""
        return dict(self._state.store.duplicates)

    @property
    def stats(self) -> Stats:
        """Counts of accepted, rejected, duplicates and injected faults by kind."""
        return self._state.stats()

    @property
    def fault_counts(self) -> dict[str, int]:
        """How many faults of each kind were injected."""
        return self._state.injector.counts()

    @property
    def people(self) -> list[Person]:
        """Every person, oldest first (snapshots)."""
        return self._state.model.people()

    @property
    def objects(self) -> list[CustomObject]:
        """Every custom object, oldest first (snapshots)."""
        return self._state.model.objects()

    def person(
        self, *, email: str | None = None, user_id: str | int | None = None
    ) -> Person | None:
        """Return the person with this email or userId now, or None.

        Raises ValueError unless exactly one of `email` and `user_id` is given.
        """
        return self._state.model.person(email=email, user_id=user_id)

    def object(
        self, object_type: str, *, id: str | None = None, external_id: str | None = None
    ) -> CustomObject | None:
        """Return the custom object of this type with this id or externalId, or None."""
        return self._state.model.object(object_type, id=id, external_id=external_id)

    def reset(self) -> None:
        """Forget records, people, objects and fault counts; re-seed the fault dice.

        Fault settings are kept (``emu.faults.clear()`` turns them off). Over HTTP:
        ``POST /_emulator/reset``.
        """
        self._state.reset()

    async def wait_for_events(self, count: int, *, timeout: float = 5.0) -> list[EventRecord]:
        """Wait until at least `count` events were accepted; return the accepted events kept.

        Raises TimeoutError if fewer arrived within `timeout` seconds.
        """
        return await self._state.wait_for_events(count, timeout)
