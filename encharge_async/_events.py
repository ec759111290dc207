"""Events: validation, serialisation to the wire format, message ids and ordering keys.

Everything here runs on the caller's line, so a bad event raises `ValidationError` there
and the caller may mutate its dicts as soon as the call returns.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import reprlib
import uuid
from collections.abc import Mapping
from typing import Any, Final

from . import _json
from ._constants import MAX_MESSAGE_ID_CHARS
from ._exceptions import ValidationError

__all__ = ["Event", "build_alias", "build_group", "build_identify", "build_track"]

# Event states; ints keep the worker's comparisons cheap.
QUEUED: Final = 0
IN_FLIGHT: Final = 1
DELIVERED: Final = 2
FAILED: Final = 3
DROPPED: Final = 4


class Event:
    """One event accepted by the client, as it travels through the queue.

    Hooks receive it. Public, read-only attributes: `message_id` (also the `Idempotency-Key`
    header), `name` (the event name, or "alias" / "group"), `body` (the JSON sent, bytes),
    `size` (len of `body`) and `attempts` (requests made so far).
    """

    __slots__ = (
        "_deadline",
        "_error",
        "_retry_state",
        "_spooled",
        "_state",
        "_waiter",
        "_waiting",
        "attempts",
        "body",
        "keys",
        "message_id",
        "name",
        "seq",
        "size",
    )

    message_id: str
    name: str
    body: bytes
    size: int
    keys: tuple[str, ...]
    attempts: int
    seq: int
    _deadline: float
    _retry_state: Any
    _error: Exception | None
    _waiting: int  # set by Lanes.admit
    _spooled: bool  # set when the event goes through the spool; read with getattr

    # Only what every event needs is set here: this runs on the caller's line. `_deadline`
    # (set by the worker at the first attempt), `_retry_state` (on the first retry),
    # `_error` (when it fails, or when a caller waits) and `_waiting` (when it is queued)
    # are written before they are read.
    def __init__(
        self, name: str, body: bytes, keys: tuple[str, ...], message_id: str | None = None
    ) -> None:
        # A per-process random prefix and a counter: unique, and cheap on every call.
        self.message_id = _prefix + str(next(_counter)) if message_id is None else message_id
        self.name = name
        self.body = body
        self.size = len(body)
        self.keys = keys
        self.attempts = 0
        self.seq = 0
        self._state = QUEUED
        self._waiter: Any = None

    @property
    def payload(self) -> dict[str, Any]:
        """The event body decoded from JSON (a new dict on each access)."""
        result: dict[str, Any] = _json.loads(self.body)
        return result

    def __repr__(self) -> str:
        return f"<Event {self.name!r} message_id={self.message_id!r} size={self.size}>"


def _message_id_prefix() -> str:
    # 24 characters of a UUID4 (random per process), followed by a 12-digit counter: unique,
    # shaped like a UUID, and twenty times cheaper than uuid4() per event.
    return str(uuid.uuid4())[:24]


# Decimal digits are hex digits too: counting from 10**11 keeps ids 36 characters long (the
# shape of a UUID) for the first 9 * 10**11 events, and str() is twice as fast as a format.
_COUNTER_START = 10**11
_prefix = _message_id_prefix()
_counter = itertools.count(_COUNTER_START)


def _reset_message_ids_after_fork() -> None:
    global _prefix, _counter
    _prefix = _message_id_prefix()
    _counter = itertools.count(_COUNTER_START)


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(after_in_child=_reset_message_ids_after_fork)


def _check_email(email: object, field: str) -> str:
    if not isinstance(email, str) or "@" not in email:
        raise ValidationError(
            f"{field} must be an email address (a string with '@'), got {_describe(email)}"
        )
    return email


def _check_user_id(user_id: object, field: str) -> str | int:
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise ValidationError(f"{field} must be a string or an int, got {_describe(user_id)}")
    if isinstance(user_id, str) and (not user_id or user_id.isspace()):
        raise ValidationError(f"{field} must not be empty")
    return user_id


_short_repr = reprlib.Repr()
_short_repr.maxlevel = 3
_short_repr.maxstring = _short_repr.maxother = 40


def _describe(value: object) -> str:
    # reprlib: bounded depth and length, so a huge or deeply nested value cannot turn the
    # error message itself into a RecursionError.
    text = _short_repr.repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _check_mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(f"{field} must be a dict, got {_describe(value)}")
    return value


def _person(
    user: Mapping[str, Any] | None,
    email: str | None,
    user_id: str | int | None,
    field: str,
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Merge the email / user_id keywords into a copy of `user`, validating identifiers.

    Returns the person and its ordering keys: one per identifier, so that events sharing
    either identifier stay in order.
    """
    if user is not None:
        return _person_from_mapping(user, email, user_id, field)
    # The common case, kept to plain type checks: it runs on every call.
    person: dict[str, Any] = {}
    if email is not None:
        if email.__class__ is not str or "@" not in email:
            _check_email(email, "email")
        person["email"] = email
    if user_id is not None:
        cls = user_id.__class__
        if not (cls is int or (cls is str and user_id and not user_id.isspace())):  # type: ignore[union-attr]
            _check_user_id(user_id, "user_id")
        person["userId"] = user_id
        if email is not None:
            return person, (f"u:{user_id}", f"e:{email.lower()}")
        return person, (f"u:{user_id}",)
    if email is not None:
        return person, (f"e:{email.lower()}",)
    return person, ()


