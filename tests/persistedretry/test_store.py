"""
The :class:`ITaskStore` suite, run against the memory store and SQLite, plus the
SQLite-only behaviour (WAL, durability seen from another connection, corrupt rows).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from kraken.persistedretry import (
    CorruptTask,
    ITaskStore,
    MemoryTaskStore,
    SchemaTooNew,
    SQLiteTaskStore,
    StoreClosed,
    Task,
)
from kraken.persistedretry.task import MAX_ERROR_LENGTH


def task(key: str = "ns/1", kind: str = "writeback", **kw: Any) -> Task:
    """A task with sensible defaults."""
    fields: dict[str, Any] = {"payload": {"n": key}, "created_at": 10.0, "next_attempt_at": 20.0}
    fields.update(kw)
    return Task(kind, key, **fields)


class TaskStoreTests:
    """Abstract suite: subclasses implement ``make_store`` and ``reopen``."""

    assertEqual: Any
    assertFailure: Any
    assertTrue: Any

    def make_store(self) -> Any:
        """A new, empty, closed store."""
        raise NotImplementedError

    def reopen(self, store: Any) -> Any:
        """A closed store over the same data as the closed ``store`` (a restart)."""
        raise NotImplementedError

    async def opened(self) -> Any:
        """A new store, opened."""
        store = self.make_store()
        await store.open()
        return store

    def test_interface(self) -> None:
        """The store provides ITaskStore."""
        self.assertTrue(verifyObject(ITaskStore, self.make_store()))

    async def test_empty(self) -> None:
        """A new store loads nothing."""
        store = await self.opened()
        loaded = await store.load()
        self.assertEqual((loaded.tasks, loaded.corrupt), ((), ()))
        await store.close()

    async def test_put_load(self) -> None:
        """Tasks put are loaded back equal, every field included."""
        store = await self.opened()
        a = task("ns/a", payload={"deps": ["x", "y"], "n": 1})
        b = task("ns/b", kind="replicate", attempts=3, last_error="boom", next_attempt_at=99.5)
        await store.put(a)
        await store.put(b)
        loaded = await store.load()
        self.assertEqual(sorted(loaded.tasks, key=lambda t: t.key), [a, b])
        await store.close()

    async def test_put_overwrites(self) -> None:
        """A second put of the same (kind, key) replaces the whole row."""
        store = await self.opened()
        await store.put(task("ns/a"))
        newer = task("ns/a", payload={"v": 2}, attempts=2, last_error="e", next_attempt_at=50.0)
        await store.put(newer)
        self.assertEqual((await store.load()).tasks, (newer,))
        await store.close()

    async def test_same_key_other_kind(self) -> None:
        """The same key under two kinds is two tasks."""
        store = await self.opened()
        await store.put(task("k", kind="one"))
        await store.put(task("k", kind="two"))
        self.assertEqual(len((await store.load()).tasks), 2)
        await store.close()

    async def test_remove(self) -> None:
        """remove deletes one row; removing a missing row is not an error."""
        store = await self.opened()
        await store.put(task("ns/a"))
        await store.put(task("ns/b"))
        await store.remove("writeback", "ns/a")
        await store.remove("writeback", "ns/missing")
        self.assertEqual([t.key for t in (await store.load()).tasks], ["ns/b"])
        await store.close()

    async def test_survives_reopen(self) -> None:
        """Rows put before close are loaded by a store over the same data (a restart)."""
        store = await self.opened()
        kept = task("ns/a", attempts=1, last_error="x")
        await store.put(kept)
        await store.put(task("ns/b"))
        await store.remove("writeback", "ns/b")
        await store.close()
        again = self.reopen(store)
        await again.open()
        self.assertEqual((await again.load()).tasks, (kept,))
        await again.close()

    async def test_closed(self) -> None:
        """Operations on a closed store fail with StoreClosed instead of hanging."""
        store = self.make_store()
        await self.assertFailure(store.put(task()), StoreClosed)
        await store.open()
        await store.close()
        await self.assertFailure(store.load(), StoreClosed)
        await self.assertFailure(store.remove("writeback", "x"), StoreClosed)


class MemoryTaskStoreTests(TaskStoreTests, TestCase):
    """The suite against :class:`MemoryTaskStore`."""

    def make_store(self) -> MemoryTaskStore:
        """A new memory store."""
        return MemoryTaskStore()

    def reopen(self, store: MemoryTaskStore) -> MemoryTaskStore:
        """The same object: its rows outlive close."""
        return store

    async def test_put_replaces_corrupt(self) -> None:
        """A put over a seeded corrupt row clears it, as SQLite's upsert does."""
        store = MemoryTaskStore(corrupt=[CorruptTask("writeback", "ns/a", "bad")])
        await store.open()
        await store.put(task("ns/a"))
        self.assertEqual((await store.load()).corrupt, ())


