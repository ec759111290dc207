"""Every ```python block of README.md and docs/**/*.md runs here, so the docs cannot rot.

A block runs as it is, unless an HTML comment on the line before its fence says otherwise.

- No marker: run it, top-level `await` allowed, in a fresh namespace and a temporary
  directory, with `ENCHARGE_WRITE_KEY` and `ENCHARGE_INGEST_URL` pointing at a local
  emulator (so `AsyncEncharge()` with no arguments talks to it). The emulator must reject
  nothing.
- `<!-- test: run rejects=401,401 -->`: the same, for a block that means the emulator to
  reject requests, with these statuses.
- `<!-- test: app -->`: run it, then start and stop the `app` it defines (Starlette or
  FastAPI, aiohttp, Flask): its lifespan or cleanup context runs.
- `<!-- test: app POST /signup?email=jon@example.com -->`: the same, sending that request
  while the app runs. It must answer 2xx, and an event must reach the emulator.
- `<!-- test: pytest -->`: part of the page's test module. The page's pytest blocks are
  joined in order and run by pytest in a subprocess; every test in them must pass.
- `<!-- test: pytest file=NAME.py -->`: a file next to that module (a `conftest.py`, the
  app under test); blocks for the same file are joined.
- `<!-- test: import -->`: run it as an imported module rather than as `__main__` (a
  script whose work is under `if __name__ == "__main__":`).
- `<!-- test: compile REASON -->`: only compile it, when it needs what the tests cannot
  have (say what).
- `<!-- test: skip REASON -->`: ignore it (say why; use sparingly).

Pages owned by others carry no markers yet: `OVERRIDES` gives their blocks one.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from encharge_async import AsyncEncharge, Encharge, EventLoopError
from encharge_async.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
DOCS_WRITE_KEY = "docs-write-key"
BLOCK_TIMEOUT = 20.0  # seconds a block may run
PYTEST_TIMEOUT = 60.0  # seconds a page's pytest run may take
MODES = ("run", "app", "pytest", "import", "compile", "skip")

# Blocks of pages that other people own, which cannot carry markers: (page, first line).
OVERRIDES: dict[tuple[str, str], tuple[str, str]] = {
    ("docs/spool.md", "from encharge_async._spool import Spool, SpoolLimits, SpooledEvent"): (
        "compile",
        "a fragment: `event` comes from the client, and the path needs /var/lib",
    ),
    ("docs/spool.md", "import statistics, sys, tempfile, time"): (
        "import",
        "the benchmark script: importing it checks its imports; running it takes minutes",
    ),
}

# Blocks that take more than about a second, run only by the full suite: (page, first line).
SLOW_BLOCKS = {
    ("docs/reliability.md", "import json, tempfile, anyio, httpx"),
    ("docs/design.md", "import tempfile"),
}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_MARKER = re.compile(r"^[ \t]*<!--\s*test:\s*(?P<mode>[\w-]+)\s*(?P<arg>.*?)\s*-->[ \t]*$")

T = TypeVar("T")


@dataclass(frozen=True)
class Block:
    """One fenced ```python block and what to do with it."""

    page: str  # relative to the repository root
    line: int  # 1-based line of the first line of code
    code: str
    mode: str
    arg: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def parse_page(path: Path) -> tuple[list[Block], list[str]]:
    """The python blocks of a page, and the problems with its markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = _relative(path)
    blocks: list[Block] = []
    problems: list[str] = []
    marker: tuple[int, str, str] | None = None  # line, mode, arg of a pending marker
    i = 0
    while i < len(lines):
        text = lines[i]
        found = _MARKER.match(text)
        if found:
            if marker is not None:
                problems.append(f"{page}:{marker[0]}: marker not followed by a python block")
            marker = (i + 1, found["mode"], found["arg"])
            i += 1
            continue
        opening = _FENCE.match(text)
        if not opening:
            if text.strip() and marker is not None:
                problems.append(f"{page}:{marker[0]}: marker not followed by a python block")
                marker = None
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = (opening["info"].split() or [""])[0].strip("{}.").lower()
        body: list[str] = []
        i += 1
        while i < len(lines):
            closing = _FENCE.match(lines[i])
            if closing and closing["fence"].startswith(fence) and not closing["info"].strip():
                break
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        start = i - len(body) + 1  # 1-based line of the first line of code
        i += 1
        if language not in ("python", "py"):
            if marker is not None:
                problems.append(f"{page}:{marker[0]}: marker before a {language or 'plain'} block")
                marker = None
            continue
        code = "\n".join(body) + "\n"
        mode, arg = ("run", "") if marker is None else (marker[1], marker[2])
        first = next((line.strip() for line in body if line.strip()), "")
        if marker is None and (page, first) in OVERRIDES:
            mode, arg = OVERRIDES[page, first]
        if mode not in MODES:
            problems.append(f"{page}:{start}: unknown marker mode {mode!r}")
        elif mode == "skip" and not arg:
            problems.append(f"{page}:{start}: `skip` needs a reason")
        blocks.append(Block(page, start, code, mode, arg))
        marker = None
    if marker is not None:
        problems.append(f"{page}:{marker[0]}: marker not followed by a python block")
    return blocks, problems


def collect() -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    problems: list[str] = []
    for path in PAGES:
        page_blocks, page_problems = parse_page(path)
        blocks += page_blocks
        problems += page_problems
    return blocks, problems


BLOCKS, PROBLEMS = collect()
PYTEST_PAGES = sorted({block.page for block in BLOCKS if block.mode == "pytest"})


def compile_block(block: Block) -> Any:
    """Compile with top-level await allowed; tracebacks point at the markdown's lines."""
    source = "\n" * (block.line - 1) + block.code
    return compile(source, str(ROOT / block.page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


# -- a local Encharge for the blocks, on a loop of its own ------------------------------------


class EmulatorThread:
    """An `Emulator` served from a thread, reachable from any loop and from sync code."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emulator: Emulator | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="docs-emulator", daemon=True)

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        async with Emulator(write_key=DOCS_WRITE_KEY) as emulator:
            self._emulator = emulator
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10) or self._emulator is None:
            raise RuntimeError(f"the docs emulator did not start: {self._error!r}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the docs emulator did not stop"

    @property
    def url(self) -> str:
        assert self._emulator is not None
        return self._emulator.url

    def call(self, fn: Callable[[Emulator], T]) -> T:
        """Run `fn(emulator)` on the emulator's loop (its state is that loop's)."""
        assert self._loop is not None
        assert self._emulator is not None
        emulator = self._emulator

        async def run() -> T:
            return fn(emulator)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def counts(self) -> tuple[int, int]:
        return self.call(lambda emulator: (len(emulator.events), len(emulator.rejected)))

    def wait_for_events(self, count: int) -> None:
        assert self._loop is not None
        assert self._emulator is not None
        waiting = self._emulator.wait_for_events(count, timeout=5)
        asyncio.run_coroutine_threadsafe(waiting, self._loop).result(10)

    def rejected_since(self, seen: int) -> list[int | None]:
        return self.call(lambda emulator: [r.status for r in emulator.rejected[seen:]])


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    served = EmulatorThread()
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def docs_env(
    emulator: EmulatorThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EmulatorThread]:
    """The environment of a block: the emulator's key and URL, a temporary directory.

    Logging levels that a block sets are put back afterwards.
    """
    monkeypatch.setenv("ENCHARGE_WRITE_KEY", DOCS_WRITE_KEY)
    monkeypatch.setenv("ENCHARGE_INGEST_URL", emulator.url)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what blocks create goes away
    loggers = [logging.getLogger(), logging.getLogger("encharge_async")]
    levels = [logger.level for logger in loggers]
    yield emulator
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


# -- running blocks -----------------------------------------------------------------------------


def run_bounded(fn: Callable[[], T], timeout: float = BLOCK_TIMEOUT) -> T:
    """Run `fn` in a thread of its own, so that a block that hangs fails instead."""
    future: Future[T] = Future()

    def target() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    thread = threading.Thread(target=target, name="docs-block", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"the block did not finish within {timeout:g} s")
    return future.result(0)


def clients_in(namespace: dict[str, Any]) -> tuple[list[AsyncEncharge], list[Encharge]]:
    values = list(namespace.values())
    return (
        [value for value in values if isinstance(value, AsyncEncharge)],
        [value for value in values if isinstance(value, Encharge)],
    )


def close_sync_clients(namespace: dict[str, Any]) -> None:
    for client in clients_in(namespace)[1]:
        client.close(timeout=5)


def execute(block: Block, name: str, *, close: bool = True) -> dict[str, Any]:
    """Run a block's code (awaiting it if it awaits) and close the clients it left open.

    With `close=False`, clients the block left at module level stay open (an app's).
    """
    code = compile_block(block)
    namespace: dict[str, Any] = {"__name__": name, "__file__": str(ROOT / block.page)}

    def run() -> None:
        if not code.co_flags & inspect.CO_COROUTINE:
            exec(code, namespace)
            for client in clients_in(namespace)[0] if close else []:
                # Never started (closing is instant), or started on a loop that has ended.
                with contextlib.suppress(EventLoopError):
                    asyncio.run(client.aclose())
            return

        async def main() -> None:
            try:
                await eval(code, namespace)
            finally:
                for client in clients_in(namespace)[0]:
                    await client.aclose()  # on the loop they ran on

        asyncio.run(main())

    try:
        run_bounded(run)
    finally:
        if close:
            close_sync_clients(namespace)
    return namespace


async def serve_asgi(app: Any, request: tuple[str, str] | None) -> None:
    """Run an ASGI app's lifespan as a server does, with `request` sent in between."""
    import httpx

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await asyncio.wait_for(outbox.get(), 10)
    assert started["type"] == "lifespan.startup.complete", started
    try:
        if request is not None:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://docs") as client:
                response = await client.request(*request)
            assert response.is_success, (response.status_code, response.text)
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        stopped = await asyncio.wait_for(outbox.get(), 20)
        await asyncio.wait_for(task, 5)
    assert stopped["type"] == "lifespan.shutdown.complete", stopped


def serve_app(app: object, request: tuple[str, str] | None) -> None:
    """Start `app`, send `request` if any, stop it; the response must be a success."""
    from aiohttp import web
    from flask import Flask
    from starlette.applications import Starlette

    if isinstance(app, Starlette):  # FastAPI too
        asyncio.run(serve_asgi(app, request))
    elif isinstance(app, web.Application):
        from aiohttp.test_utils import TestClient as AiohttpClient
        from aiohttp.test_utils import TestServer

        async def drive() -> None:
            async with AiohttpClient(TestServer(app)) as client:  # runs cleanup_ctx
                if request is not None:
                    response = await client.request(*request)
                    assert response.status < 300, (response.status, await response.text())

        asyncio.run(drive())
    elif isinstance(app, Flask):
        if request is not None:
            response = app.test_client().open(request[1], method=request[0])
            assert response.status_code < 300, (response.status_code, response.text)
    else:
        raise AssertionError(f"`app` is a {type(app).__name__}: not an app this test can serve")


def run_app_block(block: Block, emulator: EmulatorThread) -> None:
    request: tuple[str, str] | None = None
    if block.arg:
        method, path = block.arg.split()
        request = (method, path)
    accepted, _ = emulator.counts()
    namespace = execute(block, "docs_app", close=False)
    assert "app" in namespace, "an `app` block must define `app`"
    try:
        run_bounded(lambda: serve_app(namespace["app"], request))
    finally:
        close_sync_clients(namespace)
    if request is not None:
        emulator.wait_for_events(accepted + 1)  # the lifespan or close delivered it


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b, marks=pytest.mark.slow)
        if (b.page, b.code.splitlines()[0]) in SLOW_BLOCKS
        else b
        for b in BLOCKS
        if b.mode != "pytest"
    ],
    ids=lambda block: block.id,
)
@pytest.mark.slow
def test_block(block: Block, request: pytest.FixtureRequest) -> None:
    if block.mode == "skip":
        pytest.skip(block.arg)
    if block.mode == "compile":
        compile_block(block)
        return
    emulator: EmulatorThread = request.getfixturevalue("docs_env")
    _, rejected = emulator.counts()
    expected: list[int | None] = []
    if block.mode == "app":
        run_app_block(block, emulator)
    elif block.mode == "import":
        execute(block, "docs_block")
    else:
        if block.arg.startswith("rejects="):
            expected = [int(status) for status in block.arg.removeprefix("rejects=").split(",")]
        else:
            assert not block.arg, f"unknown argument {block.arg!r}"
        execute(block, "__main__")
    assert emulator.rejected_since(rejected) == expected, "statuses of the rejected requests"


# -- blocks that are tests ----------------------------------------------------------------------

PYTEST_INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""


def _test_count(module: str) -> int:
    tree = ast.parse(module)
    return sum(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")
        for node in tree.body
    )


@pytest.mark.slow
@pytest.mark.parametrize("page", PYTEST_PAGES)
def test_pytest_blocks(page: str, tmp_path: Path) -> None:
    files: dict[str, str] = {}
    slug = re.sub(r"\W", "_", Path(page).stem.lower())
    module = f"test_docs_{slug}.py"
    for block in BLOCKS:
        if block.page == page and block.mode == "pytest":
            name = block.arg.removeprefix("file=") if block.arg else module
            files[name] = files.get(name, "") + f"# {block.id}\n{block.code}\n"
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")
    # The blocks must not depend on this run's environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENCHARGE_", "PYTEST_"))}
    report = tmp_path / "report.xml"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("-c", "pytest.ini", "--rootdir", str(tmp_path), f"--junitxml={report}", module),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=PYTEST_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    expected = {"tests": _test_count(files[module]), "failures": 0, "errors": 0, "skipped": 0}
    assert counts == expected, result.stdout


# -- the pages themselves -----------------------------------------------------------------------


def test_markers_are_well_formed() -> None:
    assert PROBLEMS == []
    firsts = {
        (b.page, next(line.strip() for line in b.code.splitlines() if line.strip()))
        for b in BLOCKS
        if b.code.strip()
    }
    assert set(OVERRIDES) <= firsts, "an override names a block that no longer exists"
    assert BLOCKS, "no python blocks found"
    assert {b.page for b in BLOCKS} >= {"README.md", "docs/design.md", "docs/testing.md"}


def _table(page: str, heading: str) -> dict[str, str]:
    """The first column (without backticks) -> the second, of the table under `heading`."""
    text = (ROOT / page).read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if rows and not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


_UNITS = {"": 1, "s": 1, "days": 86_400, "MiB": 1024 * 1024}


def _default(cell: str) -> object:
    """A default as the configuration table writes it: `10,000`, `32 MiB`, `"block"`..."""
    text = cell.strip("`")
    if text == "none":
        return None
    if text in ("True", "False"):
        return text == "True"
    if text.startswith('"'):
        return text.strip('"')
    number, _, unit = text.partition(" ")
    return float(number.replace(",", "")) * _UNITS[unit]


