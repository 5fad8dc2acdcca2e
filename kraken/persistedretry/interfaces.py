"""The seams of the retry queue: executors, stores and metrics hooks."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import Interface

from kraken.persistedretry.task import LoadedTasks, Task


class ITaskExecutor(Interface):
    """
    Does the work of one kind of task.

    ``run`` must be idempotent: a task may run again after it succeeded if the
    process stopped before the deletion was stored, and it runs again when the same
    ``(kind, key)`` is added while an attempt is in flight.
    """

    def run(task: Task) -> Deferred[None]:
        """
        Attempt ``task`` once.

        Fire with anything on success (the task is deleted); fail with
        :class:`~kraken.persistedretry.task.PermanentTaskFailure` to drop the task;
        fail with any other error to retry later with backoff. Cancelling the
        Deferred should stop the attempt (the queue cancels on timeout and shutdown).
        """


class ITaskStore(Interface):
    """
    Durable storage of tasks, keyed by ``(kind, key)``.

    Operations take effect in the order they are called: the queue relies on it so
    that the stored rows always follow the transitions it makes in memory.
    """

    def open() -> Deferred[None]:
        """Make the store ready (create the schema if needed); the first call."""

    def load() -> Deferred[LoadedTasks]:
        """Every stored task, plus the rows that could not be decoded."""

    def put(task: Task) -> Deferred[None]:
        """Insert or fully overwrite the row of ``task.id``; fires once durable."""

    def remove(kind: str, key: str) -> Deferred[None]:
        """Delete the row of ``(kind, key)`` if there is one; fires once durable."""

    def close() -> Deferred[None]:
        """Finish pending operations and release the store; ``open`` may follow."""


class IQueueMetrics(Interface):
    """Hooks the queue calls as tasks move; implementations must not raise."""

    def task_added(kind: str) -> None:
        """A new ``(kind, key)`` was added (not counted for a duplicate add)."""

    def attempt_finished(kind: str, outcome: str, seconds: float) -> None:
        """
        An attempt ended after ``seconds``.

        ``outcome`` is ``"success"``, ``"failure"`` (will retry) or ``"permanent"``
        (dropped).
        """

    def sizes(pending: int, in_flight: int) -> None:
        """The number of known tasks and of running attempts changed."""