class SQLiteTaskStoreTests(TaskStoreTests, TestCase):
    """The suite against :class:`SQLiteTaskStore`, and what only SQLite does."""

    def setUp(self) -> None:
        """A fresh directory for the database."""
        self.dir = FilePath(self.mktemp())
        self.dir.makedirs()
        self.path = self.dir.child("tasks.db").path

    def make_store(self) -> SQLiteTaskStore:
        """A store over ``tasks.db`` in the test's directory."""
        return SQLiteTaskStore(self.path)

    def reopen(self, store: SQLiteTaskStore) -> SQLiteTaskStore:
        """A new store object over the same file."""
        return SQLiteTaskStore(store.path)

    def raw(self) -> sqlite3.Connection:
        """A separate connection to the file, as another process would have."""
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        return connection

    async def test_wal_and_durable(self) -> None:
        """The file is in WAL mode and a put is visible to another connection once it fires."""
        store = await self.opened()
        self.assertEqual(store.journal_mode, "wal")
        await store.put(task("ns/a", payload={"z": 1}))
        rows = self.raw().execute("SELECT kind, key, payload FROM retry_task").fetchall()
        self.assertEqual(rows, [("writeback", "ns/a", '{"z":1}')])
        await store.close()

    async def test_long_error_truncated(self) -> None:
        """last_error is stored cut to MAX_ERROR_LENGTH characters."""
        store = await self.opened()
        await store.put(task("ns/a", last_error="e" * (MAX_ERROR_LENGTH + 50)))
        (loaded,) = (await store.load()).tasks
        self.assertEqual(loaded.last_error, "e" * MAX_ERROR_LENGTH)
        await store.close()

    async def test_corrupt_rows(self) -> None:
        """Rows that do not decode come back as CorruptTask, beside the good ones."""
        store = await self.opened()
        good = task("ns/good")
        await store.put(good)
        raw = self.raw()
        insert = (
            "INSERT INTO retry_task (kind, key, payload, created_at, attempts, last_error,"
            " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        raw.execute(insert, ("writeback", "ns/json", "{not json", 1.0, 0, None, 1.0))
        raw.execute(insert, ("writeback", "ns/list", json.dumps([1]), 1.0, 0, None, 1.0))
        raw.execute(insert, ("writeback", "ns/time", "{}", "yesterday", 0, None, 1.0))
        raw.execute(insert, ("writeback", "ns/attempts", "{}", 1.0, -4, None, 1.0))
        raw.execute(insert, ("writeback", "ns/error", "{}", 1.0, 0, b"\x00", 1.0))
        raw.execute(insert, ("writeback", b"\xffkey", "{}", 1.0, 0, None, 1.0))
        raw.commit()
        loaded = await store.load()
        self.assertEqual(loaded.tasks, (good,))
        ids = sorted((c.kind or "", c.key or "") for c in loaded.corrupt)
        self.assertEqual(
            ids,
            [
                ("writeback", ""),
                ("writeback", "ns/attempts"),
                ("writeback", "ns/error"),
                ("writeback", "ns/json"),
                ("writeback", "ns/list"),
                ("writeback", "ns/time"),
            ],
        )
        self.assertTrue(all(c.reason for c in loaded.corrupt))
        await store.close()

    async def test_schema_too_new(self) -> None:
        """A file from a newer schema version is refused, not misread."""
        raw = self.raw()
        raw.execute("PRAGMA user_version = 99")
        raw.commit()
        store = self.make_store()
        await self.assertFailure(store.open(), SchemaTooNew)
        # The failed open released the pool: the store can be opened again later.
        raw.execute("PRAGMA user_version = 1")
        raw.commit()
        await store.open()
        await store.close()

    async def test_not_a_database(self) -> None:
        """A file that is not SQLite makes open fail with the database error."""
        FilePath(self.path).setContent(b"this is not a database file" * 100)
        await self.assertFailure(self.make_store().open(), sqlite3.DatabaseError)

    async def test_open_twice(self) -> None:
        """Opening an open store is an error, not a second pool."""
        store = await self.opened()
        await self.assertFailure(store.open(), RuntimeError)
        await store.close()
        await self.assertFailure(store.close(), StoreClosed)
