"""The people and custom objects that accepted events build up."""

from __future__ import annotations

import copy
import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from ._validate import identifier

__all__ = ["CustomObject", "PeopleModel", "Person"]

# Fields of `user` that identify the person or are handled on their own.
_SPECIAL_USER_FIELDS = frozenset({"email", "userId", "tags"})
# Fields of a group's `properties` that identify the object.
_OBJECT_ID_FIELDS = frozenset({"id", "externalId"})


@dataclass(frozen=True)
class Person:
    """A snapshot of one person.

    `user_id` is always text (a numeric userId 123 becomes "123"). `fields` holds every
    other `user` field sent so far, latest value winning. `events` lists the names of
    the events recorded on the person in arrival order ("identify" is not an event).
    `objects` lists the (object type, object id) pairs the person is associated with.
    """

    id: int
    email: str | None
    user_id: str | None
    fields: dict[str, Any]
    tags: frozenset[str]
    events: tuple[str, ...]
    objects: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy."""
        return {
            "id": self.id,
            "email": self.email,
            "userId": self.user_id,
            "fields": copy.deepcopy(self.fields),
            "tags": sorted(self.tags),
            "events": list(self.events),
            "objects": [{"objectType": t, "id": i} for t, i in self.objects],
        }


@dataclass(frozen=True)
class CustomObject:
    """A snapshot of one custom object (a company, for instance).

    `id` is the id given in `properties.id`, or one the emulator made up ("obj_1", ...).
    `properties` excludes `id` and `externalId`. `people` holds the associated
    `Person.id` values in association order.
    """

    object_type: str
    id: str
    external_id: str | None
    properties: dict[str, Any]
    people: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready copy."""
        return {
            "objectType": self.object_type,
            "id": self.id,
            "externalId": self.external_id,
            "properties": copy.deepcopy(self.properties),
            "people": list(self.people),
        }


@dataclass
class _PersonState:
    id: int
    email: str | None = None
    user_id: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    events: list[tuple[int, str]] = field(default_factory=list)
    objects: list[tuple[str, str]] = field(default_factory=list)

    def snapshot(self) -> Person:
        return Person(
            id=self.id,
            email=self.email,
            user_id=self.user_id,
            fields=copy.deepcopy(self.fields),
            tags=frozenset(self.tags),
            events=tuple(name for _, name in self.events),
            objects=tuple(self.objects),
        )


@dataclass
class _ObjectState:
    object_type: str
    id: str
    external_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    people: list[int] = field(default_factory=list)

    def snapshot(self) -> CustomObject:
        return CustomObject(
            object_type=self.object_type,
            id=self.id,
            external_id=self.external_id,
            properties=copy.deepcopy(self.properties),
            people=tuple(self.people),
        )


def _email_key(email: str) -> str:
    return email.strip().lower()


def _split_tags(tags: str) -> set[str]:
    return {tag.strip() for tag in tags.split(",") if tag.strip()}


