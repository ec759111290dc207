"""`run_emulator`: serve the emulator from the command line until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Iterable
from typing import Any, TextIO

from .._constants import EMULATOR_MAX_EVENT_BYTES, EMULATOR_MAX_EVENTS, EMULATOR_MAX_REJECTED
from ._emulator import DEFAULT_MAX_BODY_BYTES, Emulator
from ._faults import Faults

__all__ = ["run_emulator"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_emulator(
    host: str,
    port: int,
    write_keys: Iterable[str] | str,
    *,
    faults: Faults | None = None,
    seed: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    log: TextIO | None = None,
    inspect_token: str | None = None,
    allowed_hosts: Iterable[str] = (),
    max_events: int = EMULATOR_MAX_EVENTS,
    max_event_bytes: int = EMULATOR_MAX_EVENT_BYTES,
    max_rejected: int = EMULATOR_MAX_REJECTED,
    warn: TextIO | None = None,
) -> None:
    """Serve an emulator on host:port until SIGINT or SIGTERM, then return.

    Prints one line with the ingest URL to `log` (stdout by default); bound beyond
    loopback, one more line per address it can be reached at, and a warning to `warn`
    (stderr by default). The write keys and the inspection token are never printed.
    Raises RuntimeError outside the main thread (signals can only be caught there),
    ValueError for no or empty write keys (and, off loopback, for the key "dev" or no
    `inspect_token`), OSError if the address cannot be bound.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("run_emulator() must run in the main thread")
    keys = [write_keys] if isinstance(write_keys, str) else list(write_keys)
    emulator = Emulator(
        write_keys=keys,
        host=host,
        port=port,
        seed=seed,
        max_body_bytes=max_body_bytes,
        faults=faults,
        inspect_token=inspect_token,
        allowed_hosts=allowed_hosts,
        max_events=max_events,
        max_event_bytes=max_event_bytes,
        max_rejected=max_rejected,
    )
    # KeyboardInterrupt only reaches here where the loop cannot catch signals (Windows).
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _serve_until_signalled(
                emulator,
                log if log is not None else sys.stdout,
                warn if warn is not None else sys.stderr,
            )
        )


def _announce(emulator: Emulator, log: TextIO, warn: TextIO) -> None:
    urls = emulator.urls if emulator.exposed else [emulator.url]
    first = urls[0] if urls else emulator.url
    print(
        f"Encharge emulator: {first} "
        f"(inspect at {first.removesuffix('/v1/')}/_emulator/stats; Ctrl-C to stop)",
        file=log,
    )
    for url in urls[1:]:
        print(f"  also at {url}", file=log)
    log.flush()
    if emulator.exposed:
        print(
            f"warning: the emulator listens on {emulator.host}:{emulator.port}, beyond "
            "loopback: anyone who can reach this machine can send it events with the write "
            "key; /_emulator/ needs the inspection token (Authorization: Bearer ...); only "
            "its own addresses, loopback names and --allow-host names are answered.",
            file=warn,
            flush=True,
        )


async def _serve_until_signalled(emulator: Emulator, log: TextIO, warn: TextIO) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    previous: dict[signal.Signals, Any] = {}
    for sig in _STOP_SIGNALS:
        handler = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover - Windows: Ctrl-C interrupts instead
            continue
        previous[sig] = handler
    try:
        async with emulator:
            _announce(emulator, log, warn)
            await stop.wait()
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)
