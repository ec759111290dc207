"""The pytest plugin's `encharge_emulator` fixture, in-process and as a user gets it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from encharge_async.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "encharge_async" / "pytest_plugin.py"

USER_TEST = """
import httpx
import pytest

MARK = pytest.mark.{mark}
seen = []


@MARK
async def test_posts_to_the_emulator(encharge_emulator):
    seen.append(encharge_emulator)
    async with httpx.AsyncClient() as client:
        response = await client.post(
            encharge_emulator.url,
            json={{"name": "Paid", "user": {{"email": "a@b.c"}}}},
            headers={{"X-Encharge-Token": "test-write-key"}},
        )
    assert response.status_code == 200
    await encharge_emulator.wait_for_events(1, timeout=5)
    assert encharge_emulator.person(email="a@b.c").events == ("Paid",)


@MARK
async def test_each_test_gets_a_fresh_one(encharge_emulator):
    seen.append(encharge_emulator)
    assert encharge_emulator.events == []


def test_they_were_stopped():
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert not any(emulator.running for emulator in seen)
"""


@pytest.mark.slow
@pytest.mark.asyncio
async def test_fixture_yields_a_running_emulator(encharge_emulator: Emulator):
    assert encharge_emulator.running
    async with httpx.AsyncClient() as client:
        response = await client.post(
            encharge_emulator.url,
            json={"name": "Paid", "user": {"userId": 1}},
            headers={"X-Encharge-Token": "test-write-key"},
        )
    assert response.status_code == 200


def _run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_fixture_under_pytest_asyncio_strict_mode(tmp_path: Path):
    (tmp_path / "conftest.py").write_text(
        "from encharge_async.pytest_plugin import encharge_emulator\n"
        "__all__ = ['encharge_emulator']\n"
    )
    (tmp_path / "test_user.py").write_text(USER_TEST.format(mark="asyncio"))
    result = _run_pytest(
        tmp_path, "-o", "asyncio_mode=strict", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


@pytest.mark.slow
def test_fixture_without_pytest_asyncio_runs_under_anyio(tmp_path: Path):
    # Load the plugin afresh with pytest_asyncio made unimportable.
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            f"""
            import importlib.util
            import sys

            import pytest

            sys.modules["pytest_asyncio"] = None
            spec = importlib.util.spec_from_file_location("plugin_copy", {str(PLUGIN)!r})
            plugin = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(plugin)
            encharge_emulator = plugin.encharge_emulator


            @pytest.fixture
            def anyio_backend():
                return "asyncio"
            """
        )
    )
    (tmp_path / "test_user.py").write_text(USER_TEST.format(mark="anyio"))
    result = _run_pytest(tmp_path, "-p", "no:asyncio")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
