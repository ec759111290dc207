"""Per-person ordering: events that share an identifier leave in the order they came in.

Each identifier (userId, email, group object) has a lane, named by its hash (`Event.lanes`):
the events holding it that have not finished yet, oldest first. An event may be sent when it
heads every lane it belongs to. Its `_waiting` field counts the lanes where it does not yet.
The oldest unfinished event heads all of its lanes, so the scheme cannot deadlock, and events
of different people never wait for each other (unless their identifiers' hashes collide,
which only orders them).
"""

from __future__ import annotations

from collections import deque

from ._events import Event

__all__ = ["Lanes"]


class Lanes:
    __slots__ = ("_lanes",)

    def __init__(self) -> None:
        # A lane holding one event (the usual case) is the event itself; a deque is made
        # only when a second one queues behind it (a deque costs ~600 bytes).
        self._lanes: dict[int, Event | deque[Event]] = {}

    def __len__(self) -> int:
        return len(self._lanes)

    def admit(self, event: Event) -> bool:
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
        event._waiting = waiting
        return waiting == 0

    def release(self, event: Event) -> list[Event]:
        """Remove a finished event (the head of its lanes); return the events it unblocks."""
        lanes = self._lanes
        unblocked: list[Event] = []
        for key in event.lanes:
            lane = lanes[key]
            if not isinstance(lane, deque):
                del lanes[key]
                continue
            lane.popleft()
            if lane:
                following = lane[0]
                following._waiting -= 1
                if following._waiting == 0:
                    unblocked.append(following)
            else:
                del lanes[key]
        return unblocked
