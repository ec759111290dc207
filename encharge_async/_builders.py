"""Building events: validation, the wire format, serialisation, ordering lanes.

One builder per kind of event (track, identify, alias, group); each returns the queue's
`Entry`. Everything here runs on the caller's line, so a bad event raises
`ValidationError` there and the caller may mutate its dicts as soon as the call returns.
A new kind of event is a new builder here plus its public methods (docs/design.md).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from typing import Any

from . import _json
from ._constants import MAX_IP_ADDRESS_CHARS, MAX_MESSAGE_ID_CHARS
from ._events import Entry
from ._exceptions import ValidationError
from ._ordering import LANE_MASK, ordering_lanes, person_lanes
from ._text import quote

__all__ = [
    "build_alias",
    "build_group",
    "build_identify",
    "build_track",
    "check_message_id",
    "check_timeout",
    "describe",
    "entry_from_wire",
]


def _check_email(email: object, field: str) -> str:
    if not isinstance(email, str) or "@" not in email:
        raise ValidationError(
            f"{field} must be an email address (a string with '@'), got {describe(email)}"
        )
    return email


def _check_user_id(user_id: object, field: str) -> str | int:
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise ValidationError(f"{field} must be a string or an int, got {describe(user_id)}")
    if isinstance(user_id, str) and (not user_id or user_id.isspace()):
        raise ValidationError(f"{field} must not be empty")
    return user_id


def describe(value: object) -> str:
    """A value for an error message: its type and a shortened, escaped repr (`_text.quote`)."""
    return f"{type(value).__name__} {quote(value)}"


def _check_mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(f"{field} must be a dict, got {describe(value)}")
    return value


def _person(
    user: Mapping[str, Any] | None,
    email: str | None,
    user_id: str | int | None,
    field: str,
) -> dict[str, Any]:
    """Merge the email / user_id keywords into a copy of `user`, validating identifiers."""
    if user is not None:
        return _person_from_mapping(user, email, user_id, field)
    # The common case, kept to plain type checks: it runs on every call.
    person: dict[str, Any] = {}
    if email is not None:
        if email.__class__ is not str or "@" not in email:
            _check_email(email, "email")
        person["email"] = email
    if user_id is not None:
        if user_id.__class__ is not str or not user_id or user_id.isspace():
            _check_user_id(user_id, "user_id")
        person["userId"] = user_id
    return person


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
            # Field names say enough: the addresses are personal data, kept out of errors.
            raise ValidationError(f"email conflicts with {field}['email']")
        person["email"] = email
    if user_id is not None:
        known = person.get("userId")
        if known is not None and known != user_id:
            raise ValidationError(f"user_id conflicts with {field}['userId']")
        person["userId"] = user_id
    if "email" in person:
        _check_email(person["email"], f"{field}.email")
    if "userId" in person:
        _check_user_id(person["userId"], f"{field}.userId")
    tags = person.get("tags")
    if tags is not None and not isinstance(tags, str):
        raise ValidationError(
            f"{field}.tags must be a comma-separated string such as 'vip, beta', "
            f"got {describe(tags)}"
        )
    return person


def _finish(name: str, wire: dict[str, Any], max_bytes: int, message_id: str | None) -> Entry:
    """Serialise the wire form and make the queue's entry, with its ordering lanes."""
    body = _serialise(name, wire, max_bytes)
    if message_id is not None:
        check_message_id(message_id)
    return Entry(name, body, ordering_lanes(wire), message_id)


def _serialise(name: str, wire: dict[str, Any], max_bytes: int) -> bytes:
    """The wire form's JSON; an event over `max_bytes` is refused, far over it unserialised."""
    size = _json.plain_size(wire, max_bytes)
    if size < 0:
        size = _json.size_bound(wire, max_bytes)
        if size > max_bytes:
            raise _too_large(name, size, max_bytes, at_least=True)
        body = _json.dumps(wire)
    elif size > max_bytes:
        raise _too_large(name, size, max_bytes, at_least=True)
    else:
        body = _json.dumps_plain(wire)
    if len(body) > max_bytes:
        raise _too_large(name, len(body), max_bytes)
    return body


