"""
:class:`RetryQueue`: a durable task queue as a Twisted service.

How it behaves (decisions that differ from the Go Kraken are marked):

- Every task is held in memory as well as in the store, so :meth:`RetryQueue.pending`
  answers without touching the disk. The store follows the memory: each transition is
  written in the order it happens (stores apply operations in call order).
- One heap ordered by ``next_attempt_at`` and one timer on the injected clock decide
  what runs; at most ``max_in_flight`` attempts run at once. (Go polls every 15 s and
  waits a flat 30 s between attempts.)
- Success deletes the task. Failure reschedules it with :class:`Backoff` (exponential,
  jittered, capped). :class:`PermanentTaskFailure` deletes it with an error log line.
- **No attempt cap, as in Go (its quirk 7), but on purpose**: a task stands for work
  that was acknowledged (an upload a client was told is stored, a tag that must reach
  another cluster). Giving up after N failures would lose it silently while the
  backend is merely down for a while. Backoff bounds the cost of retrying (one attempt
  per task per ``Backoff.maximum``), each failure is logged with its attempt count, and
  an executor that knows retrying is pointless raises ``PermanentTaskFailure``.
- Adding an existing ``(kind, key)`` stores no second task: the payload is replaced
  by the new one (last add wins, so a mutable tag replicates its latest digest), the
  task becomes due at the earlier of the two times, and the attempt count is kept. If
  an attempt is running, the task runs once more after it ends, whatever the outcome,
  so the work of an add that arrived mid-attempt is never skipped.
- Rows of a kind without an executor, and rows that do not decode, are logged and
  left in the database untouched; they count as pending. A later add of a corrupt
  row's id replaces it.
- Stopping waits up to ``stop_timeout`` seconds for running attempts, then cancels
  them; an abandoned attempt changes nothing stored, so the task runs again after the
  next start.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Literal

from attrs import define, evolve
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from kraken.persistedretry.interfaces import IQueueMetrics, ITaskExecutor, ITaskStore
from kraken.persistedretry.metrics import NullQueueMetrics
from kraken.persistedretry.task import (
    MAX_ERROR_LENGTH,
    Backoff,
    CorruptTask,
    InvalidTask,
    LoadedTasks,
    PermanentTaskFailure,
    Task,
    UnknownTaskKind,
    check_key,
    check_kind,
)

TaskId = tuple[str, str]
_State = Literal["new", "loading", "ready", "failed", "stopping", "stopped"]


class QueueStopped(RuntimeError):
    """A task was added to a queue that is stopping or stopped."""


@define(eq=False)
class _Entry:
    """A known task: the current record, and whether an attempt is running."""

    task: Task
    running: bool = False
    rerun_at: float | None = None
    """Set when the task was added again while an attempt ran: run again at this time."""
    seq: int = -1
    """Sequence number of the heap item that currently stands for this entry."""


@define(eq=False)
class _Attempt:
    """One running attempt."""

    started: float
    deferred: Deferred[Any] | None = None
    timeout: IDelayedCall | None = None
    timed_out: bool = False
    abandoned: bool = False


def _error_text(reason: Failure) -> str:
    name = reason.type.__name__ if isinstance(reason.type, type) else str(reason.type)
    return f"{name}: {reason.getErrorMessage()}"[:MAX_ERROR_LENGTH]


class RetryQueue(Service):
    """
    Runs durable tasks with executors, retrying with backoff until they succeed.

    ``executors`` maps each kind to its :class:`ITaskExecutor`. ``clock`` schedules
    everything (a ``Clock`` in tests). The store is opened and loaded on
    ``startService`` and closed by ``stopService``; the queue owns it meanwhile.
    """

    log = Logger()

    def __init__(
        self,
        store: ITaskStore,
        executors: Mapping[str, ITaskExecutor],
        clock: IReactorTime,
        *,
        max_in_flight: int = 4,
        backoff: Backoff | None = None,
        attempt_timeout: float | None = None,
        stop_timeout: float = 10.0,
        metrics: IQueueMetrics | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """
        Build a stopped queue.

        ``attempt_timeout`` (seconds, ``None`` for none) cancels an attempt that runs
        longer and counts it as a failure. ``rand`` returns floats in [0, 1) for the
        backoff jitter.
        """
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight {max_in_flight!r}: expected >= 1")
        if attempt_timeout is not None and not attempt_timeout > 0:
            raise ValueError(f"attempt_timeout {attempt_timeout!r}: expected > 0 or None")
        if not stop_timeout >= 0:
            raise ValueError(f"stop_timeout {stop_timeout!r}: expected >= 0")
        for kind in executors:
            check_kind(kind)
        self._store = store
        self._executors = dict(executors)
        self._clock = clock
        self._max_in_flight = max_in_flight
        self._backoff = backoff if backoff is not None else Backoff()
        self._attempt_timeout = attempt_timeout
        self._stop_timeout = stop_timeout
        self._metrics: IQueueMetrics = metrics if metrics is not None else NullQueueMetrics()
        self._rand = rand

        self._state: _State = "new"
        self._load_failure: Failure | None = None
        self._store_open = False
        self._known = False
        self._ready_waiters: list[Deferred[None]] = []
        self._load_done: Deferred[None] | None = None
        self._stop_waiters: list[Deferred[None]] = []
        self._drained: Deferred[None] | None = None

        self._entries: dict[TaskId, _Entry] = {}
        self._parked: dict[TaskId, Task | CorruptTask] = {}
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()
        self._running: dict[TaskId, _Attempt] = {}
        self._writes: set[Deferred[None]] = set()
        self._timer: IDelayedCall | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._pump_again = False

    # -- queries ---------------------------------------------------------------

    def pending(self, kind: str, key: str) -> bool:
        """
        Whether ``(kind, key)`` is (or may be) stored and not yet done; no I/O.

        Until the stored tasks are loaded, and if loading failed, the answer is
        ``True`` for everything: a cleanup that asks must not evict what a stored
        task may still need.
        """
        if not self._known:
            return True
        return (kind, key) in self._entries or (kind, key) in self._parked

    def tasks(self) -> list[Task]:
        """A snapshot of the runnable tasks (including running ones), soonest first."""
        return sorted(
            (e.task for e in self._entries.values()), key=lambda t: (t.next_attempt_at, t.id)
        )

    def in_flight(self) -> int:
        """The number of attempts running now."""
        return len(self._running)

    def when_ready(self) -> Deferred[None]:
        """Fires once the stored tasks are loaded; fails if they could not be."""
        if self._state in ("ready", "stopping", "stopped"):
            return succeed(None)
        if self._state == "failed":
            assert self._load_failure is not None
            return fail(self._load_failure)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    # -- adding ----------------------------------------------------------------

    def add(
        self,
        kind: str,
        key: str,
        payload: Mapping[str, Any] | None = None,
        *,
        delay: float = 0.0,
    ) -> Deferred[None]:
        """
        Store a task and schedule it ``delay`` seconds from now; fires once stored.

        When the Deferred fires the task is durable (an origin may acknowledge the
        upload). It fails with :class:`UnknownTaskKind`, :class:`InvalidTask`,
        :class:`QueueStopped`, the store's load error, or the store's write error.
        Before the service has loaded its tasks the add waits for the load.
        """
        try:
            check_kind(kind)
            check_key(key)
            if not isinstance(delay, int | float) or not math.isfinite(delay) or delay < 0:
                raise InvalidTask(f"invalid task delay {delay!r}: expected seconds >= 0")
            # Validates and copies the payload now, so the caller learns of a bad one.
            Task(kind, key, payload or {}, created_at=0.0, next_attempt_at=0.0)
        except InvalidTask as e:
            return fail(e)
        if kind not in self._executors:
            return fail(UnknownTaskKind(f"no executor for task kind {kind!r} (key {key!r})"))
        if self._state in ("new", "loading"):
            waiter = self.when_ready()
            waiter.addCallback(lambda _: self._add_now(kind, key, payload or {}, delay))
            return waiter
        if self._state == "failed":
            assert self._load_failure is not None
            return fail(self._load_failure)
        if self._state != "ready":
            return fail(QueueStopped(f"cannot add task {kind} {key!r}: the queue is stopped"))
        return self._add_now(kind, key, payload or {}, delay)

    def _add_now(
        self, kind: str, key: str, payload: Mapping[str, Any], delay: float
    ) -> Deferred[None]:
        if self._state != "ready":
            return fail(QueueStopped(f"cannot add task {kind} {key!r}: the queue is stopped"))
        now = self._clock.seconds()
        due = now + delay
        task_id = (kind, key)
        if self._parked.pop(task_id, None) is not None:
            self.log.warn("replacing unreadable stored task {kind} {key}", kind=kind, key=key)
        entry = self._entries.get(task_id)
        if entry is None:
            task = Task(kind, key, payload, created_at=now, next_attempt_at=due)
            entry = _Entry(task)
            self._entries[task_id] = entry
            self._push(entry)
            self._metrics.task_added(kind)
        else:
            old = entry.task
            task = evolve(old, payload=payload, next_attempt_at=min(old.next_attempt_at, due))
            entry.task = task
            if entry.running:
                entry.rerun_at = due if entry.rerun_at is None else min(entry.rerun_at, due)
            elif task.next_attempt_at != old.next_attempt_at:
                self._push(entry)
        stored = self._write(self._store.put(task))
        self._report_sizes()
        self._pump()
        return stored

    # -- service ---------------------------------------------------------------

    def startService(self) -> None:
        """Open the store, load its tasks and start running those that are due."""
        if self._state in ("loading", "ready", "stopping"):
            raise RuntimeError(f"RetryQueue cannot start while {self._state}")
        super().startService()  # type: ignore[no-untyped-call]
        self._state = "loading"
        self._load_failure = None
        self._known = False
        self._entries.clear()
        self._parked.clear()
        self._heap.clear()
        done: Deferred[None] = Deferred()
        self._load_done = done

        def opened(_: None) -> Deferred[LoadedTasks]:
            self._store_open = True
            return self._store.load()

        d = self._store.open()
        d.addCallback(opened)
        d.addCallbacks(self._loaded, self._load_failed)
        d.addErrback(lambda reason: self.log.failure("internal error loading tasks", reason))
        d.addBoth(lambda _: done.callback(None))

    def _loaded(self, loaded: LoadedTasks) -> None:
        for corrupt in loaded.corrupt:
            self.log.error(
                "stored task {kind} {key} is unreadable and will not run: {reason}",
                kind=corrupt.kind,
                key=corrupt.key,
                reason=corrupt.reason,
            )
            if corrupt.kind is not None and corrupt.key is not None:
                self._parked[(corrupt.kind, corrupt.key)] = corrupt
        unknown: Counter[str] = Counter()
        for task in loaded.tasks:
            if task.kind not in self._executors:
                self._parked[task.id] = task
                unknown[task.kind] += 1
                continue
            entry = _Entry(task)
            self._entries[task.id] = entry
            self._push(entry)
        for kind, count in sorted(unknown.items()):
            self.log.warn(
                "{count} stored tasks of kind {kind} have no executor; kept, not run",
                count=count,
                kind=kind,
            )
        self.log.info(
            "loaded {count} stored tasks ({parked} not runnable)",
            count=len(self._entries),
            parked=len(self._parked),
        )
        self._known = True
        if self._state != "stopping":
            self._state = "ready"
        # Schedule before waking waiters: their callbacks may advance time or add.
        self._report_sizes()
        self._pump()
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _load_failed(self, reason: Failure) -> None:
        self.log.failure("could not load the task store; nothing will run", reason)
        self._load_failure = reason
        if self._state == "loading":
            self._state = "failed"
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.errback(reason)

    def stopService(self) -> Deferred[None]:
        """
        Stop starting attempts; wait up to ``stop_timeout`` for running ones, then
        abandon them (they stay stored); wait for pending writes; close the store.
        """
        if self._state == "stopped" or (self._state == "new" and not self.running):
            return succeed(None)
        if self._state == "stopping":
            waiter: Deferred[None] = Deferred()
            self._stop_waiters.append(waiter)
            return waiter
        super().stopService()  # type: ignore[no-untyped-call]
        was = self._state
        self._state = "stopping"
        self._cancel_timer()
        if was == "failed":
            self._load_failure = None
        d: Deferred[None] = self._load_done if self._load_done is not None else succeed(None)
        self._load_done = None
        d.addCallback(lambda _: self._drain())
        d.addCallback(lambda _: self._wait_for_writes())
        d.addCallback(lambda _: self._close_store())
        d.addCallback(lambda _: self._stopped())
        return d

    def _drain(self) -> Deferred[None]:
        if not self._running:
            return succeed(None)
        drained: Deferred[None] = Deferred()
        self._drained = drained
        self.log.info(
            "waiting up to {timeout}s for {count} running tasks",
            timeout=self._stop_timeout,
            count=len(self._running),
        )
        deadline = self._clock.callLater(self._stop_timeout, self._abandon)
        drained.addCallback(lambda _: deadline.cancel() if deadline.active() else None)
        return drained

    def _abandon(self) -> None:
        attempts = list(self._running.items())
        self.log.warn(
            "abandoning {count} running tasks; they stay stored and run after the next start",
            count=len(attempts),
        )
        for _, attempt in attempts:
            attempt.abandoned = True
        for task_id, attempt in attempts:
            self._running.pop(task_id, None)
            entry = self._entries.get(task_id)
            if entry is not None:
                entry.running = False
            if attempt.timeout is not None and attempt.timeout.active():
                attempt.timeout.cancel()
            if attempt.deferred is not None:
                attempt.deferred.cancel()
        self._report_sizes()
        self._check_drained()

    def _wait_for_writes(self) -> Deferred[Any]:
        return DeferredList(list(self._writes))

    def _close_store(self) -> Deferred[None]:
        if not self._store_open:
            return succeed(None)
        self._store_open = False
        d = self._store.close()

        def close_failed(reason: Failure) -> None:
            self.log.failure("closing the task store failed", reason)

        d.addErrback(close_failed)
        return d

    def _stopped(self) -> None:
        self._state = "stopped"
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- scheduling ------------------------------------------------------------

    def _push(self, entry: _Entry) -> None:
        entry.seq = next(self._seq)
        heapq.heappush(
            self._heap, (entry.task.next_attempt_at, entry.seq, entry.task.kind, entry.task.key)
        )

    def _pump(self) -> None:
        """Start every due task a free slot allows, then set the timer for the next."""
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            while True:
                self._pump_again = False
                self._start_due()
                if not self._pump_again:
                    break
        finally:
            self._pumping = False
        self._arm_timer()

    def _start_due(self) -> None:
        if self._state != "ready":
            return
        now = self._clock.seconds()
        while self._heap and len(self._running) < self._max_in_flight:
            due, seq, kind, key = self._heap[0]
            entry = self._entries.get((kind, key))
            if entry is None or entry.seq != seq or entry.running:
                heapq.heappop(self._heap)
                continue
            if due > now:
                break
            heapq.heappop(self._heap)
            self._start(entry)

    def _arm_timer(self) -> None:
        at: float | None = None
        if self._state == "ready" and self._heap and len(self._running) < self._max_in_flight:
            at = self._heap[0][0]
        if at == self._timer_at and (self._timer is None or self._timer.active()):
            return
        self._cancel_timer()
        if at is not None:
            self._timer_at = at
            self._timer = self._clock.callLater(
                max(0.0, at - self._clock.seconds()), self._timer_fired
            )

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _timer_fired(self) -> None:
        self._timer = None
        self._timer_at = None
        self._pump()

    # -- attempts --------------------------------------------------------------

    def _start(self, entry: _Entry) -> None:
        task = entry.task
        entry.running = True
        attempt = _Attempt(started=self._clock.seconds())
        self._running[task.id] = attempt
        self._report_sizes()
        if self._attempt_timeout is not None:
            attempt.timeout = self._clock.callLater(self._attempt_timeout, self._time_out, attempt)
        d = maybeDeferred(self._executors[task.kind].run, task)
        attempt.deferred = d
        d.addCallbacks(
            self._succeeded,
            self._failed,
            callbackArgs=(entry, attempt),
            errbackArgs=(entry, attempt),
        )
        d.addErrback(self._internal_error, task)

    def _time_out(self, attempt: _Attempt) -> None:
        attempt.timeout = None
        attempt.timed_out = True
        if attempt.deferred is not None:
            attempt.deferred.cancel()

    def _finish(self, entry: _Entry, attempt: _Attempt, outcome: str) -> float:
        if attempt.timeout is not None and attempt.timeout.active():
            attempt.timeout.cancel()
        self._running.pop(entry.task.id, None)
        entry.running = False
        seconds = self._clock.seconds() - attempt.started
        self._metrics.attempt_finished(entry.task.kind, outcome, seconds)
        return seconds

    def _succeeded(self, _result: object, entry: _Entry, attempt: _Attempt) -> None:
        if attempt.abandoned:
            return
        self._finish(entry, attempt, "success")
        task = entry.task
        self.log.debug(
            "task {kind} {key} done after {attempts} failed attempts",
            kind=task.kind,
            key=task.key,
            attempts=task.attempts,
        )
        if not self._run_again(entry):
            self._entries.pop(task.id, None)
            self._record(self._store.remove(task.kind, task.key), task)
        self._settled()

    def _failed(self, reason: Failure, entry: _Entry, attempt: _Attempt) -> None:
        if attempt.abandoned:
            return
        task = entry.task
        if reason.check(PermanentTaskFailure):  # type: ignore[no-untyped-call]
            self._finish(entry, attempt, "permanent")
            self.log.error(
                "dropping task {kind} {key} after {attempts} earlier failed attempts: {error}",
                kind=task.kind,
                key=task.key,
                attempts=task.attempts,
                error=reason.getErrorMessage(),
            )
            if not self._run_again(entry):
                self._entries.pop(task.id, None)
                self._record(self._store.remove(task.kind, task.key), task)
            self._settled()
            return
        seconds = self._finish(entry, attempt, "failure")
        attempts = task.attempts + 1
        now = self._clock.seconds()
        wait = self._backoff.delay(attempts, self._rand)
        due = now + wait
        if entry.rerun_at is not None:
            due = min(due, entry.rerun_at)
            entry.rerun_at = None
        timed_out = f"timed out after {seconds:.1f}s"
        error = timed_out if attempt.timed_out else _error_text(reason)
        entry.task = evolve(task, attempts=attempts, last_error=error, next_attempt_at=due)
        self.log.failure(
            "task {kind} {key}: attempt {attempts} failed ({error}); next in {wait:.1f}s",
            reason,
            level=LogLevel.warn,
            kind=task.kind,
            key=task.key,
            attempts=attempts,
            error=error,
            wait=due - now,
        )
        self._push(entry)
        self._record(self._store.put(entry.task), entry.task)
        self._settled()

    def _run_again(self, entry: _Entry) -> bool:
        """After a finished attempt: reschedule if the task was added meanwhile."""
        if entry.rerun_at is None:
            return False
        entry.task = evolve(entry.task, attempts=0, last_error=None, next_attempt_at=entry.rerun_at)
        entry.rerun_at = None
        self._push(entry)
        self._record(self._store.put(entry.task), entry.task)
        return True

    def _settled(self) -> None:
        self._report_sizes()
        self._check_drained()
        self._pump()

    def _check_drained(self) -> None:
        if self._drained is not None and not self._running:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def _internal_error(self, reason: Failure, task: Task) -> None:
        self.log.failure(
            "internal error after an attempt of task {kind} {key}",
            reason,
            kind=task.kind,
            key=task.key,
        )

    # -- store writes and metrics ------------------------------------------------

    def _write(self, operation: Deferred[None]) -> Deferred[None]:
        """Track a store write until it settles (``stopService`` waits); return it."""
        settled: Deferred[None] = Deferred()
        self._writes.add(settled)

        def done(result: object) -> object:
            self._writes.discard(settled)
            settled.callback(None)
            return result

        operation.addBoth(done)
        return operation

    def _record(self, operation: Deferred[None], task: Task) -> None:
        """Track a write made after an attempt; log its failure (memory has moved on)."""

        def failed(reason: Failure) -> None:
            self.log.failure(
                "could not store the state of task {kind} {key}; "
                "after a restart it resumes from the last stored state",
                reason,
                kind=task.kind,
                key=task.key,
            )

        self._write(operation).addErrback(failed)

    def _report_sizes(self) -> None:
        self._metrics.sizes(len(self._entries) + len(self._parked), len(self._running))
