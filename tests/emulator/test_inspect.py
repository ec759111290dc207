"""The inspection endpoints under /_emulator/: paginated views, stats and reset."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from encharge_async.emulator import FAULT_KINDS, Emulator

from .conftest import KEY, MODULE_LOOP, Post

pytestmark = MODULE_LOOP


async def _fill(emu: Emulator, post: Post) -> None:
    await post(
        {"name": "Paid", "user": {"email": "a@b.c", "tags": "x"}}, headers={"Idempotency-Key": "i"}
    )
    await post({"name": "Paid", "user": {"email": "a@b.c"}}, headers={"Idempotency-Key": "i"})
    await post({"type": "group", "objectType": "company", "user": {"email": "a@b.c"}})
    await post({"name": "Paid"}, key="nope")
    emu.faults.error_rate = 1.0
    await post({"name": "Paid", "user": {"email": "a@b.c"}})
    emu.faults.error_rate = 0.0


async def test_views_show_what_the_emulator_holds(
    emu: Emulator, post: Post, client: httpx.AsyncClient
):
    await _fill(emu, post)

    async def view(name: str) -> Any:
        response = await client.get(f"{emu.base_url}/_emulator/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert KEY not in response.text
        assert "nope" not in response.text
        return response.json()

    def page(items: list[Any], **extra: Any) -> dict[str, Any]:
        return {"items": items, "limit": 100, "next_after": None, "next": None, **extra}

    assert await view("events") == page([r.to_dict() for r in emu.events], dropped=0)
    assert await view("rejected") == page([r.to_dict() for r in emu.rejected], dropped=0)
    assert await view("people") == page([p.to_dict() for p in emu.people])
    assert await view("objects") == page([o.to_dict() for o in emu.objects])
    stats = await view("stats/")
    assert stats == {
        "accepted": 3,
        "rejected": 2,
        "duplicates": 1,
        "faults": {**dict.fromkeys(FAULT_KINDS, 0), "error": 1},
        "events_dropped": 0,
        "rejected_dropped": 0,
    }
    assert emu.stats.to_dict() == stats
    people = await view("people")
    assert people["items"] == [
        {
            "id": 1,
            "email": "a@b.c",
            "userId": None,
            "fields": {},
            "tags": ["x"],
            "events": ["Paid", "Paid"],
            "objects": [{"objectType": "company", "id": "obj_1"}],
        }
    ]
    # Looking does not count as traffic.
    assert emu.stats.to_dict() == stats


async def test_unknown_view_is_404_and_other_methods_405(emu: Emulator, client: httpx.AsyncClient):
    response = await client.get(f"{emu.base_url}/_emulator/secrets")
    assert response.status_code == 404
    views = ["events", "objects", "people", "rejected", "reset", "stats"]
    assert response.json()["views"] == views
    response = await client.post(f"{emu.base_url}/_emulator/events", json={})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    response = await client.get(f"{emu.base_url}/_emulator/reset")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert emu.rejected == []


@pytest.mark.parametrize("view", ["events", "rejected", "people", "objects"])
async def test_views_start_empty(emu: Emulator, client: httpx.AsyncClient, view: str):
    response = await client.get(f"{emu.base_url}/_emulator/{view}")
    assert response.json()["items"] == []
    assert response.json()["next"] is None


async def _page_through(client: httpx.AsyncClient, emu: Emulator, view: str, limit: int) -> Any:
    """Follow `next` from the first page; return the pages."""
    pages: list[dict[str, Any]] = []
    url: str | None = f"/_emulator/{view}?limit={limit}"
    while url is not None:
        assert len(pages) < 100, "pages do not end"
        response = await client.get(f"{emu.base_url}{url}")
        assert response.status_code == 200, response.text
        pages.append(response.json())
        url = pages[-1]["next"]
    return pages


async def test_every_list_view_pages_with_limit_and_after(
    emu: Emulator, post: Post, client: httpx.AsyncClient
):
    for i in range(7):
        user = {"email": f"p{i}@example.com"}
        await post({"name": "Paid", "user": user})
        await post({"name": "Paid", "user": user}, key="wrong")
        await post({"type": "group", "objectType": "company", "properties": {"id": f"c{i}"}})
    # A merge removes a person: a cursor on people is their id, not a position.
    await post(
        {"type": "alias", "previousEmail": "p1@example.com", "user": {"email": "p2@example.com"}}
    )
    expected = {
        "events": [r.to_dict() for r in emu.events],
        "rejected": [r.to_dict() for r in emu.rejected],
        "people": [p.to_dict() for p in emu.people],
        "objects": [o.to_dict() for o in emu.objects],
    }
    assert [len(items) for items in expected.values()] == [15, 7, 6, 7]
    for view, items in expected.items():
        pages = await _page_through(client, emu, view, 3)
        assert [len(page["items"]) for page in pages] == [3] * (len(items) // 3) + (
            [len(items) % 3] if len(items) % 3 else []
        )
        assert [item for page in pages for item in page["items"]] == items
        assert all(page["limit"] == 3 for page in pages)
        # `after` is the cursor the previous page handed out.
        assert pages[0]["next"] == f"/_emulator/{view}?after={pages[0]['next_after']}&limit=3"
        assert pages[-1]["next"] is pages[-1]["next_after"] is None


@pytest.mark.slow
async def test_a_page_is_bounded_by_default_and_by_a_hard_maximum(
    emu: Emulator, post: Post, client: httpx.AsyncClient
):
    for i in range(105):
        await post({"name": "Paid", "user": {"email": f"p{i}@example.com"}})
    first = (await client.get(f"{emu.base_url}/_emulator/events")).json()
    assert len(first["items"]) == 100
    assert first["next_after"] == first["items"][-1]["seq"]
    rest = (await client.get(f"{emu.base_url}{first['next']}")).json()
    assert [r["seq"] for r in rest["items"]] == list(range(101, 106))
    assert rest["next"] is None
    whole = (await client.get(f"{emu.base_url}/_emulator/people?limit=1000")).json()
    assert len(whole["items"]) == 105
    for query in ("limit=1001", "limit=0", "limit=x", "after=-1", "after=y"):
        response = await client.get(f"{emu.base_url}/_emulator/events?{query}")
        assert response.status_code == 400, query
        assert "from" in response.json()["error"]


@pytest.mark.slow
async def test_reset_endpoint_clears_what_was_recorded(
    emu: Emulator, post: Post, client: httpx.AsyncClient
):
    await _fill(emu, post)
    assert emu.stats.accepted == 3
    response = await client.post(f"{emu.base_url}/_emulator/reset")
    assert response.status_code == 200
    assert response.json() == {"reset": True}
    assert (emu.events, emu.rejected, emu.people, emu.objects) == ([], [], [], [])
    stats = (await client.get(f"{emu.base_url}/_emulator/stats")).json()
    assert (stats["accepted"], stats["rejected"], stats["duplicates"]) == (0, 0, 0)
    # Numbering starts again, and the next load run is recorded as usual.
    await post({"name": "Paid", "user": {"email": "a@b.c"}})
    assert [r.seq for r in emu.events] == [1]