def test_the_configuration_table_lists_every_keyword_with_its_default() -> None:
    page = "docs/reference/configuration.md"
    documented = _table(page, "## The clients' keywords")
    extra = _table(page, "The sync client, `Encharge`, takes two more:")
    async_params = inspect.signature(AsyncEncharge).parameters
    sync_params = inspect.signature(Encharge).parameters
    assert list(documented) == list(async_params)
    assert list(documented) + list(extra) == list(sync_params)
    from_env = {"write_key", "endpoint", "disabled"}  # their cells name environment variables
    for name, cell in [*documented.items(), *extra.items()]:
        if name not in from_env:
            assert _default(cell) == sync_params[name].default, name
    per_call = _table(
        page, "`track`, `identify`, `alias` and `group` (and the sync client's) also take:"
    )
    for method in (AsyncEncharge.track, AsyncEncharge.group, Encharge.alias, Encharge.identify):
        assert set(per_call) <= set(inspect.signature(method).parameters), method


@pytest.mark.slow
def test_the_reference_documents_every_public_name() -> None:
    import encharge_async

    reference = "\n".join(
        path.read_text(encoding="utf-8") for path in (ROOT / "docs" / "reference").glob("*.md")
    )
    directives = set(re.findall(r"^::: ([\w.]+)$", reference, flags=re.MULTILINE))
    modules = {
        "encharge_async.testing",
        "encharge_async.integrations.starlette",
        "encharge_async.integrations.aiohttp",
        "encharge_async.integrations.django",
        "encharge_async.integrations.celery",
        "encharge_async.integrations.serverless",
        "encharge_async.otel",
        "encharge_async.emulator",
    }
    names = {
        f"encharge_async.{name}"
        for name in encharge_async.__all__
        if name not in ("__version__", "USER_AGENT")  # described in prose
    }
    assert names | modules <= directives
    assert "USER_AGENT" in reference