def entry_from_wire(name: str, body: bytes, message_id: str, attempts: int) -> Entry:
    """The entry of an event read back (from the spool): checked as if it were new.

    What was stored is not trusted: the message id goes into a request header and the body
    onto the wire, so both are validated again here, where the bytes are made.
    """
    check_message_id(message_id)
    try:
        wire = _json.loads(body)
    except ValueError:
        raise ValidationError(f"event {message_id}: its body is not valid JSON") from None
    if not isinstance(wire, dict):
        raise ValidationError(f"event {message_id}: its body is not a JSON object")
    lanes = ordering_lanes(wire)
    if not lanes and wire.get("type") != "group":
        raise ValidationError(f"event {message_id}: its body names no person")
    return Entry(name, body, lanes, message_id, attempts)


def _too_large(name: str, size: int, max_bytes: int, *, at_least: bool = False) -> ValidationError:
    # `at_least`: refused from a lower bound of its size, before serialising it.
    what = f"at least {size} bytes, refused before serialising" if at_least else f"{size} bytes"
    return ValidationError(f"event {quote(name)} is {what}, over max_event_bytes={max_bytes}")


def check_message_id(message_id: object) -> None:
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
            f"without spaces, got {describe(message_id)}"
        )


def check_timeout(timeout: object) -> None:
    """A call's `timeout=`: None, or a finite number of seconds >= 0 (every wait has a
    bound; a thread cannot wait longer than `threading.TIMEOUT_MAX` anyway)."""
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 <= timeout < math.inf  # also refuses NaN
    ):
        raise ValidationError(
            f"timeout must be a finite number of seconds >= 0, got {describe(timeout)}"
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
) -> Entry:
    if not isinstance(name, str) or not name or name.isspace():
        raise ValidationError(f"name must be a non-empty string, got {describe(name)}")
    if not (
        user is None
        and email.__class__ is str
        and user_id.__class__ is str
        and "@" in email
        and user_id
        and not user_id.isspace()
    ):
        return _build_other_track(
            name, email, user_id, user, properties, source_ip, max_bytes, message_id
        )
    # The usual call (both identifiers, as strings), inline: the hot path
    # (docs/performance.md). Its size is bounded before the identifiers are lowered and
    # hashed for the lanes and before serialising: the strings seen here count at C level,
    # the properties' first level is `_json.plain_size`'s, inline.
    if properties is None:
        size = len(name) + len(email) + len(user_id)
        wire: dict[str, Any] = {"name": name, "user": {"email": email, "userId": user_id}}
    elif properties.__class__ is dict:
        size = len(name) + len(email) + len(user_id) + len(properties)
        for value in properties.values():
            if type(value) is str:
                size += len(value)
            elif value is True or value is False or value is None or type(value) is int:
                pass
            elif type(value) is dict or type(value) is list or type(value) is tuple:
                extra = _json.container_size(value, max_bytes)
                if extra < 0:  # not plain JSON: the careful walk and serialiser
                    return _build_other_track(
                        name, email, user_id, user, properties, source_ip, max_bytes, message_id
                    )
                size += extra
            elif not (type(value) is float and value - value == 0.0):
                return _build_other_track(
                    name, email, user_id, user, properties, source_ip, max_bytes, message_id
                )
        wire = {
            "name": name,
            "user": {"email": email, "userId": user_id},
            "properties": properties,
        }
    else:
        return _build_other_track(
            name, email, user_id, user, properties, source_ip, max_bytes, message_id
        )
    if source_ip is not None:
        wire["sourceIp"] = _check_ip(source_ip)
    if size > max_bytes:
        raise _too_large(name, size, max_bytes, at_least=True)
    body = _json.dumps_plain(wire)
    if len(body) > max_bytes:
        raise _too_large(name, len(body), max_bytes)
    if message_id is not None:
        check_message_id(message_id)
    # `person_lanes(user_id, email)` for two strings, inline (a property test checks that
    # these lanes equal those of the same event read back from the spool).
    lane = hash(user_id) & LANE_MASK
    email_lane = hash(email.lower()) & LANE_MASK
    return Entry(name, body, (lane, email_lane) if email_lane != lane else (lane,), message_id)


