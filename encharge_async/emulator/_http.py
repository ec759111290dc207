"""Minimal ASGI plumbing: types, header lookup, body reading and JSON responses."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Body",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "encode_json",
    "header",
    "read_body",
    "send_json",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def header(scope: Scope, name: bytes) -> str | None:
    """Return the first value of header `name` (lower-case bytes), decoded as latin-1.

    ASGI servers lower-case header names; a mixed-case name is compared lower-cased too.
    """
    for key, value in scope.get("headers", ()):
        if key == name or (not key.islower() and key.lower() == name):
            return bytes(value).decode("latin-1")
    return None


@dataclass(frozen=True)
class Body:
    """A request body read up to a limit: `data` is empty when `too_large` is true.

    `size` is how many bytes arrived, kept or not.
    """

    data: bytes
    too_large: bool
    disconnected: bool
    size: int = 0


async def read_body(receive: Receive, limit: int) -> Body:
    """Read the whole request body, keeping at most `limit` bytes.

    A larger body is drained and discarded so the connection stays usable.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return Body(b"", too_large=size > limit, disconnected=True, size=size)
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        else:
            chunks.clear()
        if not message.get("more_body", False):
            break
    if size > limit:
        return Body(b"", too_large=True, disconnected=False, size=size)
    return Body(b"".join(chunks), too_large=False, disconnected=False, size=size)


def encode_json(payload: object) -> bytes:
    """Encode `payload` as compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


async def send_json(
    send: Send,
    status: int,
    payload: object,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> None:
    """Send a complete JSON response."""
    body = encode_json(payload)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
