"""The read-only inspection endpoints under /_emulator/."""

from __future__ import annotations

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

    async def view(name: str) -> object:
        response = await client.get(f"{emu.base_url}/_emulator/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert KEY not in response.text
        assert "nope" not in response.text
        return response.json()

    assert await view("events") == [r.to_dict() for r in emu.events]
    assert await view("rejected") == [r.to_dict() for r in emu.rejected]
    assert await view("people") == [p.to_dict() for p in emu.people]
    assert await view("objects") == [o.to_dict() for o in emu.objects]
    stats = await view("stats/")
    assert stats == {
        "accepted": 3,
        "rejected": 2,
        "duplicates": 1,
        "faults": {**dict.fromkeys(FAULT_KINDS, 0), "error": 1},
    }
    assert emu.stats.to_dict() == stats
    people = await view("people")
    assert people == [
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
    assert response.json()["views"] == ["events", "objects", "people", "rejected", "stats"]
    response = await client.post(f"{emu.base_url}/_emulator/events", json={})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert emu.rejected == []


@pytest.mark.parametrize("view", ["events", "rejected", "people", "objects"])
async def test_views_start_empty(emu: Emulator, client: httpx.AsyncClient, view: str):
    response = await client.get(f"{emu.base_url}/_emulator/{view}")
    assert response.json() == []
