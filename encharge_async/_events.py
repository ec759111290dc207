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
        "_message_id",
        "_retry_state",
        "_spooled",
        "_state",
        "_waiter",
        "_waiting",
        "attempts",
        "body",
        "lanes",
        "name",
        "seq",
    )

    name: str
    body: bytes
    lanes: tuple[int, ...]
    attempts: int
    # 0 until the event is queued; then its place in a process-wide sequence (flush() and
    # the retry heap compare them), which also makes its message id.
    seq: int
    _message_id: str | None
    _deadline: float
    _retry_state: Any
    _waiting: int  # set by Lanes.admit
    _spooled: bool  # set when the event goes through the spool; read with getattr

    # Only what every event needs is set here: this runs on the caller's line. `_deadline`
    # (set by the worker at the first attempt), `_retry_state` (on the first retry) and
    # `_waiting` (when it is queued) are written before they are read.
    def __init__(
        self, name: str, body: bytes, lanes: tuple[int, ...], message_id: str | None = None
    ) -> None:
        self._message_id = message_id
        self.name = name
        self.body = body
        self.lanes = lanes
        self.attempts = 0
        self.seq = 0
        self._state = QUEUED
        self._waiter: Any = None  # set by the client when a caller awaits the outcome

    @property
    def size(self) -> int:
        """Bytes of `body`."""
        return len(self.body)

    @property
    def message_id(self) -> str:
        """The event's unique id, sent as the `Idempotency-Key` header on every attempt."""
        message_id = self._message_id
        if message_id is None:
            # A queued event's id is spelled out from its sequence number when asked for, not
            # stored: that saves ~85 bytes per queued event. One asked for earlier is kept.
            if self.seq:
                return f"{_prefix}{self.seq}"
            message_id = self._message_id = f"{_prefix}{next(sequence)}"
        return message_id

    @property
    def ordering_keys(self) -> tuple[str, ...]:
        """The identifiers ordering this event (`u:<userId>`, `e:<email>`, `o:<type>:<id>`).

        Spelled out from `body` when asked for (the spool stores them); the queue keeps
        only their hashes, `lanes`.
        """
        return _ordering_keys(self.payload)

    @property
    def payload(self) -> dict[str, Any]:
        """The event body decoded from JSON (a new dict on each access)."""
        result: dict[str, Any] = _json.loads(self.body)
        return result

    def __repr__(self) -> str:
        return f"<Event {self.name!r} message_id={self.message_id!r} size={self.size}>"


def _message_id_prefix() -> str:
    # 24 characters of a UUID4 (random per process), followed by the event's 12-digit
    # sequence number: unique, UUID-shaped, and twenty times cheaper than uuid4() per event.
    return str(uuid.uuid4())[:24]


_prefix = _message_id_prefix()
# Process-wide event numbers: `Event.seq` of queued events, and the tail of message ids.
# Decimal digits are hex digits too: from 10**11, ids are 36 characters long (the shape of
# a UUID) for the first 9 * 10**11 events, and str() is twice as fast as a format.
sequence = itertools.count(10**11)
_LANE_MASK: Final = (1 << 30) - 1


def _reset_message_ids_after_fork() -> None:
    # A new prefix keeps the child's ids apart from the parent's; the sequence may go on.
    # (Events queued before the fork are not the child's: its clients start empty.)
    global _prefix
    _prefix = _message_id_prefix()


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent only on Windows
    os.register_at_fork(after_in_child=_reset_message_ids_after_fork)


def lanes_of(keys: tuple[str, ...]) -> tuple[int, ...]:
    """The ordering lanes of string ordering keys (as the spool stores them).

    A lane is 30 bits of the hash of the identifier without its `u:`/`e:`/`o:` tag: a 28-byte
    int instead of a string of 60-80 bytes, computed on the caller's line without building
    the tagged string. Identifiers sharing a lane only have their events go in order (a few
    pairs among the 20,000 identifiers of a full default queue): harmless.
    """
    return tuple(dict.fromkeys(hash(key[2:]) & _LANE_MASK for key in keys))


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
) -> tuple[dict[str, Any], tuple[int, ...]]:
    """Merge the email / user_id keywords into a copy of `user`, validating identifiers.

    Returns the person and its ordering lanes: one per identifier, so that events sharing
    either identifier stay in order (see `lanes_of`).
    """
    if user is not None:
        merged = _person_from_mapping(user, email, user_id, field)
        return merged, lanes_of(_person_keys(merged))
    # The common case, kept to plain type checks: it runs on every call.
    person: dict[str, Any] = {}
    if email is not None:
        if email.__class__ is not str or "@" not in email:
            _check_email(email, "email")
        person["email"] = email
    if user_id is not None:
        cls = user_id.__class__
        if cls is str:
            if not user_id or user_id.isspace():  # type: ignore[union-attr]
                _check_user_id(user_id, "user_id")
            lane = hash(user_id) & _LANE_MASK
        else:
            lane = hash(str(_check_user_id(user_id, "user_id"))) & _LANE_MASK
        person["userId"] = user_id
        if email is not None:
            email_lane = hash(email.lower()) & _LANE_MASK
            # Equal when the user id is the email (or the hashes collide): one lane, not two.
            return person, (lane, email_lane) if email_lane != lane else (lane,)
        return person, (lane,)
    if email is not None:
        return person, (hash(email.lower()) & _LANE_MASK,)
    return person, ()


