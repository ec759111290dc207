"""Per-person ordering: which events must leave in the order they came, and the lanes that keep it.

`ordering_keys` is the one place that says which identifiers order an event: every event
built by the client and every event read back from the spool gets its lanes from it, so
live and spooled events of one person always share their lanes.

Each identifier (userId, email, group object) has a lane, named by 30 bits of the hash of
the identifier (without its key's tag): the events holding it that have not finished yet,
oldest first. An event may be sent when it heads every lane it belongs to. The oldest
unfinished event heads all of its lanes, so the scheme cannot deadlock, and events of
different people never wait for each other (unless their identifiers' hashes collide, or
one person's userId is spelled like another's email: that only orders them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, Final, Generic, Protocol, TypeVar

__all__ = [
    "LANE_MASK",
    "Lanes",
    "Ordered",
    "lanes_of",
    "ordering_keys",
    "ordering_lanes",
    "person_lanes",
]

# A lane is named by 30 bits of its identifier's hash, without the key's tag: a userId
# spelled like someone's email (or an object's id) shares their lane, which only orders
# those events with each other, and no tagged string is built on the caller's line.
LANE_MASK: Final = (1 << 30) - 1


def ordering_keys(wire: Mapping[str, Any]) -> tuple[str, ...]:
    """The identifiers that order an event, from its wire form: `u:<userId>`, `e:<email>`
    (lower-cased), `o:<objectType>:<id>`; an alias carries its previous identifiers first.

    Events sharing *any* of these keys are delivered in the order they were queued.
    """
    user = wire.get("user")
    keys: list[str] = []
    if wire.get("type") == "alias":
        _person_keys(keys, wire.get("previousUserId"), wire.get("previousEmail"))
    if isinstance(user, Mapping):
        _person_keys(keys, user.get("userId"), user.get("email"))
    if wire.get("type") == "group":
        fields = wire.get("properties")
        if isinstance(fields, Mapping):
            object_id = fields.get("externalId", fields.get("id"))
            if object_id is not None:
                keys.append(f"o:{wire.get('objectType')}:{object_id}")
    return tuple(dict.fromkeys(keys))


def _person_keys(keys: list[str], user_id: object, email: object) -> None:
    if user_id is not None:
        keys.append(f"u:{user_id}")
    if isinstance(email, str):
        keys.append(f"e:{email.lower()}")


def lanes_of(keys: tuple[str, ...]) -> tuple[int, ...]:
    """The lanes of ordering keys: a small int per key instead of a 60-80 byte string."""
    return tuple(dict.fromkeys([hash(key[2:]) & LANE_MASK for key in keys]))


def ordering_lanes(wire: Mapping[str, Any]) -> tuple[int, ...]:
    """`lanes_of(ordering_keys(wire))`: what every event's lanes are.

    For track and identify (a plain dict person) it computes the same values with
    `person_lanes`, without spelling the keys out. A property test checks they agree.
    """
    user = wire.get("user")
    if user.__class__ is dict and "type" not in wire:
        return person_lanes(user.get("userId"), user.get("email"))
    return lanes_of(ordering_keys(wire))


def person_lanes(user_id: object, email: object) -> tuple[int, ...]:
    """The lanes of a person's `u:` and `e:` keys, from the identifiers themselves (the
    caller's line uses it directly for the usual call)."""
    if user_id is not None:
        lane = hash(user_id if user_id.__class__ is str else f"{user_id}") & LANE_MASK
        if email.__class__ is str:
            email_lane = hash(email.lower()) & LANE_MASK
            return (lane, email_lane) if email_lane != lane else (lane,)
        return (lane,)
    if email.__class__ is str:
        return (hash(email.lower()) & LANE_MASK,)
    return ()


class Ordered(Protocol):
    """What the lanes need of a queued event: its lanes, and a count they keep on it."""

    lanes: tuple[int, ...]
    waiting: int


_T = TypeVar("_T", bound=Ordered)


class Lanes(Generic[_T]):
    """The lanes of the events admitted and not finished yet."""

    __slots__ = ("_lanes",)

    def __init__(self) -> None:
        # A lane holding one event (the usual case) is the event itself; a deque is made
        # only when a second one queues behind it.
        self._lanes: dict[int, _T | deque[_T]] = {}

    def __len__(self) -> int:
        return len(self._lanes)

    def admit(self, event: _T) -> bool:
        """Register a new event; True when nothing before it holds any of its lanes."""
        lanes = self._lanes
        waiting = 0
        for key in event.lanes:
            lane = lanes.get(key)
            if lane is None:
                lanes[key] = event
            else:
                if isinstance(lane, deque):
                    lane.append(event)
                else:
                    lanes[key] = deque((lane, event))
                waiting += 1
        event.waiting = waiting
        return waiting == 0

    def release(self, event: _T) -> list[_T]:
        """Remove a finished event (the head of its lanes); return the events it unblocks."""
        lanes = self._lanes
        unblocked: list[_T] = []
        for key in event.lanes:
            lane = lanes[key]
            if not isinstance(lane, deque):
                del lanes[key]
                continue
            lane.popleft()
            if lane:
                following = lane[0]
                following.waiting -= 1
                if following.waiting == 0:
                    unblocked.append(following)
            else:
                del lanes[key]
        return unblocked

    def clear(self) -> None:
        self._lanes.clear()
