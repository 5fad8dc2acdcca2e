"""Executors and stores that tests control step by step."""

from __future__ import annotations

from typing import Any

from attrs import Factory, define
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from kraken.persistedretry import IQueueMetrics, ITaskExecutor, MemoryTaskStore, Task


@define(eq=False)
class Call:
    """One call of a :class:`ControlledExecutor`: the task, when, and its Deferred."""

    task: Task
    at: float
    deferred: Deferred[None]
    cancelled: bool = False


@implementer(ITaskExecutor)
@define
class ControlledExecutor:
    """Records every attempt and leaves its outcome to the test."""

    clock: Clock
    calls: list[Call] = Factory(list)

    def run(self, task: Task) -> Deferred[None]:
        """Record the attempt; the test fires ``calls[i].deferred``."""
        call: Call

        def cancel(_: Deferred[None]) -> None:
            call.cancelled = True

        call = Call(task, self.clock.seconds(), Deferred(cancel))
        self.calls.append(call)
        return call.deferred

    def running(self) -> list[Call]:
        """The attempts whose Deferred has not fired."""
        return [c for c in self.calls if not c.deferred.called]

    def keys(self) -> list[str]:
        """The keys attempted, in order."""
        return [c.task.key for c in self.calls]


@implementer(ITaskExecutor)
@define
class ScriptedExecutor:
    """Answers at once: fails with ``errors`` in order, then succeeds."""

    clock: Clock
    errors: list[BaseException] = Factory(list)
    times: list[float] = Factory(list)
    tasks: list[Task] = Factory(list)

    def run(self, task: Task) -> Deferred[None]:
        """Fail with the next scripted error, or succeed when there is none."""
        self.times.append(self.clock.seconds())
        self.tasks.append(task)
        if self.errors:
            return fail(self.errors.pop(0))
        return succeed(None)


@implementer(IQueueMetrics)
@define
class RecordingMetrics:
    """Remembers every metrics call."""

    added: list[str] = Factory(list)
    finished: list[tuple[str, str, float]] = Factory(list)
    last_sizes: tuple[int, int] | None = None

    def task_added(self, kind: str) -> None:
        """Record."""
        self.added.append(kind)

    def attempt_finished(self, kind: str, outcome: str, seconds: float) -> None:
        """Record."""
        self.finished.append((kind, outcome, seconds))

    def sizes(self, pending: int, in_flight: int) -> None:
        """Record."""
        self.last_sizes = (pending, in_flight)


@define
class FailingPutStore(MemoryTaskStore):
    """A memory store whose puts fail while ``broken`` is set (a full disk)."""

    broken: bool = False

    def put(self, task: Task) -> Deferred[None]:
        """Fail with OSError while broken."""
        if self.broken:
            return fail(OSError(28, "No space left on device"))
        return super().put(task)


@define
class SlowOpenStore(MemoryTaskStore):
    """A memory store whose ``open`` waits for the test to fire ``opening``."""

    opening: Deferred[None] = Factory(Deferred)

    def open(self) -> Deferred[None]:
        """Open when the test fires ``opening``."""

        def opened(result: Any) -> Any:
            self.is_open = True
            return result

        return self.opening.addCallback(opened)
