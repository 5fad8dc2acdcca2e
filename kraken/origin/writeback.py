"""
Durable write-back of uploaded blobs to the backend, through :mod:`kraken.persistedretry`.

An upload is acknowledged only after :meth:`Writeback.schedule` fired, i.e. after its
task is stored in SQLite; the blob was committed to the cache *persisted*, so cleanup
cannot take it.  :class:`WritebackExecutor` then, until it succeeds (retrying with
backoff, across restarts): stats the backend and skips the upload if the blob is there,
uploads the cache file otherwise, and finally unpersists the blob unless another
write-back of the same digest (another namespace) is still pending.

Tasks are ``("writeback", "<namespace>/<digest hex>")`` with the payload
``{"namespace": ns, "digest": "sha256:<hex>"}``.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Final

from attrs import define, field
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

from kraken.backends.interface import BlobNotFound as BackendBlobNotFound
from kraken.backends.interface import InvalidName, NamespaceNotFound
from kraken.backends.router import BackendRouter
from kraken.core import Digest, InvalidDigest
from kraken.io.runner import BlockingRunner
from kraken.persistedretry import ITaskExecutor, PermanentTaskFailure, RetryQueue, Task
from kraken.store import BlobNotFound, BlobStore

__all__ = ["WRITEBACK_KIND", "Writeback", "WritebackExecutor", "writeback_key"]

WRITEBACK_KIND: Final = "writeback"


def writeback_key(namespace: str, digest: Digest) -> str:
    """The task key of writing ``digest`` back under ``namespace``."""
    return f"{namespace}/{digest.hex}"


@implementer(ITaskExecutor)
@define
class WritebackExecutor:
    """Writes one cached blob to its namespace's backend (the ``writeback`` task kind)."""

    log: ClassVar[Logger] = Logger()

    store: BlobStore
    backends: BackendRouter
    blocking: BlockingRunner
    #: Set by :class:`Writeback` once the queue exists (to see other pending tasks).
    queue: RetryQueue | None = field(default=None)

    def run(self, task: Task) -> Deferred[None]:
        """Attempt the write-back of ``task`` once (see the module docstring)."""
        return ensureDeferred(self._run(task))

    async def _run(self, task: Task) -> None:
        try:
            namespace = str(task.payload["namespace"])
            digest = Digest.parse(str(task.payload["digest"]))
        except (KeyError, InvalidDigest) as e:
            raise PermanentTaskFailure(f"write-back task {task.key!r}: bad payload: {e}") from e
        try:
            backend = self.backends.backend_for(namespace)
        except (NamespaceNotFound, InvalidName) as e:
            raise PermanentTaskFailure(str(e)) from e
        try:
            await backend.stat(namespace, digest.hex)
        except BackendBlobNotFound:
            await self._upload(backend, namespace, digest)
        else:
            self.log.info(
                "{digest} is already in the backend of {namespace}",
                digest=digest,
                namespace=namespace,
            )
        await self._unpersist(namespace, digest, task.key)

    async def _upload(self, backend: Any, namespace: str, digest: Digest) -> None:
        try:
            reader = await self.blocking(self.store.open_reader, digest)
        except BlobNotFound as e:
            raise PermanentTaskFailure(f"{digest} is no longer on disk: {e}") from e
        try:
            await backend.upload(namespace, digest.hex, reader.path)
        finally:
            await self.blocking(reader.close)
        self.log.info(
            "wrote {digest} back to the backend of {namespace}", digest=digest, namespace=namespace
        )

    async def _unpersist(self, namespace: str, digest: Digest, key: str) -> None:
        if self.queue is not None:
            suffix = "/" + digest.hex
            for other in self.queue.tasks():
                if other.kind == WRITEBACK_KIND and other.key != key and other.key.endswith(suffix):
                    return
        with contextlib.suppress(BlobNotFound):
            await self.blocking(self.store.set_persist, digest, False)


@define
class Writeback:
    """Adds write-back tasks to the queue and answers whether one is pending."""

    queue: RetryQueue

    def schedule(self, namespace: str, digest: Digest, delay: float = 0.0) -> Deferred[None]:
        """Store the task durably; fires once it is (then acknowledge the upload)."""
        return self.queue.add(
            WRITEBACK_KIND,
            writeback_key(namespace, digest),
            {"namespace": namespace, "digest": str(digest)},
            delay=delay,
        )

    def pending(self, namespace: str, digest: Digest) -> bool:
        """Whether the write-back of ``digest`` under ``namespace`` is not done yet."""
        return self.queue.pending(WRITEBACK_KIND, writeback_key(namespace, digest))
