"""Subprocesses of the benchmarks: servers on loopback, and measurements in fresh interpreters.

Every wait here is bounded, and every process started is stopped (terminated, then killed).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import selectors
import subprocess
import sys
import time
from types import TracebackType
from typing import Any, Protocol

import psutil  # type: ignore[import-untyped,unused-ignore]

from ._common import PROJECT_ROOT, child_env

_STOP_TIMEOUT = 5.0


class Runner(Protocol):
    """Runs `module:function(**kwargs)` somewhere and returns its JSON result: `run_child`
    (a fresh interpreter, for measurements) or `run_inline` (this process, for smoke tests).
    """

    def __call__(self, target: str, kwargs: dict[str, Any], timeout: float) -> dict[str, Any]: ...


class ServerProcess:
    """`python -m benchmarks.servers KIND ARGS...` in a subprocess, until the block ends.

    The server binds a free loopback port and prints `READY <url>`; `url` holds it.
    """

    def __init__(self, kind: str, *args: str, start_timeout: float = 30.0) -> None:
        self.argv = [sys.executable, "-m", "benchmarks.servers", kind, *args]
        self.start_timeout = start_timeout
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id (raises RuntimeError when not running)."""
        if self._proc is None:
            raise RuntimeError("the server is not running")
        return self._proc.pid

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server has used so far."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        """Start the server and wait (bounded) for its READY line."""
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=PROJECT_ROOT,
            env=child_env(),
        )
        try:
            line = _read_line(self._proc, self.start_timeout)
        except BaseException:
            self.stop()
            raise
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{' '.join(self.argv[2:])} did not start: {line!r}")
        self.url = line.split(" ", 1)[1]

    def stop(self) -> None:
        """Ask the server to stop (stdin closed, then SIGTERM), kill it if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for step in (_close_stdin, subprocess.Popen.terminate, subprocess.Popen.kill):
            step(proc)
            try:
                proc.wait(_STOP_TIMEOUT)
                break
            except subprocess.TimeoutExpired:
                continue
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _close_stdin(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None and not proc.stdin.closed:
        with contextlib.suppress(OSError):  # the server is already gone
            proc.stdin.close()


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Read one line of the server's stdout, within `timeout` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no READY line within {timeout:g}s")
            if not selector.select(left):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the server exited (status {proc.wait(_STOP_TIMEOUT)})")
            data += chunk
    return data.split(b"\n", 1)[0].decode().strip()


def run_child(
    target: str, kwargs: dict[str, Any], timeout: float, executable: str | None = None
) -> dict[str, Any]:
    """Run `module:function(**kwargs)` in a fresh interpreter; return its JSON result.

    A fresh process per measurement keeps CPU time, RSS, threads and garbage of one
    candidate away from the next. `executable` is that interpreter (default: this one's).
    Raises RuntimeError when the child fails, and subprocess.TimeoutExpired (after killing
    it) when it takes longer than `timeout`.
    """
    done = subprocess.run(
        [executable or sys.executable, "-m", "benchmarks._child", target],
        input=json.dumps(kwargs).encode(),
        capture_output=True,
        cwd=PROJECT_ROOT,
        env=child_env(),
        timeout=timeout,
        check=False,
    )
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = done.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{target} failed (status {done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def run_inline(target: str, kwargs: dict[str, Any], timeout: float) -> dict[str, Any]:
    """`run_child`'s twin in this process (quick, for smoke tests; `timeout` is not enforced)."""
    module_name, _, function_name = target.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    # Through JSON, so that results have the same shapes as those of a child.
    result: dict[str, Any] = json.loads(json.dumps(function(**kwargs)))
    return result
