"""uvicorn, run in-process on the current event loop, started and stopped in bounded time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from ._app import EmulatorApp
from ._http import Scope

# Extra time granted after should_exit, then after force_exit, before cancelling.
_FORCE_GRACE = 1.0


class _InProcessServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve(server: uvicorn.Server) -> None:
    # uvicorn calls sys.exit() when it cannot bind; ServerHandle.start() reports that.
    with contextlib.suppress(SystemExit):
        await server.serve()


async def _settle(task: asyncio.Task[None], timeout: float) -> bool:
    """Wait up to `timeout` seconds for `task`, without cancelling it; return whether done."""
    await asyncio.wait({task}, timeout=timeout)
    return task.done()


class ServerHandle:
    """One uvicorn server for one EmulatorApp."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._server: _InProcessServer | None = None
        self._task: asyncio.Task[None] | None = None

    def abort(self, scope: Scope) -> bool:
        """Cut the connection that carries the request of `scope`; False if not found."""
        client = scope.get("client")
        if self._server is None or client is None:
            return False
        for connection in list(self._server.server_state.connections):
            if tuple(getattr(connection, "client", None) or ()) == tuple(client):
                transport = getattr(connection, "transport", None)
                # uvloop's transports are not asyncio.Transport subclasses.
                if transport is not None and callable(getattr(transport, "abort", None)):
                    transport.abort()
                    return True
        return False

    async def start(self, app: EmulatorApp, timeout: float) -> tuple[str, int]:
        """Serve `app`; return the (host, port) bound.

        Raises OSError if the server could not listen within `timeout` seconds.
        """
        config = uvicorn.Config(
            app,
            host=self._host,
            port=self._port,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            http="auto",  # httptools when installed (the emulator extra has it), else h11
            ws="none",
            interface="asgi3",
            proxy_headers=False,
            server_header=False,
        )
        server = _InProcessServer(config)
        task = asyncio.create_task(_serve(server), name=f"encharge-emulator:{self._port}")
        self._server, self._task = server, task
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # uvicorn has no "started" event to wait on, only a flag.
        while not server.started and not task.done() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if not server.started:
            await self.stop(0)
            raise OSError(f"the emulator could not listen on {self._host}:{self._port}")
        sockets = server.servers[0].sockets
        host, port = sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self, timeout: float) -> None:
        """Stop serving: gracefully for `timeout` seconds, then by force.

        Leaves no task of its own running. Re-raises an error the server died of.
        """
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        if not await _settle(task, timeout):
            server.force_exit = True
            if not await _settle(task, _FORCE_GRACE):
                task.cancel()
                await _settle(task, _FORCE_GRACE)
        # Cut connections still open, so their requests see a disconnect and end on their
        # own; cancel whatever request is still running after that.
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        leftovers = [t for t in server.server_state.tasks if not t.done()]
        if leftovers:
            await asyncio.wait(leftovers, timeout=_FORCE_GRACE)
        for leftover in leftovers:
            leftover.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=_FORCE_GRACE)
        self._server = self._task = None
        if task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error
