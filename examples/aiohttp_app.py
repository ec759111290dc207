"""An aiohttp app that sends events to Encharge.

Run it (the client reads ENCHARGE_WRITE_KEY and, optionally, ENCHARGE_INGEST_URL):

    ENCHARGE_WRITE_KEY=... python -m aiohttp.web -H 127.0.0.1 -P 8080 aiohttp_app:init_app

from the examples directory, or `python examples/aiohttp_app.py`. Then
`curl -X POST 'localhost:8080/signup?email=jon@example.com'`.
"""

from __future__ import annotations

from aiohttp import web

from encharge_async.integrations.aiohttp import ENCHARGE, encharge_ctx


async def signup(request: web.Request) -> web.Response:
    email = request.query["email"]
    plan = request.query.get("plan", "Free")
    encharge = request.config_dict[ENCHARGE]
    message_id = await encharge.track(
        "Registered user", email=email, properties={"plan": plan}
    )  # queued: the response does not wait for Encharge
    return web.json_response({"message_id": message_id})


def create_app() -> web.Application:
    app = web.Application()
    app.cleanup_ctx.append(encharge_ctx())  # open at startup, drain and close at cleanup
    app.router.add_post("/signup", signup)
    return app


def init_app(argv: list[str] | None = None) -> web.Application:
    """The entry point of `python -m aiohttp.web ... aiohttp_app:init_app`."""
    return create_app()


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=8080)
