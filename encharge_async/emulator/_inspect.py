"""Inspection endpoints under /_emulator/: paginated JSON views and a reset.

No write key is needed for them and none is ever shown; when the emulator has an
inspection token, every one of them needs it (`Authorization: Bearer <token>`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode

from .._constants import EMULATOR_PAGE_DEFAULT, EMULATOR_PAGE_MAX
from ._http import Scope, Send, header, send_json
from ._state import EmulatorState

__all__ = ["PREFIX", "VIEWS", "inspect"]

PREFIX = "/_emulator/"


@dataclass(frozen=True)
class _Page:
    items: list[dict[str, Any]]
    next_after: int | None
    extra: dict[str, Any]


def _records_page(state: EmulatorState, which: str, after: int, limit: int) -> _Page:
    records = state.store.events if which == "events" else state.store.rejected
    found = records.page(after, limit + 1)
    more = len(found) > limit
    items = found[:limit]
    return _Page(
        [record.to_dict() for record in items],
        items[-1].seq if more else None,
        # How many of the oldest records are no longer kept (memory bounds).
        {"dropped": records.dropped},
    )


def _people_page(state: EmulatorState, after: int, limit: int) -> _Page:
    found = state.model.people_page(after, limit + 1)
    more = len(found) > limit
    items = found[:limit]
    return _Page([p.to_dict() for p in items], items[-1].id if more else None, {})


def _objects_page(state: EmulatorState, after: int, limit: int) -> _Page:
    # Objects are never removed (but by a reset), so their position is a stable cursor.
    found = state.model.objects_page(after, limit + 1)
    more = len(found) > limit
    items = found[:limit]
    return _Page([o.to_dict() for o in items], after + limit if more else None, {})


_LISTS: dict[str, Callable[[EmulatorState, int, int], _Page]] = {
    "events": lambda state, after, limit: _records_page(state, "events", after, limit),
    "rejected": lambda state, after, limit: _records_page(state, "rejected", after, limit),
    "people": _people_page,
    "objects": _objects_page,
}
VIEWS = sorted([*_LISTS, "reset", "stats"])


def _int_param(params: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    values = params.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}")
    return value


async def _list(state: EmulatorState, name: str, scope: Scope, send: Send) -> None:
    params = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
    try:
        limit = _int_param(params, "limit", EMULATOR_PAGE_DEFAULT, 1, EMULATOR_PAGE_MAX)
        after = _int_param(params, "after", 0, 0, 2**63 - 1)
    except ValueError as exc:
        await send_json(send, 400, {"error": f"{exc}."})
        return
    page = _LISTS[name](state, after, limit)
    following = None
    if page.next_after is not None:
        following = f"{PREFIX}{name}?{urlencode({'after': page.next_after, 'limit': limit})}"
    await send_json(
        send,
        200,
        {
            "items": page.items,
            "limit": limit,
            "next_after": page.next_after,
            "next": following,
            **page.extra,
        },
    )


async def inspect(state: EmulatorState, scope: Scope, send: Send) -> None:
    """Answer a request under PREFIX: a JSON view, a reset, 401, 404 or 405."""
    if not state.check_inspect_token(header(scope, b"authorization")):
        await send_json(
            send,
            401,
            {"error": "The inspection endpoints need the emulator's inspection token."},
            [("WWW-Authenticate", 'Bearer realm="encharge-emulator"')],
        )
        return
    name = scope["path"][len(PREFIX) :].rstrip("/")
    method = scope["method"]
    if name not in VIEWS:
        await send_json(send, 404, {"error": "Not found.", "views": VIEWS})
    elif name == "reset":
        if method != "POST":
            await send_json(send, 405, {"error": "Method not allowed."}, [("Allow", "POST")])
        else:
            state.reset()
            await send_json(send, 200, {"reset": True})
    elif method != "GET":
        await send_json(send, 405, {"error": "Method not allowed."}, [("Allow", "GET")])
    elif name == "stats":
        await send_json(send, 200, state.stats().to_dict())
    else:
        await _list(state, name, scope, send)
