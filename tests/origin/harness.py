"""
Test doubles and builders for origin tests: an in-memory backend and an origin on a Clock.

``MemoryBackend`` can be taken down (every call fails with a network-like error) and
can hold downloads back, so tests can see the 202 of a fetch in progress.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from kraken.api.origin import OriginAPI
from kraken.backends.interface import BlobInfo, BlobNotFound, IBackend, ListResult, UploadSource
from kraken.backends.router import BackendRouter
from kraken.clients.origin import OriginClient
from kraken.cluster import Membership, NoHealthFilter, RendezvousRing, StaticHostList
from kraken.core import PeerID, PeerInfo, PieceLengthTable
from kraken.http.testing import HostRoutingAgent, memory_client_factory
from kraken.io.runner import run_inline
from kraken.origin.refresh import BackendFetcher
from kraken.origin.replication import Replicator
from kraken.origin.writeback import WRITEBACK_KIND, Writeback, WritebackExecutor
from kraken.persistedretry import Backoff, MemoryTaskStore, RetryQueue
from kraken.store import BlobStore

PIECES = PieceLengthTable(((0, 1024),))


class BackendDown(ConnectionError):
    """The memory backend is 'down'."""


@implementer(IConsumer)
class _Producer:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IBackend)
@define
class MemoryBackend:
    """An IBackend in a dict; ``down`` fails every call; ``hold`` delays downloads."""

    blobs: dict[str, bytes] = field(factory=dict)
    down: bool = False
    hold: Deferred[None] | None = None
    downloads: int = 0
    uploads: int = 0

    def stat(self, namespace: str, name: str) -> Deferred[BlobInfo]:
        """Size of ``name``."""
        if self.down:
            return fail(BackendDown("backend down"))
        if name not in self.blobs:
            return fail(BlobNotFound(namespace, name))
        return succeed(BlobInfo(len(self.blobs[name])))

    def upload(self, namespace: str, name: str, source: UploadSource) -> Deferred[None]:
        """Store bytes or a file's content."""
        if self.down:
            return fail(BackendDown("backend down"))
        if isinstance(source, bytes):
            data = source
        else:
            with open(source, "rb") as f:
                data = f.read()
        self.blobs[name] = data
        self.uploads += 1
        return succeed(None)

    def download(self, namespace: str, name: str, consumer: IConsumer) -> Deferred[int]:
        """Write the blob into ``consumer`` (after ``hold`` fires, if set)."""
        if self.down:
            return fail(BackendDown("backend down"))
        if name not in self.blobs:
            return fail(BlobNotFound(namespace, name))
        self.downloads += 1

        def write(_: object) -> int:
            data = self.blobs[name]
            consumer.registerProducer(_Producer(), True)
            consumer.write(data)
            consumer.unregisterProducer()
            return len(data)

        if self.hold is not None:
            return self.hold.addCallback(write)
        return succeed(write(None))

    def delete(self, namespace: str, name: str) -> Deferred[None]:
        """Remove ``name``."""
        if self.down:
            return fail(BackendDown("backend down"))
        if self.blobs.pop(name, None) is None:
            return fail(BlobNotFound(namespace, name))
        return succeed(None)

    def list(
        self, prefix: str, limit: int = 250, continuation_token: str | None = None
    ) -> Deferred[ListResult]:
        """Every name with ``prefix``."""
        return succeed(
            ListResult(tuple(n for n in sorted(self.blobs) if n.startswith(prefix)), None)
        )

    def close(self) -> Deferred[None]:
        """Nothing to release."""
        return succeed(None)


@define
class MemoryOrigin:
    """An origin's API and collaborators, all in memory on a Clock (blocking calls inline)."""

    api: OriginAPI
    store: BlobStore
    queue: RetryQueue
    backend: MemoryBackend
    fetcher: BackendFetcher
    membership: Membership


def make_origin(
    case: SynchronousTestCase,
    clock: Clock,
    *,
    address: str = "o1:15002",
    members: tuple[str, ...] = ("o1:15002",),
    backend: MemoryBackend | None = None,
    agent: HostRoutingAgent | None = None,
    task_store: MemoryTaskStore | None = None,
    store_root: str | None = None,
) -> MemoryOrigin:
    """An origin at ``address`` in a ring of ``members``; replicas reached through ``agent``."""
    backend = backend if backend is not None else MemoryBackend()
    store = BlobStore(store_root or case.mktemp(), clock)
    router = BackendRouter([(".*", backend)])
    executor = WritebackExecutor(store, router, run_inline)
    queue = RetryQueue(
        task_store if task_store is not None else MemoryTaskStore(),
        {WRITEBACK_KIND: executor},
        clock,
        backoff=Backoff(initial=1.0, maximum=10.0, jitter=0.0),
    )
    executor.queue = queue
    queue.startService()
    case.addCleanup(queue.stopService)
    membership = Membership(StaticHostList(list(members)), NoHealthFilter(), clock)
    membership.refresh()
    ring = RendezvousRing(membership)
    if agent is None:
        factory, agent = memory_client_factory({}, clock)
    else:
        from kraken.http.client import HTTPClientFactory

        factory = HTTPClientFactory(clock, agent=agent)
    client = OriginClient(factory.client(), clock, chunk_size=1000)
    replicator = Replicator(client, ring, address, store, run_inline, stagger=60.0)
    fetcher = BackendFetcher(store, router, run_inline, clock, PIECES)
    fetcher.on_fetched.append(replicator.replicate)
    peer = PeerInfo(PeerID.from_address("127.0.0.1", 15001), "127.0.0.1", 15001, origin=True)
    api = OriginAPI(
        store,
        run_inline,
        ring,
        router,
        fetcher,
        Writeback(queue),
        replicator,
        peer,
        PIECES,
        clock=clock,
    )
    agent.add(address, api.resource())
    return MemoryOrigin(api, store, queue, backend, fetcher, membership)


def any_args(*_: Any) -> None:
    """Ignore everything."""
