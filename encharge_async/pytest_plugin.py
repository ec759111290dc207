"""pytest plugin: the `encharge_emulator` fixture, a running local Encharge emulator.

The fixture is async and function-scoped; it yields a started
:class:`encharge_async.emulator.Emulator` whose write key is ``"test-write-key"``
(``ENCHARGE_EMULATOR_WRITE_KEY``) and stops it afterwards. With pytest-asyncio
installed it is a pytest-asyncio fixture (use it from ``@pytest.mark.asyncio`` tests);
without it, it is a plain async fixture that anyio's pytest plugin runs for
``@pytest.mark.anyio`` tests on the asyncio backend. The emulator (and uvicorn) is
imported only when the fixture is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from encharge_async.emulator import Emulator

ENCHARGE_EMULATOR_WRITE_KEY = "test-write-key"


async def _encharge_emulator() -> AsyncIterator[Emulator]:
    """A started Emulator (write key "test-write-key"), stopped after the test."""
    from encharge_async.emulator import Emulator

    async with Emulator(write_key=ENCHARGE_EMULATOR_WRITE_KEY) as emulator:
        yield emulator


# A pytest fixture object; its exact type differs between pytest and pytest-asyncio.
encharge_emulator: object
try:
    import pytest_asyncio
except ImportError:  # anyio's plugin runs plain async fixtures for anyio tests
    encharge_emulator = pytest.fixture(_encharge_emulator, name="encharge_emulator")
else:
    encharge_emulator = pytest_asyncio.fixture(_encharge_emulator, name="encharge_emulator")
