"""
Tests for :class:`RetryQueue` over the memory store, with a ``Clock``: scheduling,
backoff, concurrency, ``pending``, duplicates, failures, restarts and shutdown.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from kraken.persistedretry import (
    Backoff,
    CorruptTask,
    InvalidTask,
    MemoryTaskStore,
    PermanentTaskFailure,
    PrometheusQueueMetrics,
    QueueStopped,
    RetryQueue,
    Task,
    UnknownTaskKind,
)
from tests.persistedretry.helpers import (
    ControlledExecutor,
    FailingPutStore,
    RecordingMetrics,
    ScriptedExecutor,
    SlowOpenStore,
)

NO_JITTER = Backoff(initial=1, multiplier=2, maximum=8, jitter=0)


class QueueTestCase(SynchronousTestCase):
    """Builds queues over one memory store, one clock and one controlled executor."""

    def setUp(self) -> None:
        """A clock at t=1000, an empty store and a controlled 'writeback' executor."""
        self.clock = Clock()
        self.clock.advance(1000)
        self.store: MemoryTaskStore = MemoryTaskStore()
        self.executor = ControlledExecutor(self.clock)

    def make_queue(self, start: bool = True, **kw: Any) -> RetryQueue:
        """A queue over ``self.store``; started unless ``start`` is false."""
        kw.setdefault("backoff", NO_JITTER)
        executors = kw.pop("executors", {"writeback": self.executor})
        queue = RetryQueue(self.store, executors, self.clock, **kw)
        if start:
            queue.startService()
        return queue

    def add(self, queue: RetryQueue, key: str, **kw: Any) -> None:
        """Add a 'writeback' task and assert that it was stored at once."""
        self.successResultOf(queue.add("writeback", key, kw.pop("payload", {"k": key}), **kw))


class SchedulingTests(QueueTestCase):
    """When tasks run, and what happens after."""

    def test_add_stores_then_runs(self) -> None:
        """add fires once the task is in the store; a task with no delay runs at once."""
        queue = self.make_queue()
        d = queue.add("writeback", "ns/a", {"namespace": "ns"})
        self.assertIsNone(self.successResultOf(d))
        (stored,) = self.store.rows.values()
        self.assertEqual(
            (stored.payload, stored.created_at, stored.next_attempt_at, stored.attempts),
            ({"namespace": "ns"}, 1000, 1000, 0),
        )
        self.assertEqual(self.executor.keys(), ["ns/a"])
        self.assertEqual(self.executor.calls[0].task, stored)

    def test_success_deletes(self) -> None:
        """A successful attempt deletes the task from memory and from the store."""
        queue = self.make_queue()
        self.add(queue, "ns/a")
        self.executor.calls[0].deferred.callback(None)
        self.assertEqual(self.store.rows, {})
        self.assertEqual(queue.tasks(), [])
        self.assertFalse(queue.pending("writeback", "ns/a"))

    def test_delay(self) -> None:
        """A task added with a delay waits that long before its first attempt."""
        queue = self.make_queue()
        self.add(queue, "ns/a", delay=10)
        self.assertEqual(self.store.rows[("writeback", "ns/a")].next_attempt_at, 1010)
        self.clock.advance(9.9)
        self.assertEqual(self.executor.calls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.executor.keys(), ["ns/a"])

    def test_soonest_first(self) -> None:
        """Due tasks run in order of their next attempt time, not of adding."""
        queue = self.make_queue(max_in_flight=1)
        self.add(queue, "ns/late", delay=5)
        self.add(queue, "ns/early", delay=2)
        self.add(queue, "ns/middle", delay=3)
        self.clock.advance(10)
        for n in range(3):
            self.assertEqual(len(self.executor.running()), 1)
            self.executor.calls[n].deferred.callback(None)
        self.assertEqual(self.executor.keys(), ["ns/early", "ns/middle", "ns/late"])

    def test_failures_back_off(self) -> None:
        """Each failure reschedules the task with growing delays up to the maximum."""
        executor = ScriptedExecutor(self.clock, errors=[OSError("down")] * 5)
        queue = self.make_queue(executors={"writeback": executor})
        self.add(queue, "ns/a")
        self.clock.pump([0.5] * 80)
        # Delays 1, 2, 4, 8, then capped at 8 (NO_JITTER); the sixth attempt succeeds.
        self.assertEqual(executor.times, [1000, 1001, 1003, 1007, 1015, 1023])
        self.assertEqual([t.attempts for t in executor.tasks], [0, 1, 2, 3, 4, 5])
        self.assertEqual(executor.tasks[1].last_error, "OSError: down")
        self.assertEqual(self.store.rows, {})
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 5)

    def test_failure_state_is_stored(self) -> None:
        """After a failure the store holds the attempt count, the error and the next time."""
        queue = self.make_queue()
        self.add(queue, "ns/a")
        self.executor.calls[0].deferred.errback(ValueError("bad gateway"))
        stored = self.store.rows[("writeback", "ns/a")]
        self.assertEqual(
            (stored.attempts, stored.last_error, stored.next_attempt_at),
            (1, "ValueError: bad gateway", 1001),
        )
        self.assertTrue(queue.pending("writeback", "ns/a"))
        self.flushLoggedErrors(ValueError)

    def test_jitter(self) -> None:
        """The jitter from ``rand`` shortens the backoff wait."""
        executor = ScriptedExecutor(self.clock, errors=[OSError("down")])
        queue = self.make_queue(
            executors={"writeback": executor},
            backoff=Backoff(initial=10, jitter=0.5),
            rand=lambda: 0.5,
        )
        self.add(queue, "ns/a")
        self.assertEqual(self.store.rows[("writeback", "ns/a")].next_attempt_at, 1007.5)
        self.flushLoggedErrors(OSError)

    def test_executor_raises(self) -> None:
        """An executor that raises instead of returning a Deferred is retried like a failure."""

        class Raising:
            """An executor with a bug."""

            def run(self, task: Task) -> Any:
                """Raise before returning anything."""
                raise RuntimeError("bug")

        queue = self.make_queue(executors={"writeback": Raising()})
        self.add(queue, "ns/a")
        self.assertEqual(self.store.rows[("writeback", "ns/a")].attempts, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(queue.in_flight(), 0)

    def test_permanent_failure_drops(self) -> None:
        """PermanentTaskFailure deletes the task and logs an error naming it."""
        queue = self.make_queue()
        self.add(queue, "ns/a")
        with capturedLogs() as events:
            self.executor.calls[0].deferred.errback(PermanentTaskFailure("no such namespace"))
        self.assertEqual(self.store.rows, {})
        self.assertFalse(queue.pending("writeback", "ns/a"))
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertEqual((errors[0]["key"], errors[0]["error"]), ("ns/a", "no such namespace"))
        self.clock.advance(100)
        self.assertEqual(len(self.executor.calls), 1)

    def test_timeout(self) -> None:
        """An attempt longer than attempt_timeout is cancelled and counted as a failure."""
        queue = self.make_queue(attempt_timeout=30)
        self.add(queue, "ns/a")
        self.clock.advance(29)
        self.assertFalse(self.executor.calls[0].cancelled)
        self.clock.advance(1)
        self.assertTrue(self.executor.calls[0].cancelled)
        stored = self.store.rows[("writeback", "ns/a")]
        self.assertEqual((stored.attempts, stored.last_error), (1, "timed out after 30.0s"))
        self.assertEqual(queue.in_flight(), 0)
        self.clock.advance(1)
        self.assertEqual(len(self.executor.calls), 2)
        self.flushLoggedErrors(CancelledError)

    def test_quick_attempt_not_timed_out(self) -> None:
        """A finished attempt's timeout is cancelled: no call is left on the clock."""
        queue = self.make_queue(attempt_timeout=30)
        self.add(queue, "ns/a")
        self.executor.calls[0].deferred.callback(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(queue.tasks(), [])


class ConcurrencyTests(QueueTestCase):
    """At most ``max_in_flight`` attempts run at once."""

    def test_limit(self) -> None:
        """Five due tasks with a limit of two: two run, and each finish starts one more."""
        queue = self.make_queue(max_in_flight=2)
        for n in range(5):
            self.add(queue, f"ns/{n}")
        self.assertEqual(len(self.executor.running()), 2)
        self.assertEqual(queue.in_flight(), 2)
        peak = 2
        while self.executor.running():
            self.executor.running()[0].deferred.callback(None)
            peak = max(peak, len(self.executor.running()))
        self.assertEqual(peak, 2)
        self.assertEqual(self.executor.keys(), [f"ns/{n}" for n in range(5)])
        self.assertEqual(self.store.rows, {})

    def test_limit_with_synchronous_executor(self) -> None:
        """Executors that finish at once do not recurse past the limit or lose tasks."""
        executor = ScriptedExecutor(self.clock)
        queue = self.make_queue(executors={"writeback": executor}, max_in_flight=1, start=False)
        for n in range(50):
            self.store.rows[("writeback", f"ns/{n}")] = Task(
                "writeback", f"ns/{n}", {}, created_at=0, next_attempt_at=n
            )
        queue.startService()
        self.assertEqual(len(executor.tasks), 50)
        self.assertEqual(self.store.rows, {})

    def test_failed_slot_is_reused(self) -> None:
        """A failed attempt frees its slot for the next due task."""
        queue = self.make_queue(max_in_flight=1)
        self.add(queue, "ns/a")
        self.add(queue, "ns/b")
        self.assertEqual(self.executor.keys(), ["ns/a"])
        self.executor.calls[0].deferred.errback(OSError("down"))
        self.assertEqual(self.executor.keys(), ["ns/a", "ns/b"])
        self.flushLoggedErrors(OSError)

    def test_bad_limit(self) -> None:
        """A limit below one, or a bad timeout, is refused when the queue is built."""
        self.assertRaises(ValueError, self.make_queue, max_in_flight=0, start=False)
        self.assertRaises(ValueError, self.make_queue, attempt_timeout=0, start=False)
        self.assertRaises(ValueError, self.make_queue, stop_timeout=-1, start=False)


class DuplicateTests(QueueTestCase):
    """Adding a (kind, key) that is already queued."""

    def test_idempotent(self) -> None:
        """A second add stores no second task; the last payload and the earlier time win."""
        queue = self.make_queue()
        self.add(queue, "ns/a", payload={"v": 1}, delay=10)
        self.add(queue, "ns/a", payload={"v": 2}, delay=20)
        self.assertEqual(len(self.store.rows), 1)
        stored = self.store.rows[("writeback", "ns/a")]
        self.assertEqual((stored.payload, stored.next_attempt_at), ({"v": 2}, 1010))
        self.clock.advance(10)
        self.assertEqual(len(self.executor.calls), 1)
        self.assertEqual(self.executor.calls[0].task.payload, {"v": 2})
        self.executor.calls[0].deferred.callback(None)
        self.clock.advance(100)
        self.assertEqual(len(self.executor.calls), 1)

    def test_earlier_add_moves_task_forward(self) -> None:
        """A duplicate add with a shorter delay makes the task due sooner."""
        queue = self.make_queue()
        self.add(queue, "ns/a", delay=100)
        self.add(queue, "ns/a", delay=5)
        self.clock.advance(5)
        self.assertEqual(len(self.executor.calls), 1)

    def test_duplicate_keeps_backoff_count(self) -> None:
        """A duplicate add of a failing task keeps its attempt count (backoff goes on)."""
        queue = self.make_queue()
        self.add(queue, "ns/a")
        self.executor.calls[0].deferred.errback(OSError("down"))
        self.add(queue, "ns/a", delay=50)
        self.assertEqual(self.store.rows[("writeback", "ns/a")].attempts, 1)
        self.assertEqual(self.store.rows[("writeback", "ns/a")].next_attempt_at, 1001)
        self.flushLoggedErrors(OSError)

    def test_add_while_running_runs_again(self) -> None:
        """An add during an attempt makes the task run again after success, with the new payload."""
        queue = self.make_queue()
        self.add(queue, "ns/a", payload={"v": 1})
        self.add(queue, "ns/a", payload={"v": 2})
        self.assertEqual(len(self.executor.calls), 1)
        self.assertEqual(self.store.rows[("writeback", "ns/a")].payload, {"v": 2})
        self.executor.calls[0].deferred.callback(None)
        self.assertTrue(queue.pending("writeback", "ns/a"))
        self.assertIn(("writeback", "ns/a"), self.store.rows)
        self.assertEqual(len(self.executor.calls), 2)
        self.assertEqual(self.executor.calls[1].task.payload, {"v": 2})
        self.executor.calls[1].deferred.callback(None)
        self.assertFalse(queue.pending("writeback", "ns/a"))
        self.assertEqual(self.store.rows, {})

    def test_add_while_running_then_failure(self) -> None:
        """An add during an attempt that fails runs at the add's time, not the backoff's."""
        queue = self.make_queue(backoff=Backoff(initial=60, jitter=0))
        self.add(queue, "ns/a")
        self.add(queue, "ns/a", delay=5)
        self.executor.calls[0].deferred.errback(OSError("down"))
        self.assertEqual(self.store.rows[("writeback", "ns/a")].next_attempt_at, 1005)
        self.clock.advance(5)
        self.assertEqual(len(self.executor.calls), 2)
        self.flushLoggedErrors(OSError)

    def test_add_while_running_then_permanent(self) -> None:
        """An add during an attempt that fails permanently still gets its own run."""
        queue = self.make_queue()
        self.add(queue, "ns/a")
        self.add(queue, "ns/a", payload={"fresh": True})
        self.executor.calls[0].deferred.errback(PermanentTaskFailure("gone"))
        self.assertEqual(len(self.executor.calls), 2)
        self.assertEqual(self.executor.calls[1].task.payload, {"fresh": True})


class PendingTests(QueueTestCase):
    """``pending`` answers from memory through the life of a task."""

    def test_lifecycle(self) -> None:
        """True from add through failures and retries, False after success."""
        queue = self.make_queue()
        self.assertFalse(queue.pending("writeback", "ns/a"))
        d = queue.add("writeback", "ns/a", {})
        self.assertTrue(queue.pending("writeback", "ns/a"))
        self.successResultOf(d)
        self.executor.calls[0].deferred.errback(OSError("down"))
        self.assertTrue(queue.pending("writeback", "ns/a"))
        self.clock.advance(1)
        self.assertTrue(queue.pending("writeback", "ns/a"))
        self.executor.calls[1].deferred.callback(None)
        self.assertFalse(queue.pending("writeback", "ns/a"))
        self.assertFalse(queue.pending("other", "ns/a"))
        self.flushLoggedErrors(OSError)

    def test_pending_while_unloaded(self) -> None:
        """Before the stored tasks are loaded, pending says True for anything (be safe)."""
        self.store = SlowOpenStore()
        queue = self.make_queue(start=False)
        self.assertTrue(queue.pending("writeback", "anything"))
        queue.startService()
        self.assertTrue(queue.pending("writeback", "anything"))
        self.store.opening.callback(None)
        self.assertFalse(queue.pending("writeback", "anything"))

    def test_no_store_access(self) -> None:
        """pending works with the store closed: it never reads it."""
        queue = self.make_queue()
        self.add(queue, "ns/a", delay=60)
        self.store.is_open = False
        self.assertTrue(queue.pending("writeback", "ns/a"))
        self.store.is_open = True


class LoadTests(QueueTestCase):
    """What the queue does with what it finds in the store at start."""

    def stored(self, key: str, kind: str = "writeback", **kw: Any) -> Task:
        """Put a task straight into the store, as a previous run would have."""
        fields: dict[str, Any] = {"created_at": 1, "next_attempt_at": 1000}
        fields.update(kw)
        task = Task(kind, key, {"from": "before"}, **fields)
        self.store.rows[task.id] = task
        return task

    def test_restart(self) -> None:
        """Tasks survive a restart: stop, build a new queue over the same store, they run."""
        queue = self.make_queue()
        self.add(queue, "ns/a", delay=30)
        self.add(queue, "ns/b")
        self.executor.calls[0].deferred.errback(OSError("down"))
        self.successResultOf(queue.stopService())
        self.assertFalse(self.store.is_open)

        self.executor = ControlledExecutor(self.clock)
        again = self.make_queue()
        self.assertTrue(again.pending("writeback", "ns/a"))
        self.assertEqual(self.executor.keys(), [])
        self.clock.advance(1)
        self.assertEqual(self.executor.keys(), ["ns/b"])
        self.assertEqual(self.executor.calls[0].task.attempts, 1)
        self.clock.advance(29)
        self.assertEqual(self.executor.keys(), ["ns/b", "ns/a"])
        self.flushLoggedErrors(OSError)

    def test_restart_same_service(self) -> None:
        """The same queue object can be started again after a stop, and reloads its tasks."""
        queue = self.make_queue(stop_timeout=0)
        self.add(queue, "ns/a")
        stopped = queue.stopService()
        self.clock.advance(0)
        self.successResultOf(stopped)
        queue.startService()
        self.assertEqual(self.executor.keys(), ["ns/a", "ns/a"])
        self.executor.calls[1].deferred.callback(None)
        self.assertEqual(self.store.rows, {})

    def test_overdue_tasks_run_at_start(self) -> None:
        """Stored tasks whose time has passed run at start; later ones wait for their time."""
        self.stored("ns/old", next_attempt_at=5)
        self.stored("ns/later", next_attempt_at=1100)
        queue = self.make_queue()
        self.assertEqual(self.executor.keys(), ["ns/old"])
        self.assertEqual(self.executor.calls[0].task.payload, {"from": "before"})
        self.clock.advance(100)
        self.assertEqual(self.executor.keys(), ["ns/old", "ns/later"])
        self.assertEqual(len(queue.tasks()), 2)

    def test_unknown_kind(self) -> None:
        """Rows of a kind without executor are logged, kept, not run, and count as pending."""
        other = self.stored("tag:1", kind="replicate-tag")
        self.stored("ns/a")
        with capturedLogs() as events:
            queue = self.make_queue()
        self.assertEqual(self.executor.keys(), ["ns/a"])
        self.assertTrue(queue.pending("replicate-tag", "tag:1"))
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual([(e["kind"], e["count"]) for e in warnings], [("replicate-tag", 1)])
        self.executor.calls[0].deferred.callback(None)
        self.successResultOf(queue.stopService())
        self.assertEqual(self.store.rows[other.id], other)

    def test_corrupt_rows(self) -> None:
        """Corrupt rows are logged and kept; good tasks still run; a new add replaces them."""
        self.store.corrupt = [
            CorruptTask("writeback", "ns/bad", "payload is not JSON"),
            CorruptTask(None, None, "kind/key not text"),
        ]
        self.stored("ns/good")
        with capturedLogs() as events:
            queue = self.make_queue()
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 2)
        self.assertEqual(self.executor.keys(), ["ns/good"])
        self.assertTrue(queue.pending("writeback", "ns/bad"))
        self.add(queue, "ns/bad", payload={"fixed": True})
        self.assertEqual(self.executor.keys(), ["ns/good", "ns/bad"])
        self.assertEqual(len(self.store.corrupt), 1)
        self.executor.calls[1].deferred.callback(None)
        self.assertFalse(queue.pending("writeback", "ns/bad"))

    def test_add_before_load_waits(self) -> None:
        """An add before the tasks are loaded waits, then merges with the stored task."""
        self.store = SlowOpenStore()
        self.stored("ns/a", next_attempt_at=1050, attempts=4)
        queue = self.make_queue()
        d = queue.add("writeback", "ns/a", {"v": 2}, delay=10)
        self.assertNoResult(d)
        self.store.opening.callback(None)
        self.successResultOf(d)
        stored = self.store.rows[("writeback", "ns/a")]
        self.assertEqual((stored.attempts, stored.next_attempt_at), (4, 1010))
        self.assertEqual(stored.payload, {"v": 2})

    def test_ready_after_scheduling(self) -> None:
        """When when_ready fires, due stored tasks have started and later ones have a timer."""
        self.store = SlowOpenStore()
        self.stored("ns/now", next_attempt_at=1000)
        self.stored("ns/later", next_attempt_at=1005)
        queue = self.make_queue()
        seen: list[tuple[list[str], int]] = []
        queue.when_ready().addCallback(
            lambda _: seen.append((self.executor.keys(), len(self.clock.getDelayedCalls())))
        )
        self.store.opening.callback(None)
        self.assertEqual(seen, [(["ns/now"], 1)])

    def test_load_failure(self) -> None:
        """If the store cannot load, adds fail with its error and pending stays True."""
        self.store = SlowOpenStore()
        queue = self.make_queue()
        waiting = queue.add("writeback", "ns/a", {})
        self.store.opening.errback(OSError("disk gone"))
        self.failureResultOf(waiting, OSError)
        self.failureResultOf(queue.add("writeback", "ns/b", {}), OSError)
        self.failureResultOf(queue.when_ready(), OSError)
        self.assertTrue(queue.pending("writeback", "ns/a"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.successResultOf(queue.stopService())


class AddErrorTests(QueueTestCase):
    """Adds the queue refuses."""

    def test_unknown_kind(self) -> None:
        """Adding a kind without an executor fails with UnknownTaskKind; nothing stored."""
        queue = self.make_queue()
        self.failureResultOf(queue.add("nope", "k", {}), UnknownTaskKind)
        self.assertEqual(self.store.rows, {})

    def test_invalid(self) -> None:
        """Bad keys, payloads and delays fail with InvalidTask; nothing stored."""
        queue = self.make_queue()
        self.failureResultOf(queue.add("writeback", "", {}), InvalidTask)
        self.failureResultOf(queue.add("writeback", "k", {"x": {1, 2}}), InvalidTask)
        self.failureResultOf(queue.add("writeback", "k", {}, delay=-1), InvalidTask)
        self.failureResultOf(queue.add("writeback", "k", {}, delay=float("nan")), InvalidTask)
        self.assertEqual(self.store.rows, {})
        self.assertFalse(queue.pending("writeback", "k"))

    def test_after_stop(self) -> None:
        """Adding to a stopped queue fails with QueueStopped."""
        queue = self.make_queue()
        self.successResultOf(queue.stopService())
        self.failureResultOf(queue.add("writeback", "k", {}), QueueStopped)

    def test_store_write_fails(self) -> None:
        """If the store cannot write, add fails (the caller must not acknowledge)."""
        self.store = FailingPutStore(broken=True)
        queue = self.make_queue()
        self.failureResultOf(queue.add("writeback", "ns/a", {}), OSError)

    def test_failed_state_write_is_logged(self) -> None:
        """A store error while recording a failure is logged; the task keeps retrying."""
        store = FailingPutStore()
        self.store = store
        queue = self.make_queue()
        self.add(queue, "ns/a")
        store.broken = True
        self.executor.calls[0].deferred.errback(ValueError("down"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.flushLoggedErrors(ValueError)
        self.clock.advance(1)
        self.assertEqual(len(self.executor.calls), 2)
        self.assertTrue(queue.pending("writeback", "ns/a"))


class StopTests(QueueTestCase):
    """stopService: wait for running attempts, or abandon them cleanly."""

    def test_waits_for_running(self) -> None:
        """Stop waits for a running attempt, records its success, then closes the store."""
        queue = self.make_queue()
        self.add(queue, "ns/a")
        self.add(queue, "ns/b", delay=1)
        stopped = queue.stopService()
        self.assertNoResult(stopped)
        self.clock.advance(1)
        self.assertEqual(self.executor.keys(), ["ns/a"])
        self.executor.calls[0].deferred.callback(None)
        self.successResultOf(stopped)
        self.assertFalse(self.store.is_open)
        self.assertEqual(list(self.store.rows), [("writeback", "ns/b")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_abandons_after_timeout(self) -> None:
        """After stop_timeout the attempts are cancelled; their stored rows are unchanged."""
        queue = self.make_queue(stop_timeout=5)
        self.add(queue, "ns/a")
        before = self.store.rows[("writeback", "ns/a")]
        stopped = queue.stopService()
        self.clock.advance(4.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.successResultOf(stopped)
        self.assertTrue(self.executor.calls[0].cancelled)
        self.assertEqual(self.store.rows[("writeback", "ns/a")], before)
        self.assertTrue(queue.pending("writeback", "ns/a"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_immediate_abandon(self) -> None:
        """With stop_timeout=0 stop abandons at the next tick, and a restart runs the task."""
        queue = self.make_queue(stop_timeout=0)
        self.add(queue, "ns/a")
        stopped = queue.stopService()
        self.clock.advance(0)
        self.successResultOf(stopped)
        self.executor = ControlledExecutor(self.clock)
        self.make_queue()
        self.assertEqual(self.executor.keys(), ["ns/a"])

    def test_stop_twice(self) -> None:
        """A second stop while stopping fires when the first does."""
        queue = self.make_queue()
        self.add(queue, "ns/a")
        first = queue.stopService()
        second = queue.stopService()
        self.assertNoResult(second)
        self.executor.calls[0].deferred.callback(None)
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(queue.stopService())

    def test_stop_before_start(self) -> None:
        """Stopping a queue that never started does nothing."""
        self.successResultOf(self.make_queue(start=False).stopService())

    def test_stop_while_loading(self) -> None:
        """Stop during the load waits for it, runs nothing, and closes the store."""
        self.store = SlowOpenStore()
        self.store.rows[("writeback", "ns/a")] = Task(
            "writeback", "ns/a", {}, created_at=0, next_attempt_at=0
        )
        queue = self.make_queue()
        waiting = queue.add("writeback", "ns/b", {})
        stopped = queue.stopService()
        self.store.opening.callback(None)
        self.successResultOf(stopped)
        self.failureResultOf(waiting, QueueStopped)
        self.assertEqual(self.executor.calls, [])
        self.assertFalse(self.store.is_open)
        self.assertTrue(queue.pending("writeback", "ns/a"))


class MetricsTests(QueueTestCase):
    """The metrics hooks."""

    def test_hooks(self) -> None:
        """Adds, attempt outcomes with durations, and sizes reach the metrics object."""
        metrics = RecordingMetrics()
        queue = self.make_queue(metrics=metrics, max_in_flight=1)
        self.add(queue, "ns/a")
        self.add(queue, "ns/a")
        self.add(queue, "ns/b")
        self.assertEqual(metrics.added, ["writeback", "writeback"])
        self.assertEqual(metrics.last_sizes, (2, 1))
        self.clock.advance(3)
        self.executor.calls[0].deferred.errback(OSError("x"))
        self.executor.calls[1].deferred.errback(PermanentTaskFailure("y"))
        self.clock.advance(1)
        self.executor.calls[2].deferred.callback(None)
        self.assertEqual(
            metrics.finished,
            [
                ("writeback", "failure", 3),
                ("writeback", "permanent", 0),
                ("writeback", "success", 1),
            ],
        )
        self.assertEqual(metrics.last_sizes, (0, 0))
        self.flushLoggedErrors(OSError)

    def test_prometheus(self) -> None:
        """PrometheusQueueMetrics counts adds and outcomes and sets the gauges."""
        registry = CollectorRegistry()
        queue = self.make_queue(metrics=PrometheusQueueMetrics("writeback", registry))
        self.add(queue, "ns/a")
        self.add(queue, "ns/b", delay=10)
        self.executor.calls[0].deferred.callback(None)

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, labels)

        self.assertEqual(value("kraken_writeback_tasks_added_total", kind="writeback"), 2)
        self.assertEqual(
            value("kraken_writeback_attempts_total", kind="writeback", outcome="success"), 1
        )
        self.assertEqual(value("kraken_writeback_pending_tasks"), 1)
        self.assertEqual(value("kraken_writeback_running_attempts"), 0)
