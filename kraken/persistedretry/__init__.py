"""
Durable retry queues on SQLite: origin write-back and build-index tag replication.

A :class:`RetryQueue` (a Twisted service) holds tasks named ``(kind, key)`` with a JSON
payload, runs each with the :class:`ITaskExecutor` of its kind until it succeeds, and
keeps them in an :class:`ITaskStore` (:class:`SQLiteTaskStore` in production) so they
survive restarts. See :mod:`kraken.persistedretry.queue` for the exact semantics,
including why there is no attempt cap.

Typical use (an origin)::

    store = SQLiteTaskStore(data_dir / "writeback.db")
    queue = RetryQueue(store, {"writeback": WritebackExecutor(...)}, reactor)
    queue.setServiceParent(origin_service)
    ...
    await queue.add("writeback", f"{namespace}/{digest.hex}", {"namespace": namespace})
    # only now acknowledge the upload
    ...
    if not queue.pending("writeback", f"{namespace}/{digest.hex}"):
        evict(digest)
"""

from kraken.persistedretry.interfaces import IQueueMetrics, ITaskExecutor, ITaskStore
from kraken.persistedretry.memory import MemoryTaskStore, StoreClosed
from kraken.persistedretry.metrics import NullQueueMetrics, PrometheusQueueMetrics
from kraken.persistedretry.queue import QueueStopped, RetryQueue
from kraken.persistedretry.sqlite import SchemaTooNew, SQLiteTaskStore
from kraken.persistedretry.task import (
    Backoff,
    CorruptTask,
    InvalidTask,
    LoadedTasks,
    PermanentTaskFailure,
    Task,
    UnknownTaskKind,
)

__all__ = [
    "Backoff",
    "CorruptTask",
    "IQueueMetrics",
    "ITaskExecutor",
    "ITaskStore",
    "InvalidTask",
    "LoadedTasks",
    "MemoryTaskStore",
    "NullQueueMetrics",
    "PermanentTaskFailure",
    "PrometheusQueueMetrics",
    "QueueStopped",
    "RetryQueue",
    "SQLiteTaskStore",
    "SchemaTooNew",
    "StoreClosed",
    "Task",
    "UnknownTaskKind",
]
