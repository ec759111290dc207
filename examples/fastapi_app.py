"""A FastAPI app that sends events to Encharge.

Run it (the client reads ENCHARGE_WRITE_KEY and, optionally, ENCHARGE_INGEST_URL):

    ENCHARGE_WRITE_KEY=... uvicorn --app-dir examples fastapi_app:app

Try it against the local emulator: `encharge-async emulator --write-key dev` in one
terminal, `ENCHARGE_WRITE_KEY=dev ENCHARGE_INGEST_URL=http://127.0.0.1:8787/v1/ uvicorn
--app-dir examples fastapi_app:app` in another, then
`curl -X POST 'localhost:8000/signup?email=jon@example.com'`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI

from encharge_async import AsyncEncharge
from encharge_async.integrations.starlette import encharge_lifespan, get_encharge


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The app's own startup and shutdown (database pools, caches...). The Encharge client
    # is open here already (app.state.encharge) and closes after this has finished.
    yield


app = FastAPI(lifespan=encharge_lifespan(lifespan))

EnchargeDep = Annotated[AsyncEncharge, Depends(get_encharge)]


@app.post("/signup")
async def signup(email: str, encharge: EnchargeDep, plan: str = "Free") -> dict[str, str]:
    message_id = await encharge.track(
        "Registered user", email=email, properties={"plan": plan}
    )  # queued: the response does not wait for Encharge
    return {"message_id": message_id}


@app.post("/users/{user_id}/upgrade")
async def upgrade(user_id: str, plan: str, encharge: EnchargeDep) -> dict[str, str]:
    await encharge.identify(user_id=user_id, user={"plan": plan})
    message_id = await encharge.track("Upgraded", user_id=user_id, properties={"plan": plan})
    return {"message_id": message_id}
