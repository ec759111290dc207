"""`run_emulator`: serve the emulator from the command line until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Iterable
from typing import Any, TextIO

from ._emulator import DEFAULT_MAX_BODY_BYTES, Emulator
from ._faults import Faults

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
) -> None:
    """Serve an emulator on host:port until SIGINT or SIGTERM, then return.

    Prints one line with the ingest URL to `log` (stdout by default); the write keys
    are never printed. Raises RuntimeError outside the main thread (signals can only
    be caught there), ValueError for no or empty write keys, OSError if the address
    cannot be bound.
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
    )
    # KeyboardInterrupt only reaches here where the loop cannot catch signals (Windows).
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signalled(emulator, log if log is not None else sys.stdout))


async def _serve_until_signalled(emulator: Emulator, log: TextIO) -> None:
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
            print(
                f"Encharge emulator: {emulator.url} "
                f"(inspect at {emulator.base_url}/_emulator/stats; Ctrl-C to stop)",
                file=log,
                flush=True,
            )
            await stop.wait()
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)