def _build_other_track(
    name: str,
    email: str | None,
    user_id: str | int | None,
    user: Mapping[str, Any] | None,
    properties: Mapping[str, Any] | None,
    source_ip: str | None,
    max_bytes: int,
    message_id: str | None,
) -> Entry:
    """`build_track` beyond the usual call: any person, any properties, walked whole."""
    person = _person(user, email, user_id, "user")
    if "userId" not in person and "email" not in person:
        raise ValidationError(
            f"event {quote(name)} needs an email or a user_id to identify the person"
        )
    wire: dict[str, Any] = {"name": name, "user": person}
    if properties is not None:
        if properties.__class__ is not dict:
            _check_mapping(properties, "properties")
        wire["properties"] = properties
    if source_ip is not None:
        wire["sourceIp"] = _check_ip(source_ip)
    body = _serialise(name, wire, max_bytes)
    if message_id is not None:
        check_message_id(message_id)
    lanes = person_lanes(person.get("userId"), person.get("email"))
    return Entry(name, body, lanes, message_id)


def build_identify(
    *,
    email: str | None,
    user_id: str | int | None,
    user: Mapping[str, Any] | None,
    max_bytes: int,
    message_id: str | None = None,
) -> Entry:
    person = _person(user, email, user_id, "user")
    if "userId" not in person and "email" not in person:
        raise ValidationError("identify needs an email or a user_id to identify the person")
    return _finish("identify", {"name": "identify", "user": person}, max_bytes, message_id)


def build_alias(
    *,
    previous_email: str | None,
    previous_user_id: str | int | None,
    email: str | None,
    user_id: str | int | None,
    max_bytes: int,
    message_id: str | None = None,
) -> Entry:
    if previous_email is None and previous_user_id is None:
        raise ValidationError("alias needs previous_email or previous_user_id (the old identifier)")
    if email is None and user_id is None:
        raise ValidationError("alias needs email or user_id (the new identifier)")
    wire: dict[str, Any] = {"type": "alias", "user": _person(None, email, user_id, "user")}
    if previous_email is not None:
        wire["previousEmail"] = _check_email(previous_email, "previous_email")
    if previous_user_id is not None:
        wire["previousUserId"] = _check_user_id(previous_user_id, "previous_user_id")
    # Its lanes (ordering_keys) hold the old identifiers and the new ones: it goes after
    # everything queued for the old ones and before everything queued later for the new.
    return _finish("alias", wire, max_bytes, message_id)


def build_group(
    object_type: str,
    properties: Mapping[str, Any],
    *,
    email: str | None,
    user_id: str | int | None,
    user: Mapping[str, Any] | None,
    max_bytes: int,
    message_id: str | None = None,
) -> Entry:
    if not isinstance(object_type, str) or not object_type.strip():
        raise ValidationError(
            f"object_type must be a non-empty string, got {describe(object_type)}"
        )
    fields = _check_mapping(properties, "properties")
    wire: dict[str, Any] = {"type": "group", "objectType": object_type, "properties": fields}
    if user is not None or email is not None or user_id is not None:
        person = _person(user, email, user_id, "user")
        if "userId" not in person and "email" not in person:
            raise ValidationError("group's user needs an email or a user_id")
        wire["user"] = person
    for id_field in ("id", "externalId"):
        value = fields.get(id_field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise ValidationError(
                f"properties.{id_field} must be a string or an int, got {describe(value)}"
            )
    # Updates of one object (by externalId, else Encharge's id) stay in order too: its
    # ordering keys name the object.
    return _finish("group", wire, max_bytes, message_id)


def _check_ip(source_ip: object) -> str:
    if not isinstance(source_ip, str):
        raise ValidationError(f"source_ip must be a string, got {describe(source_ip)}")
    try:
        # Bounded first: parsing splits the text, a copy of a huge one.
        if len(source_ip) > MAX_IP_ADDRESS_CHARS:
            raise ValueError
        ipaddress.ip_address(source_ip)
    except ValueError:
        raise ValidationError(
            f"source_ip must be an IPv4 or IPv6 address, got {quote(source_ip)}"
        ) from None
    return source_ip
