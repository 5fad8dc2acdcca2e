"""
:class:`RetryQueue` over a real SQLite file: restarts, durable adds, stored failure
state and unreadable rows. Scheduling still runs on a ``Clock``; only the database
work uses adbapi's real thread, so these tests are asynchronous (and quick).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from kraken.persistedretry import Backoff, RetryQueue, SQLiteTaskStore
from tests.persistedretry.helpers import ControlledExecutor, ScriptedExecutor


class SQLiteQueueTests(TestCase):
    """The queue with :class:`SQLiteTaskStore` underneath."""

    def setUp(self) -> None:
        """A directory for ``tasks.db`` and a clock at t=1000."""
        directory = FilePath(self.mktemp())
        directory.makedirs()
        self.path = directory.child("tasks.db").path
        self.clock = Clock()
        self.clock.advance(1000)

    async def started(self, executor: Any, **kw: Any) -> RetryQueue:
        """A started queue over ``tasks.db`` whose stored tasks are loaded."""
        kw.setdefault("backoff", Backoff(initial=1, multiplier=2, maximum=8, jitter=0))
        queue = RetryQueue(SQLiteTaskStore(self.path), {"writeback": executor}, self.clock, **kw)
        queue.startService()
        await queue.when_ready()
        return queue

    def rows(self) -> list[tuple[Any, ...]]:
        """Every row of the file, read through a separate connection."""
        connection = sqlite3.connect(self.path)
        try:
            return connection.execute(
                "SELECT kind, key, payload, attempts, last_error, next_attempt_at"
                " FROM retry_task ORDER BY key"
            ).fetchall()
        finally:
            connection.close()

    async def test_add_is_durable_when_it_fires(self) -> None:
        """When add fires, the row is in the file (another connection sees it)."""
        queue = await self.started(ControlledExecutor(self.clock))
        await queue.add("writeback", "ns/a", {"namespace": "ns"}, delay=60)
        self.assertEqual(self.rows(), [("writeback", "ns/a", '{"namespace":"ns"}', 0, None, 1060)])
        await queue.stopService()

    async def test_survives_restart(self) -> None:
        """A task added before a stop runs in a new queue over the same file, then is gone."""
        first = await self.started(ControlledExecutor(self.clock))
        await first.add("writeback", "ns/a", {"n": 1}, delay=30)
        await first.stopService()

        executor = ScriptedExecutor(self.clock)
        second = await self.started(executor)
        self.assertTrue(second.pending("writeback", "ns/a"))
        self.clock.advance(29)
        self.assertEqual(executor.tasks, [])
        self.clock.advance(1)
        self.assertEqual([t.payload for t in executor.tasks], [{"n": 1}])
        self.assertFalse(second.pending("writeback", "ns/a"))
        await second.stopService()
        self.assertEqual(self.rows(), [])

    async def test_failure_survives_restart(self) -> None:
        """A failed attempt's count, error and next time are in the file after a stop."""
        executor = ScriptedExecutor(self.clock, errors=[OSError("backend down")])
        first = await self.started(executor)
        await first.add("writeback", "ns/a", {})
        await first.stopService()
        self.assertEqual(
            self.rows(), [("writeback", "ns/a", "{}", 1, "OSError: backend down", 1001)]
        )
        self.flushLoggedErrors(OSError)

        retry = ScriptedExecutor(self.clock)
        second = await self.started(retry)
        self.assertEqual(retry.tasks, [])
        self.clock.advance(1)
        self.assertEqual([t.attempts for t in retry.tasks], [1])
        await second.stopService()
        self.assertEqual(self.rows(), [])

    async def test_abandoned_attempt_runs_after_restart(self) -> None:
        """An attempt cut short by stop leaves its row as it was; the next start runs it."""
        hanging = ControlledExecutor(self.clock)
        first = await self.started(hanging, stop_timeout=0)
        await first.add("writeback", "ns/a", {})
        stopping = first.stopService()
        self.clock.advance(0)
        await stopping
        self.assertTrue(hanging.calls[0].cancelled)
        self.assertEqual(self.rows(), [("writeback", "ns/a", "{}", 0, None, 1000)])

        executor = ScriptedExecutor(self.clock)
        second = await self.started(executor)
        self.assertEqual(len(executor.tasks), 1)
        await second.stopService()
        self.assertEqual(self.rows(), [])

    async def test_idempotent_add(self) -> None:
        """Two adds of the same (kind, key) leave one row, with the last payload."""
        queue = await self.started(ControlledExecutor(self.clock))
        await queue.add("writeback", "ns/a", {"v": 1}, delay=10)
        await queue.add("writeback", "ns/a", {"v": 2}, delay=20)
        self.assertEqual(self.rows(), [("writeback", "ns/a", '{"v":2}', 0, None, 1010)])
        await queue.stopService()

    async def test_unreadable_rows(self) -> None:
        """Corrupt and unknown-kind rows are logged and left alone; good rows still run."""
        store = SQLiteTaskStore(self.path)
        await store.open()
        await store.close()
        connection = sqlite3.connect(self.path)
        insert = (
            "INSERT INTO retry_task (kind, key, payload, created_at, attempts, last_error,"
            " next_attempt_at) VALUES (?, ?, ?, 1, 0, NULL, ?)"
        )
        connection.execute(insert, ("writeback", "ns/bad", "{oops", 1.0))
        connection.execute(insert, ("writeback", "ns/time", "{}", "never"))
        connection.execute(insert, ("replicate-tag", "repo:tag", "{}", 1.0))
        connection.execute(insert, ("writeback", "ns/good", "{}", 1.0))
        connection.commit()
        connection.close()

        executor = ScriptedExecutor(self.clock)
        with capturedLogs() as events:
            queue = await self.started(executor)
        self.assertEqual([t.key for t in executor.tasks], ["ns/good"])
        for kind, key in [
            ("writeback", "ns/bad"),
            ("writeback", "ns/time"),
            ("replicate-tag", "repo:tag"),
        ]:
            self.assertTrue(queue.pending(kind, key))
        self.assertEqual(len([e for e in events if e["log_level"] == LogLevel.error]), 2)
        await queue.stopService()
        self.assertEqual([row[1] for row in self.rows()], ["ns/bad", "ns/time", "repo:tag"])

    async def test_concurrency_over_sqlite(self) -> None:
        """Twenty adds with a limit of three: never more than three attempts at once."""
        executor = ControlledExecutor(self.clock)
        queue = await self.started(executor, max_in_flight=3)
        for n in range(20):
            await queue.add("writeback", f"ns/{n:02}", {})
        peak = 0
        while executor.running():
            peak = max(peak, len(executor.running()))
            executor.running()[0].deferred.callback(None)
        self.assertEqual((peak, len(executor.calls)), (3, 20))
        await queue.stopService()
        self.assertEqual(self.rows(), [])
