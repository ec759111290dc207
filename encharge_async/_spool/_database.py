"""The spool file and its SQLite connection: locking, file safety, schema, recovery.

Everything here runs in the spool's own thread, which creates and alone uses the
connection (`check_same_thread` stays on). `Store` (`_store.py`) runs its queries through
`Database.run`, which turns SQLite's errors into `SpoolError`s and sets an unreadable file
aside for an empty one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from ._lock import (
    FileIdentity,
    lock_file_identity,
    lock_spool,
    open_no_follow,
    owner_only,
    refuse_symlink,
    unlock_file_identity,
)
from ._model import SpoolClosedError, SpoolCorruptError, SpoolError

__all__ = ["SCHEMA_VERSION", "Database", "UnusableError"]

logger = logging.getLogger("encharge_async.spool")

_T = TypeVar("_T")

SCHEMA_VERSION: Final = 1
# Stamped in the database header ("EnCh"): tells our files from other SQLite files.
APPLICATION_ID: Final = 0x456E4368
# The WAL is truncated back to this size after a checkpoint.
_WAL_SIZE_LIMIT: Final = 8 * 1024 * 1024
# Seconds SQLite waits for a lock held by an outside reader (say, the sqlite3 shell).
_BUSY_TIMEOUT: Final = 5.0
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
_SIDE_FILES: Final = ("-wal", "-shm")

_SCHEMA: Final = (
    "CREATE TABLE spool_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    # AUTOINCREMENT: a seq is never reused, so a `load(after=seq)` cursor never skips a row.
    "CREATE TABLE events ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " message_id TEXT NOT NULL UNIQUE,"
    " name TEXT NOT NULL,"
    " body BLOB NOT NULL,"
    " keys TEXT NOT NULL,"
    " created_at REAL NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX events_by_age ON events (created_at)",
)


class UnusableError(Exception):
    """The file is SQLite but not a spool this version can read, or a row is garbage.

    It never leaves the spool package: the file is set aside for an empty one, and
    `Database.run` raises `SpoolCorruptError` instead."""


def _is_unreadable(exc: sqlite3.DatabaseError | UnusableError) -> bool:
    """True for errors that mean the file's content is bad (as opposed to the disk or OS)."""
    if isinstance(exc, UnusableError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()  # pragma: no cover - Python 3.10
    return "malformed" in text or "not a database" in text or "corrupt" in text  # pragma: no cover


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # pragma: no cover - we have just created a file in it
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that cannot sync a directory
        pass
    finally:
        os.close(fd)


class Database:
    """One spool file, locked, and its connection. Not thread-safe: one thread uses it."""

    def __init__(self, path: Path, lock_fd: int, synchronous: str, integrity_check: bool) -> None:
        self.path = path
        self.moved_aside: list[Path] = []
        self._lock_fd: int | None = lock_fd
        # The database file, held open (and locked by identity) while SQLite uses it.
        self._db_fd: int | None = None
        self._identity: FileIdentity | None = None
        self._append_sync = synchronous
        self._sync: str | None = None
        self._integrity_check = integrity_check
        self._conn: sqlite3.Connection | None = None
        self._broken: str | None = None  # why the connection is gone, when not closed
        # Events and bytes stored when the file was last (re)opened: the store counts on.
        self.counted: tuple[int, int] = (0, 0)

    @classmethod
    def open(
        cls, template: str, *, synchronous: str, integrity_check: bool, max_slots: int
    ) -> Database:
        """Lock and open the spool, setting an unreadable file aside for a fresh one.

        Raises SpoolLockedError, or SpoolError when the file cannot be opened or created.
        """
        try:
            path, fd = lock_spool(template, max_slots)
        except OSError as exc:
            raise SpoolError(f"cannot open spool {template!r}: {exc}") from exc
        database = cls(path, fd, synchronous, integrity_check)
        try:
            try:
                database._conn = database._connect()
            except (sqlite3.DatabaseError, UnusableError) as exc:
                if not _is_unreadable(exc):
                    raise SpoolError(f"cannot open spool {str(path)!r}: {exc}") from exc
                database._recover(exc)
            except OSError as exc:
                raise SpoolError(f"cannot open spool {str(path)!r}: {exc}") from exc
        except BaseException:
            database.close()
            raise
        return database

    def _hold_file(self) -> bool:
        """Open the database file (created 0600) without following a link, and lock it by
        its identity (device, inode): whether it was created.

        Raises SpoolError for a link or something other than a regular file,
        SpoolLockedError when this file is held under another path.
        """
        path = str(self.path)
        # SQLite follows links when it opens the WAL and SHM files: look before it does.
        for suffix in _SIDE_FILES:
            refuse_symlink(path + suffix)
        created = not os.path.lexists(path)
        fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SpoolError(f"spool {path!r} is not a regular file")
            owner_only(path, fd)  # SQLite gives the WAL and SHM files the database's mode
            self._identity = lock_file_identity(fd, self.path)
        except BaseException:
            os.close(fd)
            raise
        self._db_fd = fd
        for suffix in _SIDE_FILES:  # left over from a crash, perhaps with a wider mode
            owner_only(path + suffix)
        return created

    def _check_same_file(self) -> None:
        """Raise SpoolError unless the path still names the file held (and SQLite's WAL and
        SHM files are no links): a swap between our open and SQLite's is refused."""
        path = str(self.path)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is None or (info.st_dev, info.st_ino) != self._identity:
            refuse_symlink(path)
            raise SpoolError(f"spool {path!r} was replaced while it was being opened")
        for suffix in _SIDE_FILES:
            refuse_symlink(path + suffix)

    def _connect(self) -> sqlite3.Connection:
        """Open the file (created owner-only), check its schema or create it, configure it.

        Nothing is written to a file that turns out not to be a spool of this version.
        """
        path = str(self.path)
        created = self._hold_file()
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT, isolation_level=None)
        try:
            # The first read: raises DatabaseError when the file is not SQLite at all.
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {row[0] for row in rows}
            self._check_same_file()
            if tables:
                self._check_schema(conn, tables)
            else:
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":  # pragma: no cover - file systems without shared memory
                raise SpoolError(f"spool {path!r}: SQLite cannot use WAL mode here ({mode})")
            conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
            # Deleted rows (delivered events: people's data) are overwritten with zeros rather
            # than left in free pages. It is a per-connection setting.
            conn.execute("PRAGMA secure_delete = ON")
            self._sync = None
            self._set_sync(conn, self._append_sync)
            if not tables:
                self._create_schema(conn)
                if created:  # a power cut must not lose the new file's directory entry
                    _sync_directory(self.path.parent)
            # Read here, where a damaged file is still set aside quietly at open.
            self.counted = conn.execute(
                "SELECT count(*), coalesce(sum(length(body)), 0) FROM events"
            ).fetchone()
            self._check_same_file()
            for suffix in _SIDE_FILES:
                owner_only(path + suffix)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO spool_meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")

    def _check_schema(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        """Raise UnusableError unless the file is a spool of this schema version (and sound)."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id != APPLICATION_ID or not {"spool_meta", "events"} <= tables:
            raise UnusableError(
                f"not an encharge-async spool (application_id {app_id:#x}, tables {sorted(tables)})"
            )
        row = conn.execute("SELECT value FROM spool_meta WHERE key = 'schema_version'").fetchone()
        version = None if row is None else row[0]
        if version != str(SCHEMA_VERSION):
            raise UnusableError(
                f"schema version {version}, but this version of encharge-async reads only "
                f"version {SCHEMA_VERSION}"
            )
        if self._integrity_check:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise UnusableError("integrity check failed: " + "; ".join(map(str, problems)))

    def _set_sync(self, conn: sqlite3.Connection, level: str) -> None:
        if level != self._sync:
            conn.execute(f"PRAGMA synchronous = {level}")
            self._sync = level

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        # After SQLite's close: closing any descriptor of a file drops every fcntl lock the
        # process holds on it, SQLite's included.
        fd, self._db_fd = self._db_fd, None
        identity, self._identity = self._identity, None
        if identity is not None:
            unlock_file_identity(identity)
        if fd is not None:
            os.close(fd)

    def _recover(self, reason: BaseException) -> Path:
        """Move the unreadable file aside, start an empty spool, log it: the moved path."""
        self._disconnect()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = base = f"{self.path}.corrupt-{stamp}"
        n = 1
        while any(os.path.lexists(target + suffix) for suffix in ("", *_SIDE_FILES)):
            n += 1
            target = f"{base}-{n}"
        try:
            for suffix in ("", *_SIDE_FILES):
                if os.path.lexists(f"{self.path}{suffix}"):
                    os.replace(f"{self.path}{suffix}", target + suffix)
            self._conn = self._connect()
        except (OSError, sqlite3.DatabaseError, UnusableError) as exc:
            self._broken = (
                f"spool {str(self.path)!r} is unreadable ({reason}) "
                f"and could not be replaced: {exc}"
            )
            logger.error("%s", self._broken)
            raise SpoolError(self._broken) from exc
        moved = Path(target)
        self.moved_aside.append(moved)
        logger.error(
            "spool %s is unreadable (%s): moved it aside to %s and started an empty spool",
            self.path,
            reason,
            moved,
        )
        return moved

    def run(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `op`; roll back on error, and turn SQLite errors into SpoolError."""
        conn = self._conn
        if conn is None:
            if self._broken is not None:
                raise SpoolError(self._broken)
            raise SpoolClosedError(f"spool {str(self.path)!r} is closed")
        try:
            return op(conn)
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if not isinstance(exc, (sqlite3.DatabaseError, UnusableError)):
                raise
            if not _is_unreadable(exc):
                raise SpoolError(f"spool {str(self.path)!r}: {exc}") from exc
            moved = self._recover(exc)
            raise SpoolCorruptError(
                f"spool {str(self.path)!r} became unreadable ({exc}); moved it aside to "
                f"{str(moved)!r} and started an empty spool",
                moved,
            ) from exc

    def set_sync(self, conn: sqlite3.Connection, level: str | None = None) -> None:
        """Commit with `level` (default: the spool's `synchronous`) from now on."""
        self._set_sync(conn, self._append_sync if level is None else level)

    def close(self) -> None:
        """Close the connection (SQLite checkpoints and removes the WAL), release the lock."""
        try:
            self._disconnect()
        finally:
            fd, self._lock_fd = self._lock_fd, None
            if fd is not None:
                os.close(fd)  # releases the flock
