"""A local emulator of Encharge's Ingest API, for tests and manual runs.

It serves ``POST /v1/`` on loopback with Encharge's documented checks, records what
it accepts, applies it to a small people/objects model, injects faults on demand and
shows everything under ``/_emulator/``. See docs/emulator.md.
"""

from ._emulator import DEFAULT_MAX_BODY_BYTES, Emulator
from ._faults import FAULT_KINDS, DropMode, Faults
from ._model import CustomObject, Person
from ._records import EventRecord, RejectedRecord, Stats
from ._run import run_emulator

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "FAULT_KINDS",
    "CustomObject",
    "DropMode",
    "Emulator",
    "EventRecord",
    "Faults",
    "Person",
    "RejectedRecord",
    "Stats",
    "run_emulator",
]
