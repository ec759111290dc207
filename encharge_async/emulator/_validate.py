"""Validation of an ingest body, following what Encharge documents.

A JSON `null` is treated like an absent field. Each check returns an error message
(answered as 400) or None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EVENT_TYPES = ("alias", "group")


def identifier(value: Any) -> str | None:
    """Normalise an email or userId: strings as they are, integers as text, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def _check_id_type(value: Any, where: str, integers: bool) -> str | None:
    if value is None or isinstance(value, str):
        return None
    if integers and isinstance(value, int) and not isinstance(value, bool):
        return None
    kind = "a string or an integer" if integers else "a string"
    return f"{where} must be {kind}."


def _check_user(user: Mapping[str, Any]) -> str | None:
    error = _check_id_type(user.get("email"), "user.email", integers=False) or _check_id_type(
        user.get("userId"), "user.userId", integers=True
    )
    if error:
        return error
    tags = user.get("tags")
    if tags is not None and not isinstance(tags, str):
        return "user.tags must be a comma-separated string."
    return None


def _has_user_id(user: Mapping[str, Any]) -> bool:
    return identifier(user.get("email")) is not None or identifier(user.get("userId")) is not None


def _check_alias(body: Mapping[str, Any], user: Mapping[str, Any]) -> str | None:
    error = _check_id_type(
        body.get("previousEmail"), "previousEmail", integers=False
    ) or _check_id_type(body.get("previousUserId"), "previousUserId", integers=True)
    if error:
        return error
    if identifier(body.get("previousEmail")) is None and (
        identifier(body.get("previousUserId")) is None
    ):
        return "An alias needs previousEmail or previousUserId."
    if not _has_user_id(user):
        return "An alias needs the new user.email or user.userId."
    return None


def _check_group(body: Mapping[str, Any], user: Mapping[str, Any]) -> str | None:
    object_type = body.get("objectType")
    if not isinstance(object_type, str) or not object_type.strip():
        return "A group event needs objectType."
    properties = body.get("properties") or {}
    for key in ("id", "externalId"):
        error = _check_id_type(properties.get(key), f"properties.{key}", integers=True)
        if error:
            return error
    if user and not _has_user_id(user):
        return "user.email or user.userId is required to associate a person."
    return None


def validate(body: Any) -> str | None:
    """Return why `body` is not a valid ingest event, or None if it is."""
    if not isinstance(body, dict):
        return "The body must be a JSON object."
    user = body.get("user")
    if user is None:
        user = {}
    if not isinstance(user, dict):
        return "user must be an object."
    properties = body.get("properties")
    if properties is not None and not isinstance(properties, dict):
        return "properties must be an object."
    error = _check_user(user)
    if error:
        return error
    kind = body.get("type")
    if kind is not None and kind not in EVENT_TYPES:
        return f"Unknown event type {kind!r}: only 'alias' and 'group' exist."
    if kind == "alias":
        return _check_alias(body, user)
    if kind == "group":
        return _check_group(body, user)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        return "name is required (use 'identify' to only update the person)."
    if not _has_user_id(user):
        return "user.email or user.userId is required."
    return None
