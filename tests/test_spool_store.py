"""The durable spool: storage, bounds, locking, permissions, recovery and crash safety."""

from __future__ import annotations

import logging
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encharge_async._builders import build_track
from encharge_async._spool import (
    SCHEMA_VERSION,
    AppendResult,
    Spool,
    SpoolClosedError,
    SpoolCorruptError,
    SpooledEvent,
    SpoolError,
    SpoolLimits,
    SpoolLockedError,
    _store,
)
from encharge_async._spool._database import Database
from encharge_async._spool._lock import owner_only
from encharge_async._spool._store import Store
from encharge_async._spool._thread import SpoolThread

from .conftest import WRITE_KEY, wait_until

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
Opener = Callable[..., Awaitable[Spool]]


def event(
    i: int | str, *, size: int = 10, created_at: float = 1000.0, keys: tuple[str, ...] = ("u:1",)
) -> SpooledEvent:
    """Event `m<i>` with a body of `size` bytes (when `i` fits in it)."""
    return SpooledEvent(f"m{i}", "track", str(i).encode().ljust(size), keys, created_at)


def ids(events: list[SpooledEvent]) -> list[str]:
    return [e.message_id for e in events]


# File helpers, so that the async tests make no blocking calls themselves.
def write(path: Path | str, data: bytes, mode: int | None = None) -> None:
    Path(path).write_bytes(data)
    if mode is not None:
        Path(path).chmod(mode)


def read(path: Path | str) -> bytes:
    return Path(path).read_bytes()


def exists(path: Path | str) -> bool:
    return Path(path).exists()


def is_link(path: Path | str) -> bool:
    return Path(path).is_symlink()


def file_size(path: Path | str) -> int:
    return Path(path).stat().st_size


def mode(path: Path | str) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


def listing(directory: Path) -> dict[str, int]:
    """File name -> permission bits, of every file in `directory`."""
    return {p.name: mode(p) for p in sorted(directory.iterdir())}


