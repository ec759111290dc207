"""A Flask app that sends events to Encharge through the sync client.

Run it (the client reads ENCHARGE_WRITE_KEY and, optionally, ENCHARGE_INGEST_URL):

    ENCHARGE_WRITE_KEY=... gunicorn --preload -w 2 --chdir examples flask_app:app

`Encharge` starts its background thread on first use, so with `--preload` the master
process only creates it and each worker starts its own. Events still queued when a worker
stops are delivered at its exit (within `shutdown_timeout`). Then
`curl -X POST 'localhost:8000/signup?email=jon@example.com'`.
"""

from __future__ import annotations

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from encharge_async import Encharge

encharge = Encharge()  # one per process, shared by every thread
app = Flask(__name__)


@app.post("/signup")
def signup() -> ResponseReturnValue:
    email = request.args["email"]
    plan = request.args.get("plan", "Free")
    message_id = encharge.track(
        "Registered user", email=email, properties={"plan": plan}
    )  # queued: the response does not wait for Encharge
    return jsonify(message_id=message_id)


@app.post("/users/<user_id>/upgrade")
def upgrade(user_id: str) -> ResponseReturnValue:
    plan = request.args["plan"]
    encharge.identify(user_id=user_id, user={"plan": plan})
    message_id = encharge.track("Upgraded", user_id=user_id, properties={"plan": plan})
    return jsonify(message_id=message_id)
