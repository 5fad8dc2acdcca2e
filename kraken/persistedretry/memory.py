"""
An in-memory :class:`ITaskStore`: not durable, for tests and throw-away setups.

Its Deferreds have already fired, so a :class:`RetryQueue` over it runs entirely in a
``SynchronousTestCase`` with a ``Clock``. Its rows outlive ``close``/``open`` (they
live as long as the object), which is how tests simulate a restart without SQLite.
"""

from __future__ import annotations

from attrs import Factory, define
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from kraken.persistedretry.interfaces import ITaskStore
from kraken.persistedretry.task import CorruptTask, LoadedTasks, Task


class StoreClosed(RuntimeError):
    """An operation on a store that is not open."""


@implementer(ITaskStore)
@define
class MemoryTaskStore:
    """Tasks in a dict; ``corrupt`` rows are reported by ``load`` as a real store would."""

    rows: dict[tuple[str, str], Task] = Factory(dict)
    corrupt: list[CorruptTask] = Factory(list)
    is_open: bool = False

    def _closed(self, operation: str) -> Deferred[None]:
        return fail(StoreClosed(f"{operation} on a closed MemoryTaskStore"))

    def open(self) -> Deferred[None]:
        """Mark the store open."""
        self.is_open = True
        return succeed(None)

    def load(self) -> Deferred[LoadedTasks]:
        """Every task, in insertion order, and the seeded corrupt rows."""
        if not self.is_open:
            return fail(StoreClosed("load on a closed MemoryTaskStore"))
        return succeed(LoadedTasks(tuple(self.rows.values()), tuple(self.corrupt)))

    def put(self, task: Task) -> Deferred[None]:
        """Insert or replace ``task``; a corrupt row with the same id is replaced too."""
        if not self.is_open:
            return self._closed("put")
        self.corrupt = [c for c in self.corrupt if (c.kind, c.key) != task.id]
        self.rows[task.id] = task
        return succeed(None)

    def remove(self, kind: str, key: str) -> Deferred[None]:
        """Delete ``(kind, key)``, whether it is a task or a corrupt row."""
        if not self.is_open:
            return self._closed("remove")
        self.corrupt = [c for c in self.corrupt if (c.kind, c.key) != (kind, key)]
        self.rows.pop((kind, key), None)
        return succeed(None)

    def close(self) -> Deferred[None]:
        """Mark the store closed; the rows stay for the next ``open``."""
        self.is_open = False
        return succeed(None)
