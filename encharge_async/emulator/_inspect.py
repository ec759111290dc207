"""Read-only inspection endpoints under /_emulator/ (no write key needed, none shown)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._http import Scope, Send, send_json
from ._state import EmulatorState

PREFIX = "/_emulator/"

_VIEWS: dict[str, Callable[[EmulatorState], Any]] = {
    "events": lambda state: [record.to_dict() for record in state.store.events],
    "rejected": lambda state: [record.to_dict() for record in state.store.rejected],
    "people": lambda state: [person.to_dict() for person in state.model.people()],
    "objects": lambda state: [obj.to_dict() for obj in state.model.objects()],
    "stats": lambda state: state.stats().to_dict(),
}


async def inspect(state: EmulatorState, scope: Scope, send: Send) -> None:
    """Answer a request under PREFIX: a JSON view, 404 or 405."""
    view = _VIEWS.get(scope["path"][len(PREFIX) :].rstrip("/"))
    if view is None:
        await send_json(send, 404, {"error": "Not found.", "views": sorted(_VIEWS)})
    elif scope["method"] != "GET":
        await send_json(send, 405, {"error": "Method not allowed."}, [("Allow", "GET")])
    else:
        await send_json(send, 200, view(state))