def _person_from_mapping(
    user: Mapping[str, Any],
    email: str | None,
    user_id: str | int | None,
    field: str,
) -> tuple[dict[str, Any], tuple[str, ...]]:
    person = dict(_check_mapping(user, field))
    if email is not None:
        known = person.get("email")
        if known is not None and known != email:
            raise ValidationError(f"email={email!r} conflicts with {field}['email']={known!r}")
        person["email"] = email
    if user_id is not None:
        known = person.get("userId")
        if known is not None and known != user_id:
            raise ValidationError(f"user_id={user_id!r} conflicts with {field}['userId']={known!r}")
        person["userId"] = user_id
    if "email" in person:
        _check_email(person["email"], f"{field}.email")
    if "userId" in person:
        _check_user_id(person["userId"], f"{field}.userId")
    tags = person.get("tags")
    if tags is not None and not isinstance(tags, str):
        raise ValidationError(
            f"{field}.tags must be a comma-separated string such as 'vip, beta', "
            f"got {_describe(tags)}"
        )
    return person, _person_keys(person)


def _person_keys(person: Mapping[str, Any]) -> tuple[str, ...]:
    """Ordering keys: every identifier of the person (events sharing one stay in order)."""
    user_id = person.get("userId")
    email = person.get("email")
    if user_id is not None:
        if email is not None:
            return (f"u:{user_id}", f"e:{email.lower()}")
        return (f"u:{user_id}",)
    if email is not None:
        return (f"e:{email.lower()}",)
    return ()


def _finish(
    name: str,
    wire: dict[str, Any],
    keys: tuple[str, ...],
    max_bytes: int,
    message_id: str | None,
) -> Event:
    body = _json.dumps(wire)
    if len(body) > max_bytes:
        raise ValidationError(
            f"event {name!r} is {len(body)} bytes serialised, over max_event_bytes={max_bytes}"
        )
    if message_id is not None:
        _check_message_id(message_id)
    return Event(name, body, keys, message_id)


def _check_message_id(message_id: object) -> None:
    # It travels as the Idempotency-Key header: printable ASCII, no spaces, bounded.
    if (
        not isinstance(message_id, str)
        or not 0 < len(message_id) <= MAX_MESSAGE_ID_CHARS
        or not message_id.isascii()
        or not message_id.isprintable()
        or " " in message_id
    ):
        raise ValidationError(
            f"message_id must be 1 to {MAX_MESSAGE_ID_CHARS} printable ASCII characters "
            f"without spaces, got {_describe(message_id)}"
        )