def damage_file(path: Path, damage: str) -> None:
    if damage.startswith("garbage"):
        write(path, random.Random(1).randbytes(20_000))
        if damage == "garbage+wal":
            write(f"{path}-wal", random.Random(2).randbytes(5_000))
    elif damage == "other schema":
        with closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
            db.commit()
    elif damage == "truncated":
        with path.open("r+b") as file:
            file.truncate(path.stat().st_size // 2)
    elif damage == "null name":  # a row the spool cannot read, slipped past NOT NULL
        with closing(sqlite3.connect(path)) as db:
            sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
            for definition in (sql.replace("name TEXT NOT NULL", "name TEXT"), sql):
                db.execute("PRAGMA writable_schema = ON")
                db.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'events'", (definition,))
                db.commit()
                if definition != sql:
                    with closing(sqlite3.connect(path)) as other:
                        other.execute("UPDATE events SET name = NULL WHERE message_id = 'm5'")
                        other.commit()
    else:
        with closing(sqlite3.connect(path)) as db:
            if damage == "future version":
                db.execute("UPDATE spool_meta SET value = '2'")
            else:
                db.execute("DELETE FROM spool_meta")
            db.commit()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool.db"


@pytest.fixture
async def open_spool(path: Path) -> AsyncIterator[Opener]:
    """Open spools (at `path` unless told otherwise) and close them all after the test."""
    opened: list[Spool] = []

    async def open_(where: str | Path = path, **kwargs: Any) -> Spool:
        spool = await Spool.open(where, **kwargs)
        opened.append(spool)
        return spool

    yield open_
    for spool in opened:
        await spool.close()


class FailingConnection:
    """Wraps the spool's connection; raises `error` on the `nth` statement starting `prefix`."""

    def __init__(self, conn: sqlite3.Connection, prefix: str, error: Exception, nth: int = 1):
        self.conn = conn
        self.prefix = prefix
        self.error = error
        self.left = nth

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        if sql.lstrip().upper().startswith(self.prefix):
            self.left -= 1
            if self.left == 0:
                raise self.error
        return self.conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def sqlite_error(cls: type[sqlite3.Error], message: str, code: int) -> sqlite3.Error:
    error = cls(message)
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    return error


# -- storing and reading ---------------------------------------------------------------------


async def test_append_then_load_in_insertion_order(open_spool: Opener) -> None:
    spool = await open_spool()
    first = [event(i, keys=("u:1", f"e:{i}@example.com")) for i in range(3)]
    assert await spool.append(first) == AppendResult(stored=3)
    assert await spool.append([event(3), event(4)]) == AppendResult(stored=2)
    loaded = await spool.load(limit=100)
    assert loaded == [*first, event(3), event(4)]  # seq is left out of equality
    assert [e.seq for e in loaded] == sorted({e.seq for e in loaded})
    assert loaded[0].keys == ("u:1", "e:0@example.com")
    assert loaded[0].size == len(loaded[0].body) == 10


async def test_load_pages_through_a_big_spool(open_spool: Opener) -> None:
    spool = await open_spool()
    await spool.append([event(i) for i in range(25)])
    pages: list[list[SpooledEvent]] = []
    after = None
    while page := await spool.load(limit=10, after=after):
        pages.append(page)
        after = page[-1].seq
    assert [len(p) for p in pages] == [10, 10, 5]
    assert ids([e for p in pages for e in p]) == [f"m{i}" for i in range(25)]


async def test_a_seq_is_never_reused_so_a_cursor_misses_nothing(open_spool: Opener) -> None:
    spool = await open_spool()
    await spool.append([event(1), event(2)])
    cursor = (await spool.load(limit=10))[-1].seq
    await spool.ack(["m2"])  # the newest row goes: its seq must not come back
    await spool.append([event(3)])
    assert ids(await spool.load(limit=10, after=cursor)) == ["m3"]


async def test_append_is_idempotent_per_message_id(open_spool: Opener) -> None:
    spool = await open_spool()
    await spool.append([event(1)])
    again = SpooledEvent("m1", "other", b"{}", (), 5.0)
    result = await spool.append([again, event(2), event(2)])
    assert result == AppendResult(stored=1, duplicates=("m1", "m2"))
    assert await spool.load(limit=10) == [event(1), event(2)]  # the first copy stays
    assert (await spool.stats()).duplicates == 2


async def test_empty_calls_do_nothing(open_spool: Opener) -> None:
    spool = await open_spool()
    assert await spool.append([]) == AppendResult(stored=0)
    await spool.ack([])
    assert await spool.load(limit=1) == []
    assert await spool.expire() == []


async def test_ack_deletes_and_ignores_unknown_ids(open_spool: Opener) -> None:
    spool = await open_spool()
    await spool.append([event(i) for i in range(1200)])
    await spool.ack([f"m{i}" for i in range(0, 1200, 2)] + ["unknown", "m0"])  # > one chunk
    assert ids(await spool.load(limit=2000)) == [f"m{i}" for i in range(1, 1200, 2)]
    stats = await spool.stats()
    assert (stats.count, stats.bytes) == (600, 6000)
    with pytest.raises(TypeError, match="single string"):
        await spool.ack("m1")


async def test_stats(open_spool: Opener) -> None:
    spool = await open_spool()
    empty = await spool.stats()
    assert (empty.count, empty.bytes, empty.oldest_created_at) == (0, 0, None)
    assert empty.file_bytes > 0
    await spool.append([event(1, created_at=50.0, size=7), event(2, created_at=20.0, size=30)])
    stats = await spool.stats()
    assert (stats.count, stats.bytes, stats.oldest_created_at) == (2, 37, 20.0)
    assert (stats.refused, stats.expired, stats.duplicates) == (0, 0, 0)


async def test_reopening_finds_the_events_and_their_totals(path: Path, open_spool: Opener) -> None:
    spool = await open_spool()
    await spool.append([event(i, size=100, created_at=10.0 + i) for i in range(5)])
    await spool.ack(["m0"])
    await spool.close()
    again = await open_spool()
    stats = await again.stats()
    assert (stats.count, stats.bytes, stats.oldest_created_at) == (4, 400, 11.0)
    assert ids(await again.load(limit=10)) == ["m1", "m2", "m3", "m4"]


async def test_concurrent_calls_all_land(open_spool: Opener) -> None:
    spool = await open_spool()
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(spool.append, [event(i)])
    assert sorted(ids(await spool.load(limit=100))) == sorted(f"m{i}" for i in range(20))


async def test_from_event_takes_what_the_client_event_has() -> None:
    ev = build_track(
        "Registered",
        email="Jon@example.com",
        user_id=42,
        user=None,
        properties={"plan": "pro"},
        source_ip=None,
        max_bytes=10_000,
    )
    spooled = SpooledEvent.from_event(ev, created_at=12.5)
    assert spooled == SpooledEvent(ev.message_id, "Registered", ev.body, ev.ordering_keys, 12.5, 0)
    assert spooled.keys == ("u:42", "e:jon@example.com")
    assert SpooledEvent.from_event(ev).created_at > 1_600_000_000  # wall clock by default


# -- bounds ----------------------------------------------------------------------------------


async def test_the_byte_bound_refuses_what_does_not_fit(open_spool: Opener) -> None:
    spool = await open_spool(limits=SpoolLimits(max_bytes=100))
    result = await spool.append([event(1, size=40), event(2, size=40), event(3, size=30)])
    assert result == AppendResult(stored=2, refused=(event(3, size=30),))
    # The rest of a batch still goes in when it fits; exactly full is allowed.
    result = await spool.append([event(4, size=101), event(5, size=20), event(6, size=1)])
    assert result.stored == 1
    assert ids(list(result.refused)) == ["m4", "m6"]
    # A duplicate of a stored event is a duplicate even when the spool is full.
    assert await spool.append([event(1, size=40)]) == AppendResult(0, duplicates=("m1",))
    stats = await spool.stats()
    assert (stats.bytes, stats.count, stats.refused) == (100, 3, 3)
    await spool.ack(["m1"])  # room again
    assert (await spool.append([event(7, size=40)])).stored == 1
    assert ids(await spool.load(limit=10)) == ["m2", "m5", "m7"]


async def test_expire_removes_and_returns_events_past_max_age(open_spool: Opener) -> None:
    now = [1000.0]
    spool = await open_spool(limits=SpoolLimits(max_age=60), clock=lambda: now[0])
    await spool.append([event(i, created_at=t) for i, t in enumerate([950, 960, 955, 990, 999])])
    assert await spool.expire() == []  # the cutoff is 940: nothing older than 60 s yet
    now[0] = 1045.0  # cutoff 985: m0, m1 and m2 have expired
    first = await spool.expire(limit=2)
    assert ids(first) == ["m0", "m1"]  # oldest first (insertion order), with their seq
    assert all(e.seq > 0 for e in first)
    assert ids(await spool.expire(limit=2)) == ["m2"]
    assert ids(await spool.load(limit=10)) == ["m3", "m4"]
    stats = await spool.stats()
    assert (stats.count, stats.expired, stats.oldest_created_at) == (2, 3, 990.0)
    now[0] = 10_000.0
    assert ids(await spool.expire()) == ["m3", "m4"]


async def test_deletes_give_space_back_to_the_file_system(
    path: Path, open_spool: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_store, "_SHRINK_FREE_PAGES", 16)
    now = [1000.0]
    spool = await open_spool(clock=lambda: now[0], limits=SpoolLimits(max_age=10))
    await spool.append([event(i, size=8000) for i in range(40)])
    await spool.append([event(i, size=8000, created_at=0.0) for i in range(40, 80)])
    await spool.ack([f"m{i}" for i in range(40)])
    assert len(await spool.expire()) == 40
    await spool.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        (pages,) = db.execute("PRAGMA page_count").fetchone()
    assert free < 16
    assert pages < 40  # 640 kB of bodies came and went; the file does not keep them


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ("not an event", TypeError),
        (SpooledEvent("", "n", b"", (), 1.0), ValueError),
        (SpooledEvent("m", 1, b"", (), 1.0), TypeError),  # type: ignore[arg-type]
        (SpooledEvent("m", "n", "text", (), 1.0), TypeError),  # type: ignore[arg-type]
        (SpooledEvent("m", "n", b"", ["u:1"], 1.0), TypeError),  # type: ignore[arg-type]
        (SpooledEvent("m", "n", b"", (1,), 1.0), TypeError),  # type: ignore[arg-type]
        (SpooledEvent("m", "n", b"", (), float("nan")), ValueError),
        (SpooledEvent("m", "n", b"", (), True), ValueError),
        (SpooledEvent("m", "n", b"", (), 1.0, attempts=1.5), TypeError),  # type: ignore[arg-type]
    ],
)
async def test_a_malformed_event_stores_nothing(
    open_spool: Opener, bad: Any, error: type[Exception]
) -> None:
    spool = await open_spool()
    with pytest.raises(error):
        await spool.append([event(1), bad])
    assert await spool.load(limit=10) == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_bytes": 0}, ValueError),
        ({"max_bytes": 1.5}, TypeError),
        ({"max_bytes": True}, TypeError),
        ({"max_age": 0}, ValueError),
        ({"max_age": float("inf")}, ValueError),
        ({"max_age": "1"}, ValueError),
    ],
)
def test_limits_are_checked(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        SpoolLimits(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"synchronous": "off"}, {"limits": 5}, {"max_slots": 0}, {"max_slots": True}],
)
async def test_open_checks_its_arguments(path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        await Spool.open(path, **kwargs)
    assert not exists(path)


async def test_call_arguments_are_checked(open_spool: Opener) -> None:
    spool = await open_spool()
    bad_limit: Any
    for bad_limit in (0, -1, True, 1.0):
        with pytest.raises(ValueError, match="limit"):
            await spool.load(limit=bad_limit)
    for bad_after in (True, "3", 1.5):
        with pytest.raises(ValueError, match="after"):
            await spool.load(limit=1, after=bad_after)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        await spool.expire(limit=0)
    for bad_timeout in (0, float("inf"), "1", False):
        with pytest.raises(ValueError, match="timeout"):
            await spool.close(timeout=bad_timeout)  # type: ignore[arg-type]


# -- privacy and permissions -----------------------------------------------------------------


async def test_only_ids_names_bodies_keys_and_times_are_stored(
    path: Path, open_spool: Opener
) -> None:
    ev = build_track(
        "Registered",
        email="jon@example.com",
        user_id=42,
        user=None,
        properties={"plan": "pro"},
        source_ip=None,
        max_bytes=10_000,
    )
    spool = await open_spool()
    await spool.append([SpooledEvent.from_event(ev, created_at=1234.5)])
    await spool.close()
    assert list(listing(path.parent)) == ["spool.db", "spool.db.lock"]
    for name in listing(path.parent):
        assert WRITE_KEY.encode() not in read(path.parent / name)
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        query = "SELECT name FROM sqlite_master WHERE type = 'table'"
        tables = sorted(row[0] for row in db.execute(query))
        assert tables == ["events", "spool_meta", "sqlite_sequence"]
        columns = [row[1] for row in db.execute("PRAGMA table_info(events)")]
        assert columns == ["seq", "message_id", "name", "body", "keys", "created_at", "attempts"]
        meta = db.execute("SELECT key, value FROM spool_meta").fetchall()
        assert meta == [("schema_version", str(SCHEMA_VERSION))]
        rows = db.execute(
            "SELECT message_id, name, body, keys, created_at, attempts FROM events"
        ).fetchall()
    keys = '["u:42","e:jon@example.com"]'
    assert rows == [(ev.message_id, "Registered", ev.body, keys, 1234.5, 0)]


async def test_files_are_owner_only_whatever_the_umask(tmp_path: Path, open_spool: Opener) -> None:
    path = tmp_path / "new" / "dir" / "spool.db"
    old = os.umask(0)
    try:
        spool = await open_spool(path)
        await spool.append([event(1)])
    finally:
        os.umask(old)
    assert listing(path.parent) == {
        "spool.db": 0o600,
        "spool.db-shm": 0o600,
        "spool.db-wal": 0o600,
        "spool.db.lock": 0o600,
    }
    assert listing(tmp_path) == {"new": 0o700}
    assert listing(tmp_path / "new") == {"dir": 0o700}


async def test_existing_files_are_made_owner_only(path: Path, open_spool: Opener) -> None:
    write(path, b"", mode=0o666)
    write(f"{path}.lock", b"", mode=0o644)
    write(f"{path}-wal", b"", mode=0o644)  # left by a crash
    write(f"{path}-shm", b"", mode=0o664)
    spool = await open_spool()
    await spool.append([event(1)])
    assert set(listing(path.parent).values()) == {0o600}
    assert len(listing(path.parent)) == 4


async def test_a_file_that_cannot_be_made_owner_only_is_logged(
    path: Path,
    open_spool: Opener,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(fd: int, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    write(path, b"", mode=0o644)
    monkeypatch.setattr("encharge_async._spool._lock.os.fchmod", refuse)
    with caplog.at_level(logging.WARNING, logger="encharge_async.spool"):
        await open_spool()
    assert any("owner-only" in r.getMessage() for r in caplog.records)


LINKED_NAMES = ["spool.db", "spool.db.lock", "spool.db-wal", "spool.db-shm"]


@pytest.mark.parametrize("name", LINKED_NAMES)
async def test_a_symbolic_link_is_refused_not_followed(tmp_path: Path, name: str) -> None:
    path = tmp_path / "spool" / "spool.db"
    path.parent.mkdir()
    target = tmp_path / "precious.txt"
    write(target, b"someone else's file\n", mode=0o644)
    (path.parent / name).symlink_to(target)
    with pytest.raises(SpoolError, match="symbolic link") as info:
        await Spool.open(path)
    assert not isinstance(info.value, SpoolLockedError)
    assert str(path.parent / name) in str(info.value)
    assert read(target) == b"someone else's file\n"
    assert mode(target) == 0o644
    assert is_link(path.parent / name)  # left as it was


@pytest.mark.parametrize("name", LINKED_NAMES)
async def test_a_dangling_symbolic_link_creates_nothing(tmp_path: Path, name: str) -> None:
    path = tmp_path / "spool" / "spool.db"
    path.parent.mkdir()
    target = tmp_path / "elsewhere"
    (path.parent / name).symlink_to(target)
    with pytest.raises(SpoolError, match="symbolic link"):
        await Spool.open(path)
    assert not is_link(target)
    assert not exists(target)


async def test_a_directory_reached_through_a_link_is_fine(
    tmp_path: Path, open_spool: Opener
) -> None:
    # Only the spool's own files must not be links: /var/lib -> /data is common.
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    spool = await open_spool(tmp_path / "via" / "spool.db")
    await spool.append([event(1)])
    assert exists(tmp_path / "real" / "spool.db")


async def test_a_path_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "spool.db")
    with pytest.raises(SpoolError, match="not a regular file"):
        await Spool.open(tmp_path / "spool.db")
    await (await Spool.open(tmp_path / "other.db")).close()  # nothing left held


@pytest.mark.parametrize("build", ["this SQLite", "a SQLite without SECURE_DELETE"])
async def test_delivered_events_do_not_linger_in_the_files(
    path: Path, open_spool: Opener, monkeypatch: pytest.MonkeyPatch, build: str
) -> None:
    if build != "this SQLite":
        # Upstream SQLite's default is secure_delete=OFF; some distributions (Debian) build
        # it ON. The spool must not depend on which.
        connect = sqlite3.connect

        def connect_insecure(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn: sqlite3.Connection = connect(*args, **kwargs)
            conn.execute("PRAGMA secure_delete = OFF")
            return conn

        monkeypatch.setattr(sqlite3, "connect", connect_insecure)
    email = b"zelda.unforgettable@example.org"
    body = b'{"name":"Paid","user":{"email":"' + email + b'"}}'
    spool = await open_spool()
    await spool.append(
        [
            SpooledEvent("small", "Paid", body, ("u:1",), 1000.0),
            SpooledEvent("big", "Paid", body.ljust(20_000, b" "), ("u:1",), 1000.0),  # overflow
            event(3),
        ]
    )
    await spool.ack(["small", "big"])
    assert [e.message_id for e in await spool.load(limit=10)] == ["m3"]
    await anyio.to_thread.run_sync(checkpoint, path)
    for name in listing(path.parent):
        assert email not in read(path.parent / name), name
    await spool.close()
    for name in listing(path.parent):
        assert email not in read(path.parent / name), name


def checkpoint(path: Path) -> None:
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0


# -- one process per file --------------------------------------------------------------------


async def test_a_second_open_of_one_file_is_refused(path: Path, open_spool: Opener) -> None:
    spool = await open_spool()
    with pytest.raises(SpoolLockedError) as info:
        await Spool.open(path)
    error = info.value
    assert isinstance(error, RuntimeError)
    assert error.path == path
    assert error.holder_pid == os.getpid()
    assert str(path) in str(error)
    assert "another Spool in this process" in str(error)
    assert "{slot}" in str(error)
    assert "{pid}" in str(error)
    await spool.close()
    await open_spool()  # free again


@pytest.mark.parametrize("spelling", ["hard link", "another spelling"])
async def test_the_lock_is_on_the_file_not_on_its_path(
    path: Path, open_spool: Opener, spelling: str
) -> None:
    spool = await open_spool()
    await spool.append([event(1)])
    if spelling == "hard link":
        other = path.parent / "other-name.db"
        os.link(path, other)
    else:
        other = Path(f"{path.parent}/./../{path.parent.name}/{path.name}")
    with pytest.raises(SpoolLockedError) as info:
        await Spool.open(other)
    assert info.value.holder_pid == os.getpid()
    assert info.value.path == other
    assert "another Spool in this process" in str(info.value)
    await spool.close()
    async with await Spool.open(other) as again:  # free again, under either name
        assert ids(await again.load(limit=10)) == ["m1"]


async def test_a_lock_file_without_a_pid_still_gives_a_clear_error(
    path: Path, open_spool: Opener
) -> None:
    await open_spool()
    write(f"{path}.lock", b"garbage")
    with pytest.raises(SpoolLockedError, match="locked by another process") as info:
        await Spool.open(path)
    assert info.value.holder_pid is None


async def test_pid_placeholder(tmp_path: Path, open_spool: Opener) -> None:
    spool = await open_spool(str(tmp_path / "encharge-{pid}.spool"))
    assert spool.path == tmp_path / f"encharge-{os.getpid()}.spool"
    assert spool.path.exists()


async def test_slot_placeholder_takes_the_first_free_slot(
    tmp_path: Path, open_spool: Opener
) -> None:
    template = str(tmp_path / "encharge-{slot}.spool")
    spools = [await open_spool(template, max_slots=3) for _ in range(3)]
    assert [s.path.name for s in spools] == [f"encharge-{n}.spool" for n in range(3)]
    with pytest.raises(SpoolLockedError, match="every spool file matching") as info:
        await Spool.open(template, max_slots=3)
    assert info.value.holder_pid is None
    await spools[1].close()
    assert (await open_spool(template, max_slots=3)).path.name == "encharge-1.spool"


async def test_an_unusable_path_raises_spool_error(tmp_path: Path) -> None:
    write(tmp_path / "a-file", b"")
    with pytest.raises(SpoolError, match="cannot open spool"):
        await Spool.open(tmp_path / "a-file" / "spool.db")  # its directory cannot exist
    directory = tmp_path / "a-directory"
    os.mkdir(directory)
    with pytest.raises(SpoolError, match="cannot open spool"):
        await Spool.open(directory)  # the spool file itself is a directory
    with pytest.raises(SpoolError, match="cannot open spool"):
        await Spool.open(directory)  # and the failure released the lock
    assert listing(directory) == {}


# -- unreadable files ------------------------------------------------------------------------


async def _fill(path: Path, count: int = 100, size: int = 2000) -> None:
    async with await Spool.open(path) as spool:
        await spool.append([event(i, size=size) for i in range(count)])


@pytest.mark.parametrize(
    ("damage", "integrity_check", "reason"),
    [
        ("garbage", True, "not a database"),
        ("garbage+wal", True, "not a database"),
        ("truncated", True, "malformed"),
        ("truncated", False, "malformed"),
        ("other schema", True, "not an encharge-async spool"),
        ("future version", True, "schema version 2"),
        ("no version", True, "schema version None"),
        ("null name", True, "integrity check failed: NULL value in events.name"),
    ],
)
async def test_an_unreadable_file_is_moved_aside_for_a_fresh_spool(
    path: Path,
    open_spool: Opener,
    caplog: pytest.LogCaptureFixture,
    damage: str,
    integrity_check: bool,
    reason: str,
) -> None:
    if damage in ("truncated", "future version", "no version", "null name"):
        await _fill(path)
    damage_file(path, damage)
    before = read(path)

    with caplog.at_level(logging.ERROR, logger="encharge_async.spool"):
        spool = await open_spool(integrity_check=integrity_check)

    (moved,) = spool.moved_aside
    assert moved.parent == path.parent
    assert moved.name.startswith("spool.db.corrupt-")
    assert read(moved) == before  # kept as it was, for forensics
    if damage == "garbage+wal":  # SQLite dropped it (nothing valid in it): not in the new spool
        assert not exists(f"{moved}-wal")
        assert read(f"{path}-wal")[:100] != random.Random(2).randbytes(5_000)[:100]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(path) in errors[0]
    assert str(moved) in errors[0]
    assert reason in errors[0]
    assert (await spool.stats()).count == 0  # a fresh, working spool
    await spool.append([event(1)])
    assert ids(await spool.load(limit=10)) == ["m1"]


async def test_files_set_aside_never_overwrite_each_other(
    path: Path, open_spool: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "strftime", lambda *args: "20240101T000000Z")
    moved: list[Path] = []
    for n in range(3):
        write(path, b"garbage %d" % n * 1000)
        spool = await open_spool()
        moved.extend(spool.moved_aside)
        await spool.close()
    base = f"{path}.corrupt-20240101T000000Z"
    assert [str(m) for m in moved] == [base, f"{base}-2", f"{base}-3"]
    assert [read(m)[:9] for m in moved] == [b"garbage 0", b"garbage 1", b"garbage 2"]


async def test_a_file_that_cannot_be_moved_aside_raises(
    path: Path, open_spool: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied", src)

    write(path, b"garbage" * 1000)
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", refuse)
        with pytest.raises(SpoolError, match="could not be replaced"):
            await Spool.open(path)
    spool = await open_spool()  # the failed open released the lock
    assert len(spool.moved_aside) == 1


async def test_other_sqlite_errors_on_open_are_raised_and_the_file_is_kept(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object) -> None:
        raise sqlite_error(sqlite3.OperationalError, "disk I/O error", 10)

    await _fill(path, count=3)
    monkeypatch.setattr(Database, "_check_schema", fail)
    with pytest.raises(SpoolError, match="disk I/O error") as info:
        await Spool.open(path)
    assert not isinstance(info.value, SpoolCorruptError)
    assert list(listing(path.parent)) == ["spool.db", "spool.db.lock"]


def _damage_in_place(spool: Spool) -> bytes:
    """Overwrite the file under an open spool (past its first two pages) with garbage."""
    size = spool.path.stat().st_size
    fd = os.open(spool.path, os.O_RDWR)
    try:
        os.pwrite(fd, random.Random(3).randbytes(size - 8192), 8192)
    finally:
        os.close(fd)
    return spool.path.read_bytes()


async def test_a_file_damaged_while_open_is_moved_aside_and_the_call_raises(
    path: Path, open_spool: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    await _fill(path, count=300, size=6000)
    spool = await open_spool(integrity_check=False)  # keep the page cache cold
    damaged = _damage_in_place(spool)
    with (
        caplog.at_level(logging.ERROR, logger="encharge_async.spool"),
        pytest.raises(SpoolCorruptError) as info,
    ):
        await spool.load(limit=1000)
    assert spool.moved_aside == (info.value.moved_to,)
    assert read(info.value.moved_to)[:8192] == damaged[:8192]
    assert str(info.value.moved_to) in str(info.value)
    assert any("moved it aside" in r.getMessage() for r in caplog.records)
    # The spool goes on, empty.
    assert (await spool.stats()).count == 0
    await spool.append([event(1)])
    assert ids(await spool.load(limit=10)) == ["m1"]


@pytest.mark.parametrize(
    "update",
    [
        "body = 'text, not bytes'",
        "created_at = 'yesterday'",
        "attempts = 1.5",
        "keys = '{\"u\": 1}'",
        "keys = '[1]'",
        "keys = 'not json'",
        "keys = x'ff'",
        "name = x'ff'",
    ],
)
async def test_a_row_the_spool_cannot_read_sets_the_file_aside(
    path: Path, open_spool: Opener, update: str
) -> None:
    await _fill(path, count=10, size=10)
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"UPDATE events SET {update} WHERE message_id = 'm5'")  # a foreign writer
        db.commit()
    spool = await open_spool()
    assert ids(await spool.load(limit=5)) == ["m0", "m1", "m2", "m3", "m4"]
    with pytest.raises(SpoolCorruptError, match="row 6 is unreadable"):
        await spool.load(limit=5, after=5)
    assert len(spool.moved_aside) == 1
    assert await spool.load(limit=10) == []


async def test_a_damaged_file_that_cannot_be_replaced_leaves_the_spool_unusable(
    path: Path, open_spool: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _fill(path, count=300, size=6000)
    spool = await open_spool(integrity_check=False)
    _damage_in_place(spool)
    monkeypatch.setattr(os, "replace", _raise_permission_error)
    with pytest.raises(SpoolError, match="could not be replaced"):
        await spool.load(limit=1000)
    with pytest.raises(SpoolError, match="could not be replaced") as info:
        await spool.stats()
    assert not isinstance(info.value, SpoolClosedError)
    await spool.close()
    monkeypatch.undo()
    assert len((await open_spool()).moved_aside) == 1  # closing released the lock


def _raise_permission_error(*args: object) -> None:
    raise PermissionError(13, "Permission denied")


async def test_a_failed_append_stores_nothing_and_the_spool_goes_on(open_spool: Opener) -> None:
    spool = await open_spool()
    await spool.append([event(0)])
    conn = spool._store._db._conn
    assert conn is not None
    error = sqlite_error(sqlite3.OperationalError, "database or disk is full", 13)
    spool._store._db._conn = FailingConnection(conn, "INSERT", error, nth=2)  # type: ignore[assignment]
    with pytest.raises(SpoolError, match="disk is full") as info:
        await spool.append([event(1), event(2), event(3)])
    assert info.value.__cause__ is error
    assert not isinstance(info.value, SpoolCorruptError)
    spool._store._db._conn = conn
    assert ids(await spool.load(limit=10)) == ["m0"]  # the whole batch was rolled back
    stats = await spool.stats()
    assert (stats.count, stats.bytes) == (1, 10)
    assert spool.moved_aside == ()
    await spool.append([event(1)])
    assert ids(await spool.load(limit=10)) == ["m0", "m1"]


async def test_an_unexpected_error_rolls_back_and_propagates(open_spool: Opener) -> None:
    spool = await open_spool()
    conn = spool._store._db._conn
    assert conn is not None
    error = RuntimeError("unexpected")
    spool._store._db._conn = FailingConnection(conn, "INSERT", error, nth=2)  # type: ignore[assignment]
    with pytest.raises(RuntimeError) as info:
        await spool.append([event(1), event(2)])
    assert info.value is error
    spool._store._db._conn = conn
    assert await spool.load(limit=10) == []
    assert (await spool.stats()).count == 0


# -- crash safety ----------------------------------------------------------------------------

CHILD = """
import sys
import anyio
from encharge_async._spool import Spool, SpooledEvent

async def main(path, synchronous):
    spool = await Spool.open(path, synchronous=synchronous)
    for b in range(3):
        batch = [
            SpooledEvent(f"b{b}-{i}", "track", b'{"i": %d}' % i, (f"u:{i}",), 1000.0 + i)
            for i in range(50)
        ]
        assert (await spool.append(batch)).stored == 50
    print("appended", flush=True)
    await anyio.sleep(60)  # alive until the test kills it, on purpose

anyio.run(main, sys.argv[1], sys.argv[2])
"""


@pytest.mark.slow
@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_appended_events_survive_kill_9(path: Path, synchronous: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", CHILD, str(path), synchronous]
    process = await anyio.open_process(command, stdout=subprocess.PIPE, env=env)
    try:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive()
        assert line == b"appended\n"
        with pytest.raises(SpoolLockedError) as info:  # the child holds the file
            await Spool.open(path)
        assert info.value.holder_pid == process.pid
        # ... under any name: a hard link has a lock file of its own, but the same inode.
        link = path.parent / "link.db"
        os.link(path, link)
        with pytest.raises(SpoolLockedError, match="same file") as info:
            await Spool.open(link)
        assert info.value.path == link
        assert not exists(f"{link}-wal")
        os.unlink(link)
    finally:
        # SIGKILL, once: a second signal may reap the child behind asyncio's child watcher.
        process.kill()
        with anyio.fail_after(10):
            await process.wait()
        await process.aclose()
    assert process.returncode == -signal.SIGKILL
    assert file_size(f"{path}-wal") > 0  # the events were in the WAL, not checkpointed
    async with await Spool.open(path) as spool:
        events = await spool.load(limit=1000)
    assert ids(events) == [f"b{b}-{i}" for b in range(3) for i in range(50)]
    assert events[7] == SpooledEvent("b0-7", "track", b'{"i": 7}', ("u:7",), 1007.0)


# -- the thread, cancellation, closing -------------------------------------------------------


async def test_a_closed_spool_refuses_calls(open_spool: Opener) -> None:
    spool = await open_spool()
    assert "open" in repr(spool)
    await spool.close()
    await spool.close()  # idempotent
    assert "closed" in repr(spool)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: spool.append([event(1)]),
        lambda: spool.ack(["m1"]),
        lambda: spool.load(limit=1),
        spool.expire,
        spool.stats,
    ]
    for call in calls:
        with pytest.raises(SpoolClosedError):
            await call()


async def test_the_store_refuses_calls_once_closed(path: Path, open_spool: Opener) -> None:
    spool = await open_spool()
    store = spool._store
    await spool.close()
    with pytest.raises(SpoolClosedError):
        store.stats()
    store.close()  # idempotent


def test_owner_only_ignores_a_missing_file(tmp_path: Path) -> None:
    owner_only(str(tmp_path / "missing"))
    assert listing(tmp_path) == {}


async def test_a_cancelled_call_still_completes(open_spool: Opener) -> None:
    spool = await open_spool()
    with anyio.CancelScope() as scope:
        scope.cancel()
        # A call, once made, runs to the end: it happened or not, never half ...
        assert (await spool.append([event(1)])).stored == 1
        await anyio.lowlevel.checkpoint()  # ... and the cancellation lands at the next await
        pytest.fail("unreachable")
    assert scope.cancelled_caught
    assert ids(await spool.load(limit=10)) == ["m1"]


async def test_an_open_cancelled_midway_releases_the_file(path: Path, open_spool: Opener) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await Spool.open(path)
    assert scope.cancelled_caught
    await open_spool()  # not locked: the half-opened spool was closed


async def test_close_is_bounded(
    path: Path, open_spool: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    spool = await open_spool()
    entered, gate = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        gate.wait(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(spool._thread.call, hold)
        await wait_until(entered.is_set)  # the thread is busy
        with caplog.at_level(logging.WARNING, logger="encharge_async.spool"):
            await spool.close(timeout=0.05)  # returns though the thread is busy
        assert any("closing took over" in r.getMessage() for r in caplog.records)
        gate.set()
    assert spool._thread.join(10)  # ... and the close went on in the background
    await open_spool()


async def test_a_spool_from_before_a_fork_refuses_calls(path: Path, open_spool: Opener) -> None:
    spool = await open_spool()
    spool._pid = -1  # as seen from a child process forked after open()
    with pytest.raises(SpoolError, match="before a fork"):
        await spool.load(limit=1)
    await spool.close()  # only marks it closed: the file and thread are the parent's
    with pytest.raises(SpoolLockedError):
        await Spool.open(path)
    spool._pid, spool._closed = os.getpid(), False
    await spool.close()


async def test_a_spool_never_closed_warns_and_closes_when_collected(path: Path) -> None:
    spool = await Spool.open(path)
    thread = spool._thread
    with pytest.warns(ResourceWarning, match="never closed"):
        del spool  # the last reference
    assert thread.join(10)
    async with await Spool.open(path):  # the file was closed and its lock released
        pass


async def test_async_with_closes() -> None:
    with tempfile.TemporaryDirectory() as directory:
        async with await Spool.open(Path(directory) / "s.db") as spool:
            await spool.append([event(1)])
        async with await Spool.open(Path(directory) / "s.db") as spool:
            assert ids(await spool.load(limit=1)) == ["m1"]


def test_a_result_after_the_loop_ended_is_dropped_quietly() -> None:
    for backend in ("asyncio", "trio"):
        thread = SpoolThread("test")
        gate = threading.Event()

        async def main(thread: SpoolThread = thread, gate: threading.Event = gate) -> None:
            with pytest.raises(TimeoutError):
                await thread.call(lambda: gate.wait(10), timeout=0.01)

        anyio.run(main, backend=backend)
        gate.set()  # the job ends now, and wakes a loop that is gone
        thread.stop()
        assert thread.join(10)


async def test_errors_in_the_thread_reach_the_caller() -> None:
    thread = SpoolThread("test")
    try:

        def fail() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            await thread.call(fail)
        assert await thread.call(lambda: threading.current_thread().name) == "test"
    finally:
        thread.stop()
        assert thread.join(10)


# -- a model check of the store --------------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"),
            st.lists(st.tuples(st.integers(0, 15), st.integers(0, 40)), max_size=6),
        ),
        st.tuples(st.just("ack"), st.lists(st.integers(0, 15), max_size=6)),
    ),
    max_size=12,
)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
def test_the_store_behaves_like_a_bounded_ordered_dict(
    ops: list[tuple[str, list[Any]]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = Store.open(
            str(Path(directory) / "s.db"),
            limits=SpoolLimits(max_bytes=100),
            synchronous="NORMAL",
            integrity_check=True,
            max_slots=1,
            clock=lambda: 0.0,
        )
        try:
            model: dict[str, int] = {}  # id -> size, in insertion order
            for op, args in ops:
                if op == "append":
                    batch = [SpooledEvent(f"m{i}", "t", b"x" * n, (), 0.0) for i, n in args]
                    result = store.append(batch)
                    refused = []
                    for e in batch:
                        if e.message_id in model:
                            continue
                        if sum(model.values()) + e.size <= 100:
                            model[e.message_id] = e.size
                        else:
                            refused.append(e)
                    assert list(result.refused) == refused
                else:
                    store.ack([f"m{i}" for i in args])
                    for i in args:
                        model.pop(f"m{i}", None)
                assert [(e.message_id, e.size) for e in store.load(100, 0)] == list(model.items())
                stats = store.stats()
                assert (stats.count, stats.bytes) == (len(model), sum(model.values()))
        finally:
            store.close()


@pytest.mark.anyio
async def test_append_in_front_goes_first_and_moves_stored_events(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "front.spool")
    try:
        now = 1_700_000_000.0

        def make(name: str) -> SpooledEvent:
            return SpooledEvent(f"id-{name}", name, b'{"n":1}', ("u:1",), now)

        await spool.append([make("a"), make("b")])
        await spool.append([make("c")], front=True)
        assert [e.name for e in await spool.load(limit=10)] == ["c", "a", "b"]
        result = await spool.append([make("b"), make("d")], front=True)
        assert result.stored == 1  # "b" was moved, not added
        assert [e.name for e in await spool.load(limit=10)] == ["b", "d", "c", "a"]
        stats = await spool.stats()
        assert (stats.count, stats.bytes) == (4, 4 * len(b'{"n":1}'))
    finally:
        await spool.close()
