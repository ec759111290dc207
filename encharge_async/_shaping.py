"""Shaping events before they are queued: `default_properties` and `before_send`.

Without either option the client calls the builders directly (no cost); with them, each
call goes through an `EventShaper`, which merges the default properties into `track`
events and passes every event, as its wire-format dict, to `before_send`. What the hook
returns is validated like any event, by the same builders.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._builders import (
    build_alias,
    build_group,
    build_identify,
    build_track,
    check_message_id,
    describe,
)
from ._events import FILTERED, Entry
from ._exceptions import ValidationError
from ._types import BeforeSend

if TYPE_CHECKING:
    from ._config import Config

__all__ = ["EventBuilders", "EventShaper"]

_TOP_LEVEL = {
    "track": frozenset(("name", "user", "properties", "sourceIp")),
    "alias": frozenset(("type", "user", "previousEmail", "previousUserId")),
    "group": frozenset(("type", "objectType", "properties", "user")),
}


class _Filtered(Exception):
    """`before_send` returned None."""


class EventShaper:
    """Builds events through `default_properties` and `before_send`: `track` with either,
    the other kinds only with `before_send` (`EventBuilders` calls the builders otherwise)."""

    def __init__(
        self,
        *,
        max_bytes: int,
        before_send: BeforeSend | None,
        default_properties: Mapping[str, Any] | None,
    ) -> None:
        self._max_bytes = max_bytes
        self._before_send = before_send
        self._defaults = dict(default_properties) if default_properties else None

    @classmethod
    def for_config(cls, config: Config) -> EventShaper | None:
        """The shaper of a client's options; None without shaping (the builders do)."""
        if config.before_send is None and config.default_properties is None:
            return None
        return cls(
            max_bytes=config.max_event_bytes,
            before_send=config.before_send,
            default_properties=config.default_properties,
        )

    def track(
        self,
        name: str,
        email: str | None,
        user_id: str | int | None,
        user: Mapping[str, Any] | None,
        properties: Mapping[str, Any] | None,
        source_ip: str | None,
        max_bytes: int,
        message_id: str | None = None,
    ) -> Entry:
        """`build_track`, shaped (the same signature, so the client can use either)."""
        if self._defaults is not None:
            if properties is None:
                properties = self._defaults
            elif isinstance(properties, Mapping):
                properties = {**self._defaults, **properties}  # the call's own win
        if self._before_send is None:
            return build_track(
                name, email, user_id, user, properties, source_ip, max_bytes, message_id
            )
        wire: dict[str, Any] = {"name": name, "user": _raw_person(user, email, user_id)}
        if properties is not None:
            wire["properties"] = properties
        if source_ip is not None:
            wire["sourceIp"] = source_ip
        return self._shaped(wire, message_id)

    def identify(
        self,
        *,
        email: str | None,
        user_id: str | int | None,
        user: Mapping[str, Any] | None,
        max_bytes: int,
        message_id: str | None = None,
    ) -> Entry:
        wire = {"name": "identify", "user": _raw_person(user, email, user_id)}
        return self._shaped(wire, message_id)

    def alias(
        self,
        *,
        previous_email: str | None,
        previous_user_id: str | int | None,
        email: str | None,
        user_id: str | int | None,
        max_bytes: int,
        message_id: str | None = None,
    ) -> Entry:
        wire: dict[str, Any] = {"type": "alias", "user": _raw_person(None, email, user_id)}
        if previous_email is not None:
            wire["previousEmail"] = previous_email
        if previous_user_id is not None:
            wire["previousUserId"] = previous_user_id
        return self._shaped(wire, message_id)

    def group(
        self,
        object_type: str,
        properties: Mapping[str, Any],
        *,
        email: str | None,
        user_id: str | int | None,
        user: Mapping[str, Any] | None,
        max_bytes: int,
        message_id: str | None = None,
    ) -> Entry:
        wire: dict[str, Any] = {"type": "group", "objectType": object_type}
        wire["properties"] = dict(properties) if isinstance(properties, Mapping) else properties
        if user is not None or email is not None or user_id is not None:
            wire["user"] = _raw_person(user, email, user_id)
        return self._shaped(wire, message_id)

    def _call_hook(self, wire: dict[str, Any]) -> dict[str, Any]:
        assert self._before_send is not None
        try:
            result = self._before_send(wire)
        except Exception as exc:
            what = describe(wire.get("name") or wire.get("type"))
            raise ValidationError(
                f"before_send raised {type(exc).__name__} for event {what}: {exc}"[:300]
            ) from exc
        if result is None:
            raise _Filtered
        if not isinstance(result, dict):
            raise ValidationError(
                f"before_send must return the event's dict or None, got {describe(result)}"
            )
        return result

    def _shaped(self, wire: dict[str, Any], message_id: str | None) -> Entry:
        """Pass the wire form through `before_send`; build what it returns.

        A filtered event is an entry in the FILTERED state: the intake counts it and lets
        it go (the call still returns a message id).
        """
        if message_id is not None:  # the caller's, whatever the hook does: checked first
            check_message_id(message_id)
        try:
            shaped = self._call_hook(wire)
        except _Filtered:
            entry = Entry(str(wire.get("name") or wire.get("type")), b"", (), message_id)
            entry.state = FILTERED
            return entry
        try:
            return self._from_wire(shaped, message_id)
        except ValidationError as exc:
            if str(exc).startswith("before_send"):
                raise
            # Say whose event it is: the caller's was valid, the hook's result is not.
            raise ValidationError(f"the event before_send returned cannot be sent: {exc}") from exc

    def _from_wire(self, wire: dict[str, Any], message_id: str | None) -> Entry:
        """Validate and build what `before_send` returned, with the builders."""
        kind = wire.get("type")
        shape = "alias" if kind == "alias" else "group" if kind == "group" else "track"
        unknown = sorted(str(key) for key in wire.keys() - _TOP_LEVEL[shape])
        if unknown:
            raise ValidationError(
                f"before_send returned unknown top-level field(s) {', '.join(unknown)[:200]}; "
                "the Ingest API takes name, user, properties, sourceIp (and type, "
                "objectType, previousEmail, previousUserId for alias and group)"
            )
        user = wire.get("user")
        if user is not None and not isinstance(user, Mapping):
            raise ValidationError(f"user must be a dict, got {describe(user)}")
        max_bytes = self._max_bytes
        if shape == "alias":
            extra = sorted(str(key) for key in (user or {}).keys() - {"email", "userId"})
            if extra:
                raise ValidationError(
                    f"before_send returned an alias whose user has field(s) "
                    f"{', '.join(extra)[:200]}; an alias's user takes only email and userId"
                )
            return build_alias(
                previous_email=wire.get("previousEmail"),
                previous_user_id=wire.get("previousUserId"),
                email=user.get("email") if user else None,
                user_id=user.get("userId") if user else None,
                max_bytes=max_bytes,
                message_id=message_id,
            )
        if shape == "group":
            return build_group(
                wire.get("objectType"),  # type: ignore[arg-type]
                wire.get("properties"),  # type: ignore[arg-type]
                email=None,
                user_id=None,
                user=user,
                max_bytes=max_bytes,
                message_id=message_id,
            )
        name = wire.get("name")
        if name == "identify" and "properties" not in wire and "sourceIp" not in wire:
            return build_identify(
                email=None,
                user_id=None,
                user=user or {},
                max_bytes=max_bytes,
                message_id=message_id,
            )
        return build_track(
            name,  # type: ignore[arg-type]
            None,
            None,
            user or {},
            wire.get("properties"),
            wire.get("sourceIp"),
            max_bytes,
            message_id,
        )


def _raw_person(
    user: Mapping[str, Any] | None, email: str | None, user_id: str | int | None
) -> dict[str, Any]:
    """The person as the hook sees it, before validation (the builders check it after)."""
    if user is not None and not isinstance(user, Mapping):
        raise ValidationError(f"user must be a dict, got {describe(user)}")
    person: dict[str, Any] = dict(user) if user is not None else {}
    if email is not None:
        person["email"] = email
    if user_id is not None:
        person["userId"] = user_id
    return person


class EventBuilders:
    """The builders a client calls: `_builders`' functions, or an `EventShaper`'s methods
    (the same signatures) when `before_send` or `default_properties` is set, so that a
    client without shaping pays nothing for it. Chosen once, from the client's options."""

    __slots__ = ("alias", "group", "identify", "track")

    def __init__(self, config: Config) -> None:
        shaper = EventShaper.for_config(config)
        self.track = build_track if shaper is None else shaper.track
        # default_properties shapes only track events; the other kinds need before_send.
        hooked = shaper if config.before_send is not None else None
        self.identify = build_identify if hooked is None else hooked.identify
        self.alias = build_alias if hooked is None else hooked.alias
        self.group = build_group if hooked is None else hooked.group