def _person_from_mapping(
    user: Mapping[str, Any],
    email: str | None,
    user_id: str | int | None,
    field: str,
) -> dict[str, Any]:
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
    return person


def _person_keys(person: Mapping[str, Any]) -> tuple[str, ...]:
    """Ordering keys: every identifier of the person (events sharing one stay in order)."""
    user_id = person.get("userId")
    email = person.get("email")
    keys: tuple[str, ...] = ()
    if user_id is not None:
        keys = (f"u:{user_id}",)
    if isinstance(email, str):
        keys += (f"e:{email.lower()}",)
    return keys


def _ordering_keys(payload: Mapping[str, Any]) -> tuple[str, ...]:
    """The ordering keys of an event, from its wire payload (what the builders computed)."""
    user = payload.get("user")
    keys = _person_keys(user) if isinstance(user, Mapping) else ()
    kind = payload.get("type")
    if kind == "alias":
        previous = {"userId": payload.get("previousUserId"), "email": payload.get("previousEmail")}
        keys = _person_keys(previous) + keys
    elif kind == "group":
        fields = payload.get("properties")
        if isinstance(fields, Mapping):
            object_id = fields.get("externalId", fields.get("id"))
            if object_id is not None:
                keys += (f"o:{payload.get('objectType')}:{object_id}",)
    return tuple(dict.fromkeys(keys))


def _finish(
    name: str,
    wire: dict[str, Any],
    lanes: tuple[int, ...],
    max_bytes: int,
    message_id: str | None,
) -> Event:
    body = _json.dumps(wire)
    if len(body) > max_bytes:
        raise _too_large(name, body, max_bytes)
    if message_id is not None:
        _check_message_id(message_id)
    return Event(name, body, lanes, message_id)


def _too_large(name: str, body: bytes, max_bytes: int) -> ValidationError:
    return ValidationError(
        f"event {name!r} is {len(body)} bytes serialised, over max_event_bytes={max_bytes}"
    )


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
    if (
        user is None
        and email.__class__ is str
        and user_id.__class__ is str
        and "@" in email
        and user_id
        and not user_id.isspace()
    ):
        # The usual call (both identifiers, as strings) without the call into `_person`:
        # what it would return, 3% of the call's cost cheaper.
        person: dict[str, Any] = {"email": email, "userId": user_id}
        lane = hash(user_id) & _LANE_MASK
        email_lane = hash(email.lower()) & _LANE_MASK
        lanes: tuple[int, ...] = (lane, email_lane) if email_lane != lane else (lane,)
    else:
        person, lanes = _person(user, email, user_id, "user")
        if not lanes:
            raise ValidationError(
                f"event {name!r} needs an email or a user_id to identify the person"
            )
    wire: dict[str, Any] = {"name": name, "user": person}
    if properties is not None:
        if properties.__class__ is not dict:
            _check_mapping(properties, "properties")
        wire["properties"] = properties
    if source_ip is not None:
        wire["sourceIp"] = _check_ip(source_ip)
    # `_finish`, inlined: this is the hot path.
    body = _json.dumps(wire)
    if len(body) > max_bytes:
        raise _too_large(name, body, max_bytes)
    if message_id is not None:
        _check_message_id(message_id)
    return Event(name, body, lanes, message_id)


def build_identify(
    *,
    email: str | None,
    user_id: str | int | None,
    user: Mapping[str, Any] | None,
    max_bytes: int,
    message_id: str | None = None,
) -> Event:
    person, lanes = _person(user, email, user_id, "user")
    if not lanes:
        raise ValidationError("identify needs an email or a user_id to identify the person")
    return _finish("identify", {"name": "identify", "user": person}, lanes, max_bytes, message_id)


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
    new_person, new_lanes = _person(None, email, user_id, "user")
    wire: dict[str, Any] = {"type": "alias", "user": new_person}
    previous: dict[str, Any] = {}
    if previous_email is not None:
        previous["email"] = wire["previousEmail"] = _check_email(previous_email, "previous_email")
    if previous_user_id is not None:
        previous["userId"] = wire["previousUserId"] = _check_user_id(
            previous_user_id, "previous_user_id"
        )
    # An alias orders after everything queued for the old identifiers and before everything
    # queued later for the new ones, so it carries both sets of lanes.
    lanes = tuple(dict.fromkeys(lanes_of(_person_keys(previous)) + new_lanes))
    return _finish("alias", wire, lanes, max_bytes, message_id)


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
    lanes: tuple[int, ...] = ()
    if user is not None or email is not None or user_id is not None:
        person, lanes = _person(user, email, user_id, "user")
        if not lanes:
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
        lanes = tuple(dict.fromkeys((*lanes, *lanes_of((f"o:{object_type}:{object_id}",)))))
    return _finish("group", wire, lanes, max_bytes, message_id)


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