def build_track(
    name: str,
    *,
    email: str | None,
    user_id: str | int | None,
    user: Mapping[str, Any] | None,
    properties: Mapping[str, Any] | None,
    source_ip: str | None,
    max_bytes: int,
    message_id: str | None = None,
) -> Event:
    if not isinstance(name, str) or not name or name.isspace():
        raise ValidationError(f"name must be a non-empty string, got {_describe(name)}")
    person, keys = _person(user, email, user_id, "user")
    if not keys:
        raise ValidationError(f"event {name!r} needs an email or a user_id to identify the person")
    wire: dict[str, Any] = {"name": name, "user": person}
    if properties is not None:
        if properties.__class__ is not dict:
            _check_mapping(properties, "properties")
        wire["properties"] = properties
    if source_ip is not None:
        wire["sourceIp"] = _check_ip(source_ip)
    return _finish(name, wire, keys, max_bytes, message_id)


def build_identify(
    *,
    email: str | None,
    user_id: str | int | None,
    user: Mapping[str, Any] | None,
    max_bytes: int,
    message_id: str | None = None,
) -> Event:
    person, keys = _person(user, email, user_id, "user")
    if not keys:
        raise ValidationError("identify needs an email or a user_id to identify the person")
    return _finish("identify", {"name": "identify", "user": person}, keys, max_bytes, message_id)


def build_alias(
    *,
    previous_email: str | None,
    previous_user_id: str | int | None,
    email: str | None,
    user_id: str | int | None,
    max_bytes: int,
    message_id: str | None = None,
) -> Event:
    if previous_email is None and previous_user_id is None:
        raise ValidationError("alias needs previous_email or previous_user_id (the old identifier)")
    if email is None and user_id is None:
        raise ValidationError("alias needs email or user_id (the new identifier)")
    new_person, new_keys = _person(None, email, user_id, "user")
    wire: dict[str, Any] = {"type": "alias", "user": new_person}
    previous: dict[str, Any] = {}
    if previous_email is not None:
        previous["email"] = wire["previousEmail"] = _check_email(previous_email, "previous_email")
    if previous_user_id is not None:
        previous["userId"] = wire["previousUserId"] = _check_user_id(
            previous_user_id, "previous_user_id"
        )
    # An alias orders after everything queued for the old identifiers and before everything
    # queued later for the new ones, so it carries both sets of keys.
    keys = _person_keys(previous) + new_keys
    return _finish("alias", wire, tuple(dict.fromkeys(keys)), max_bytes, message_id)


def build_group(
    object_type: str,
    properties: Mapping[str, Any],
    *,
    email: str | None,
    user_id: str | int | None,
    user: Mapping[str, Any] | None,
    max_bytes: int,
    message_id: str | None = None,
) -> Event:
    if not isinstance(object_type, str) or not object_type.strip():
        raise ValidationError(
            f"object_type must be a non-empty string, got {_describe(object_type)}"
        )
    fields = _check_mapping(properties, "properties")
    wire: dict[str, Any] = {"type": "group", "objectType": object_type, "properties": fields}
    keys: tuple[str, ...] = ()
    if user is not None or email is not None or user_id is not None:
        person, keys = _person(user, email, user_id, "user")
        if not keys:
            raise ValidationError("group's user needs an email or a user_id")
        wire["user"] = person
    for id_field in ("id", "externalId"):
        value = fields.get(id_field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise ValidationError(
                f"properties.{id_field} must be a string or an int, got {_describe(value)}"
            )
    # Updates of one object (by externalId, else Encharge's id) stay in order too.
    object_id = fields.get("externalId", fields.get("id"))
    if object_id is not None:
        keys += (f"o:{object_type}:{object_id}",)
    return _finish("group", wire, keys, max_bytes, message_id)


def _check_ip(source_ip: object) -> str:
    if not isinstance(source_ip, str):
        raise ValidationError(f"source_ip must be a string, got {_describe(source_ip)}")
    try:
        ipaddress.ip_address(source_ip)
    except ValueError:
        raise ValidationError(
            f"source_ip must be an IPv4 or IPv6 address, got {source_ip!r}"
        ) from None
    return source_ip
