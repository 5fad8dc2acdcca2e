"""
The durable :class:`ITaskStore`: one SQLite file through ``twisted.enterprise.adbapi``.

Every statement runs on the pool's single thread (``cp_min=cp_max=1``), so the reactor
never waits for the disk and operations happen in the order they were called, which
the queue relies on. The journal is WAL with ``synchronous=FULL``: a transaction is
on disk when its Deferred fires, even across a power loss, which is what lets an
origin acknowledge an upload only after its write-back task is stored.

The table, one row per task::

    retry_task(kind TEXT, key TEXT, payload TEXT (JSON object), created_at REAL,
               attempts INTEGER, last_error TEXT, next_attempt_at REAL,
               PRIMARY KEY (kind, key))

``PRAGMA user_version`` holds the schema version (1); a newer file is refused rather
than misread.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Final, cast

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from zope.interface import implementer

from kraken.persistedretry.interfaces import ITaskStore
from kraken.persistedretry.memory import StoreClosed
from kraken.persistedretry.task import (
    MAX_ERROR_LENGTH,
    CorruptTask,
    InvalidTask,
    LoadedTasks,
    Task,
    decode_payload,
)

SCHEMA_VERSION: Final = 1

_CREATE = """
CREATE TABLE IF NOT EXISTS retry_task (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at REAL NOT NULL,
    PRIMARY KEY (kind, key)
)
"""

_PUT = """
INSERT INTO retry_task
    (kind, key, payload, created_at, attempts, last_error, next_attempt_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (kind, key) DO UPDATE SET
    payload = excluded.payload,
    created_at = excluded.created_at,
    attempts = excluded.attempts,
    last_error = excluded.last_error,
    next_attempt_at = excluded.next_attempt_at
"""

_SELECT = """
SELECT kind, key, payload, created_at, attempts, last_error, next_attempt_at
FROM retry_task
"""


class SchemaTooNew(RuntimeError):
    """The database was written by a newer version of this code."""


def _configure(connection: sqlite3.Connection) -> None:
    """Per-connection settings; runs on the pool thread right after ``connect``."""
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


def _create_schema(txn: sqlite3.Cursor, path: str) -> str:
    """Create the table if needed and return the journal mode (adbapi passes a cursor)."""
    txn.execute("PRAGMA user_version")
    version = txn.fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"task database {path!r} has schema version {version}; "
            f"this code knows up to {SCHEMA_VERSION}"
        )
    txn.execute(_CREATE)
    if version < SCHEMA_VERSION:
        txn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    txn.execute("PRAGMA journal_mode")
    return str(txn.fetchone()[0])


def _decode_row(row: tuple[Any, ...]) -> Task | CorruptTask:
    kind, key, payload, created_at, attempts, last_error, next_attempt_at = row
    readable_kind = kind if isinstance(kind, str) else None
    readable_key = key if isinstance(key, str) else None
    if readable_kind is None or readable_key is None:
        return CorruptTask(readable_kind, readable_key, f"kind/key not text: {kind!r}/{key!r}")
    try:
        if not isinstance(payload, str):
            raise ValueError(f"payload is not text: {payload!r}")
        if last_error is not None and not isinstance(last_error, str):
            raise ValueError(f"last_error is not text: {last_error!r}")
        return Task(
            kind=kind,
            key=key,
            payload=decode_payload(payload),
            created_at=created_at,
            next_attempt_at=next_attempt_at,
            attempts=attempts,
            last_error=last_error,
        )
    except (ValueError, InvalidTask) as e:
        return CorruptTask(kind, key, str(e))


def _load(txn: sqlite3.Cursor) -> LoadedTasks:
    txn.execute(_SELECT)
    tasks: list[Task] = []
    corrupt: list[CorruptTask] = []
    for row in txn.fetchall():
        decoded = _decode_row(tuple(row))
        if isinstance(decoded, Task):
            tasks.append(decoded)
        else:
            corrupt.append(decoded)
    return LoadedTasks(tuple(tasks), tuple(corrupt))


def _put(txn: sqlite3.Cursor, task: Task) -> None:
    last_error = task.last_error
    if last_error is not None:
        last_error = last_error[:MAX_ERROR_LENGTH]
    txn.execute(
        _PUT,
        (
            task.kind,
            task.key,
            task.payload_json(),
            task.created_at,
            task.attempts,
            last_error,
            task.next_attempt_at,
        ),
    )


def _remove(txn: sqlite3.Cursor, kind: str, key: str) -> None:
    txn.execute("DELETE FROM retry_task WHERE kind = ? AND key = ?", (kind, key))


def _checkpoint(txn: sqlite3.Cursor) -> None:
    # Fold the WAL into the main file now, on the pool thread, so that closing the
    # connection (which adbapi does on the reactor thread) has nothing left to write.
    txn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@implementer(ITaskStore)
class SQLiteTaskStore:
    """
    Tasks in the SQLite file at ``path``, whose directory must exist.

    ``reactor`` must provide ``IReactorThreads`` and ``IReactorCore`` (adbapi needs
    both); by default it is the global reactor, which is what the daemons use. Tests
    schedule tasks on a ``Clock`` but still run this store on the real reactor.
    """

    log = Logger()

    def __init__(self, path: str | os.PathLike[str], reactor: IReactorThreads | None = None):
        """Remember where the file is; nothing touches the disk before :meth:`open`."""
        self.path = os.fspath(path)
        self._reactor = reactor
        self._pool: adbapi.ConnectionPool | None = None
        self.journal_mode: str | None = None
        """The journal mode SQLite granted (``"wal"`` on any ordinary filesystem)."""

    def _interaction(self, operation: str, function: Any, *args: Any) -> Deferred[Any]:
        if self._pool is None:
            return fail(StoreClosed(f"{operation} on closed task store {self.path!r}"))
        return cast(
            "Deferred[Any]",
            self._pool.runInteraction(function, *args),  # type: ignore[no-untyped-call]
        )

    def open(self) -> Deferred[None]:
        """Start the pool's thread, configure the connection and create the schema."""
        if self._pool is not None:
            return fail(RuntimeError(f"task store {self.path!r} is already open"))
        extra: dict[str, Any] = {}
        if self._reactor is not None:
            extra["cp_reactor"] = self._reactor
        pool = adbapi.ConnectionPool(  # type: ignore[no-untyped-call]
            "sqlite3",
            self.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_configure,
            cp_reconnect=False,
            **extra,
        )
        pool.start()  # type: ignore[no-untyped-call]
        self._pool = pool

        def opened(mode: str) -> None:
            self.journal_mode = mode
            if mode.lower() != "wal":
                self.log.warn(
                    "task store {path} runs in journal mode {mode}, not WAL",
                    path=self.path,
                    mode=mode,
                )

        def failed(reason: Any) -> Any:
            self._pool = None
            pool.close()  # type: ignore[no-untyped-call]
            return reason

        d = self._interaction("open", _create_schema, self.path)
        d.addCallbacks(opened, failed)
        return d

    def load(self) -> Deferred[LoadedTasks]:
        """Read every row; rows that do not decode come back as :class:`CorruptTask`."""
        return self._interaction("load", _load)

    def put(self, task: Task) -> Deferred[None]:
        """Upsert the whole row of ``task`` in one durable transaction."""
        return self._interaction("put", _put, task)

    def remove(self, kind: str, key: str) -> Deferred[None]:
        """Delete the row of ``(kind, key)`` in one durable transaction."""
        return self._interaction("remove", _remove, kind, key)

    def close(self) -> Deferred[None]:
        """
        Wait for queued operations, checkpoint the WAL, stop the pool's thread.

        Operations run in order, so when the checkpoint is done every earlier
        operation is too. A failing checkpoint is logged; the pool closes anyway.
        """
        pool = self._pool
        if pool is None:
            return fail(StoreClosed(f"close of closed task store {self.path!r}"))
        d = self._interaction("close", _checkpoint)
        self._pool = None

        def checkpoint_failed(reason: Any) -> None:
            self.log.failure("checkpoint of task store {path} failed", reason, path=self.path)

        def stop(_: None) -> None:
            pool.close()  # type: ignore[no-untyped-call]

        d.addErrback(checkpoint_failed)
        d.addCallback(stop)
        return d
