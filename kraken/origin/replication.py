"""
Copying cached blobs to the other replicas of the origin ring.

Two flavours, as in the Go origin (reference/kraken-p2p.md 5.4):

- :meth:`Replicator.replicate` after a backend fetch: the internal upload
  (``/internal/blobs/{d}/uploads``), whose commit does not write back (the backend has it);
- :meth:`Replicator.duplicate` after a client upload: the duplicate upload, whose commit
  queues a write-back delayed by ``stagger x (i + 1)`` for the i-th other replica, so
  that the blob reaches the backend even if the owner dies before writing it back.

Failures are logged, never raised: replicas heal on demand from the backend anyway.
A push cancelled because the origin stops is not a failure: it ends quietly, its reader closed.
Chunks are read from the store's cache file in a thread, one at a time.
"""

from __future__ import annotations

from typing import ClassVar

from attrs import define
from twisted.internet.defer import CancelledError, Deferred, DeferredList, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from kraken.clients.origin import OriginClient, UploadKind
from kraken.cluster import RendezvousRing
from kraken.core import Digest
from kraken.io.runner import BlockingRunner
from kraken.store import BlobReader, BlobStore

__all__ = ["Replicator"]


@define
class Replicator:
    """Pushes blobs from this origin's cache to the other replicas of the ring."""

    log: ClassVar[Logger] = Logger()

    client: OriginClient
    ring: RendezvousRing
    self_address: str
    store: BlobStore
    blocking: BlockingRunner
    stagger: float = 1800.0

    def others(self, digest: Digest) -> list[str]:
        """The replicas of ``digest`` other than this origin, best first."""
        return [a for a in self.ring.locations(digest) if a != self.self_address]

    def replicate(self, namespace: str, digest: Digest) -> Deferred[None]:
        """Internal upload of ``digest`` to every other replica (no write-back there)."""
        targets = [(host, 0.0) for host in self.others(digest)]
        return self._push_all(namespace, digest, targets, "internal")

    def duplicate(self, namespace: str, digest: Digest) -> Deferred[None]:
        """Duplicate upload to every other replica, with staggered write-back delays."""
        targets = [(host, self.stagger * (i + 1)) for i, host in enumerate(self.others(digest))]
        return self._push_all(namespace, digest, targets, "duplicate")

    def _push_all(
        self, namespace: str, digest: Digest, targets: list[tuple[str, float]], kind: UploadKind
    ) -> Deferred[None]:
        pushes = [
            ensureDeferred(self._push(host, namespace, digest, kind, delay))
            for host, delay in targets
        ]
        return DeferredList(pushes, consumeErrors=True).addCallback(lambda _: None)

    def _open(self, digest: Digest) -> Deferred[BlobReader]:
        """``open_reader`` in a thread; a reader that opens after a cancel is closed, not kept."""
        opened: Deferred[BlobReader] = Deferred()

        def arrived(result: BlobReader | Failure) -> None:
            if opened.called:  # cancelled while the thread opened it
                if isinstance(result, BlobReader):
                    self.blocking(result.close)
            elif isinstance(result, Failure):
                opened.errback(result)
            else:
                opened.callback(result)

        self.blocking(self.store.open_reader, digest).addBoth(arrived)
        return opened

    async def _push(
        self, host: str, namespace: str, digest: Digest, kind: UploadKind, delay: float
    ) -> None:
        try:
            reader = await self._open(digest)
        except CancelledError:
            self.log.info("replication of {digest} to {host} stopped", digest=digest, host=host)
            return
        except Exception:
            self.log.failure("cannot replicate {digest}: not readable", digest=digest)
            return
        try:

            def read(offset: int, length: int) -> Deferred[bytes]:
                return self.blocking(reader.pread, length, offset)

            stored = await self.client.upload(
                host, namespace, digest, reader.size, read, kind=kind, delay=delay
            )
            self.log.info(
                "replicated {digest} to {host} ({what})",
                digest=digest,
                host=host,
                what="copied" if stored else "it had it",
            )
        except CancelledError:
            self.log.info("replication of {digest} to {host} stopped", digest=digest, host=host)
        except Exception as e:
            self.log.warn(
                "replicating {digest} to {host} failed: {error}",
                digest=digest,
                host=host,
                error=str(e),
            )
        finally:
            await self.blocking(reader.close)
