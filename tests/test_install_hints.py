"""An optional module imported without its extra says what to install (one ImportError)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("module", "missing", "hint"),
    [
        ("encharge_async.otel", "opentelemetry", "pip install 'encharge-async[otel]'"),
        ("encharge_async.integrations.aiohttp", "aiohttp", "pip install aiohttp"),
        ("encharge_async.integrations.starlette", "starlette", "pip install starlette"),
    ],
)
@pytest.mark.slow
def test_optional_imports_name_their_extra(module: str, missing: str, hint: str) -> None:
    # A module set to None in sys.modules cannot be imported: as if it were not installed.
    code = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        f"try:\n    import {module}\n"
        "except ImportError as exc:\n    print(exc)\nelse:\n    print('imported')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert hint in result.stdout, result.stdout + result.stderr