class PeopleModel:
    """Applies validated events (identify/track, alias, group) to people and objects."""

    _people: dict[int, _PersonState]
    _by_email: dict[str, int]
    _by_user_id: dict[str, int]
    _objects: dict[tuple[str, str], _ObjectState]
    _by_external_id: dict[tuple[str, str], str]
    _next_person: int
    _next_object: int

    def __init__(self) -> None:
        self.clear()

    # Queries -------------------------------------------------------------------------

    def person(
        self, *, email: str | None = None, user_id: str | int | None = None
    ) -> Person | None:
        """Return the person with this email or userId (exactly one of them), or None.

        Raises ValueError unless exactly one of `email` and `user_id` is given.
        """
        if (email is None) == (user_id is None):
            raise ValueError("pass exactly one of email= or user_id=")
        state = self._find(email=email, user_id=identifier(user_id))
        return None if state is None else state.snapshot()

    def people(self) -> list[Person]:
        """Return every person, oldest first."""
        return [state.snapshot() for state in self._people.values()]

    def people_page(self, after: int, limit: int) -> list[Person]:
        """Up to `limit` people with an id above `after`, oldest first."""
        found: list[Person] = []
        for person_id, state in self._people.items():
            if person_id > after:
                found.append(state.snapshot())
                if len(found) >= limit:
                    break
        return found

    def objects_page(self, offset: int, limit: int) -> list[CustomObject]:
        """Up to `limit` objects from position `offset` (0-based), oldest first."""
        return [
            state.snapshot() for state in islice(self._objects.values(), offset, offset + limit)
        ]

    def objects(self, object_type: str | None = None) -> list[CustomObject]:
        """Return every custom object (of one type, if given), oldest first."""
        return [
            state.snapshot()
            for state in self._objects.values()
            if object_type is None or state.object_type == object_type
        ]

    def object(
        self, object_type: str, *, id: str | None = None, external_id: str | None = None
    ) -> CustomObject | None:
        """Return the object of this type with this id or externalId, or None."""
        state = self._find_object(object_type, id, external_id)
        return None if state is None else state.snapshot()

    def clear(self) -> None:
        """Forget every person and object."""
        self._people = {}
        self._by_email = {}
        self._by_user_id = {}
        self._objects = {}
        self._by_external_id = {}
        self._next_person = 0
        self._next_object = 0

    # Updates -------------------------------------------------------------------------

    def apply(self, body: Mapping[str, Any], seq: int) -> None:
        """Apply one validated event that arrived as number `seq`."""
        kind = body.get("type")
        user: Mapping[str, Any] = body.get("user") or {}
        if kind == "alias":
            self._alias(body, user)
        elif kind == "group":
            self._group(body, user)
        else:
            person = self._identify(user)
            name = str(body["name"])
            if name.strip().lower() != "identify":
                person.events.append((seq, name))

    def _identify(self, user: Mapping[str, Any]) -> _PersonState:
        email = identifier(user.get("email"))
        user_id = identifier(user.get("userId"))
        person = self._find(user_id=user_id) or self._find(email=email) or self._create()
        self._assign(person, email=email, user_id=user_id)
        for key, value in user.items():
            if key not in _SPECIAL_USER_FIELDS:
                person.fields[key] = copy.deepcopy(value)
        tags = user.get("tags")
        if isinstance(tags, str):
            person.tags |= _split_tags(tags)
        return person

    def _alias(self, body: Mapping[str, Any], user: Mapping[str, Any]) -> None:
        new_email = identifier(user.get("email"))
        new_user_id = identifier(user.get("userId"))
        person = (
            self._find(user_id=identifier(body.get("previousUserId")))
            or self._find(email=identifier(body.get("previousEmail")))
            or self._find(user_id=new_user_id)
            or self._find(email=new_email)
            or self._create()
        )
        self._assign(person, email=new_email, user_id=new_user_id)

    def _group(self, body: Mapping[str, Any], user: Mapping[str, Any]) -> None:
        object_type = str(body["objectType"])
        properties: Mapping[str, Any] = body.get("properties") or {}
        object_id = identifier(properties.get("id"))
        external_id = identifier(properties.get("externalId"))
        obj = self._find_object(object_type, object_id, external_id)
        if obj is None:
            if object_id is None:
                self._next_object += 1
                object_id = f"obj_{self._next_object}"
            obj = _ObjectState(object_type=object_type, id=object_id)
            self._objects[(object_type, object_id)] = obj
        if external_id is not None and external_id != obj.external_id:
            if obj.external_id is not None:
                del self._by_external_id[(object_type, obj.external_id)]
            obj.external_id = external_id
            self._by_external_id[(object_type, external_id)] = obj.id
        for key, value in properties.items():
            if key not in _OBJECT_ID_FIELDS:
                obj.properties[key] = copy.deepcopy(value)
        if user:
            person = self._identify(user)
            ref = (object_type, obj.id)
            if ref not in person.objects:
                person.objects.append(ref)
            if person.id not in obj.people:
                obj.people.append(person.id)

    # Internals -----------------------------------------------------------------------

    def _find(self, *, email: str | None = None, user_id: str | None = None) -> _PersonState | None:
        if user_id is not None and user_id in self._by_user_id:
            return self._people[self._by_user_id[user_id]]
        if email is not None and _email_key(email) in self._by_email:
            return self._people[self._by_email[_email_key(email)]]
        return None

    def _find_object(
        self, object_type: str, object_id: str | None, external_id: str | None
    ) -> _ObjectState | None:
        if object_id is not None and (object_type, object_id) in self._objects:
            return self._objects[(object_type, object_id)]
        if external_id is not None and (object_type, external_id) in self._by_external_id:
            return self._objects[(object_type, self._by_external_id[(object_type, external_id)])]
        return None

    def _create(self) -> _PersonState:
        self._next_person += 1
        person = _PersonState(id=self._next_person)
        self._people[person.id] = person
        return person

    def _assign(self, person: _PersonState, *, email: str | None, user_id: str | None) -> None:
        """Give `person` these identifiers, merging in whoever held them before."""
        if user_id is not None:
            holder = self._find(user_id=user_id)
            if holder is not None and holder is not person:
                self._merge(into=person, other=holder)
            if person.user_id is not None:
                self._by_user_id.pop(person.user_id, None)
            person.user_id = user_id
            self._by_user_id[user_id] = person.id
        if email is not None:
            holder = self._find(email=email)
            if holder is not None and holder is not person:
                self._merge(into=person, other=holder)
            if person.email is not None:
                self._by_email.pop(_email_key(person.email), None)
            person.email = email
            self._by_email[_email_key(email)] = person.id

    def _merge(self, *, into: _PersonState, other: _PersonState) -> None:
        """Fold `other` into `into`; `into` keeps its own field values on conflict."""
        del self._people[other.id]
        if other.user_id is not None:
            del self._by_user_id[other.user_id]
            if into.user_id is None:
                into.user_id = other.user_id
                self._by_user_id[other.user_id] = into.id
        if other.email is not None:
            del self._by_email[_email_key(other.email)]
            if into.email is None:
                into.email = other.email
                self._by_email[_email_key(other.email)] = into.id
        into.fields = {**other.fields, **into.fields}
        into.tags |= other.tags
        into.events = list(heapq.merge(into.events, other.events))
        for ref in other.objects:
            obj = self._objects[ref]
            obj.people = [into.id if pid == other.id else pid for pid in obj.people]
            obj.people = list(dict.fromkeys(obj.people))
            if ref not in into.objects:
                into.objects.append(ref)
