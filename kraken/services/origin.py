"""
The origin daemon: ``twistd -n kraken-origin [--config FILE.yaml]``.

:func:`build_origin` builds every collaborator first (thread pool, blob store, backends,
HTTP client factory, ring membership with active health checks, write-back queue,
backend fetcher, replicator, P2P engine, API), then parents the long-running ones to
one :class:`OriginService`, in start order: the thread pool, the write-back queue, the
ring membership, the store cleanup timer, the peer engine and its listener (seeding
only: it never dials, never announces), and the HTTP listener.  Services stop in the
reverse order, so the listeners close before the queue and the thread pool; the HTTP
listener (:class:`kraken.services.parts.ClosingListener`) also closes the connections
it accepted, so that no client keeps talking to a stopped origin.

Data under ``data_dir``: ``store/`` (the blob store, durable mode) and
``writeback.db`` (the SQLite write-back queue).
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from kraken.api.origin import ORIGIN_ERRORS, OriginAPI, OriginMetrics
from kraken.backends.config import BackendContext, BackendsConfig
from kraken.backends.router import BackendRouter
from kraken.clients.origin import OriginClient
from kraken.cluster import Membership, RendezvousRing, parse_host_port
from kraken.config import OriginConfig
from kraken.core import PeerID, PeerInfo
from kraken.http.client import NO_RETRY, HTTPClientFactory
from kraken.http.errors import render_registry_json
from kraken.io.reactor import IDaemonReactor
from kraken.io.runner import BlockingRunner
from kraken.metrics import runtime_metrics
from kraken.origin.refresh import BackendFetcher
from kraken.origin.replication import Replicator
from kraken.origin.writeback import WRITEBACK_KIND, Writeback, WritebackExecutor
from kraken.persistedretry import PrometheusQueueMetrics, RetryQueue
from kraken.protocols.archives import OriginArchive
from kraken.protocols.peer import PeerNode, make_scheduler
from kraken.protocols.peer_metrics import PeerMetrics
from kraken.services.parts import (
    LISTEN_OPTION,
    CleanupService,
    DaemonOptions,
    OnStop,
    PeerNodeService,
    PoolOwningService,
    active_membership,
    advertised_address,
    cleanup_policy,
    daemon_config,
    filesystem_size,
    head_checks,
    http_site,
    named,
    owned_thread_pool,
    retry_queue,
    tls_listener,
    twistd_tree,
    with_children,
)
from kraken.store import BlobStore, StoreCleaner
from kraken.tls import ClusterTLS
from kraken.torrent.actions import EngineConfig

#: Threads for blob I/O and hashing (uploads, downloads, backend transfers, pieces).
THREADS = 16


class Options(DaemonOptions):
    """Command line of ``twistd kraken-origin``."""

    daemon = "origin"
    optParameters = [LISTEN_OPTION]


class OriginService(PoolOwningService):
    """The origin's service tree; its parts are exposed for tests and embedding."""

    def __init__(  # noqa: PLR0917 - the tree's parts, each exposed as an attribute
        self,
        api: OriginAPI,
        store: BlobStore,
        queue: RetryQueue,
        membership: Membership,
        node: PeerNode,
        backends: BackendRouter,
        pool: ThreadPool | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.pool = pool
        self.api = api
        self.store = store
        self.queue = queue
        self.membership = membership
        self.node = node
        self.backends = backends

    def stopService(self) -> Deferred[None]:
        """Wait for replications in flight, stop the services, then join the thread pool."""
        running = list(self.api.background)
        for job in running:
            job.cancel()
        waited: Deferred[Any] = DeferredList(running, consumeErrors=True)

        def stop(_: object) -> Deferred[None]:
            stopped: Deferred[None] = MultiService.stopService(self)  # type: ignore[no-untyped-call]
            return stopped

        return waited.addCallback(stop).addBoth(self.join_pool)


def _engine_config(config: OriginConfig) -> EngineConfig:
    names = {f.name for f in attrs.fields(EngineConfig)}
    values = {
        f.name: getattr(config.scheduler, f.name)
        for f in attrs.fields(type(config.scheduler))
        if f.name in names
    }
    values.update(origin=True, announce=False)
    return EngineConfig(**values)


def build_origin(
    config: OriginConfig,
    reactor: IDaemonReactor,
    listen: str | None = None,
    *,
    run: BlockingRunner | None = None,
    pool: ThreadPool | None = None,
) -> OriginService:
    """
    The origin's service tree for ``config`` (``listen`` overrides ``server.listen``).

    ``run`` replaces the thread-pool runner (tests); otherwise a pool of
    :data:`THREADS` threads is made (or ``pool`` used) and started with the tree.
    """
    services: list[Service] = []
    run, pool = owned_thread_pool(reactor, run, pool, THREADS, "kraken-origin")

    data_dir = str(config.data_dir)
    os.makedirs(data_dir, exist_ok=True)  # blocking, at start-up only
    store = BlobStore(os.path.join(data_dir, "store"), reactor, durable=True)
    backends = BackendsConfig.from_list([e.to_raw() for e in config.backends]).build(
        BackendContext(reactor, run)
    )

    tls = ClusterTLS.from_config(config.tls)  # blocking, at start-up only
    http = HTTPClientFactory(reactor, tls=tls.client_policy())
    membership = active_membership(
        config.cluster, config.healthcheck, http.client(retry=NO_RETRY), reactor
    )
    ring = RendezvousRing(membership, config.hashring.max_replica)
    self_address = advertised_address(config.server, listen)

    metrics = OriginMetrics()
    executor = WritebackExecutor(store, backends, run)
    queue = retry_queue(
        config.writeback,
        os.path.join(data_dir, "writeback.db"),
        WRITEBACK_KIND,
        executor,
        reactor,
        PrometheusQueueMetrics("origin_writeback", metrics.registry),
    )
    executor.queue = queue
    writeback = Writeback(queue)

    client = OriginClient(http.client(), reactor, chunk_size=config.replication.upload_chunk_size)
    replicator = Replicator(
        client, ring, self_address, store, run, stagger=config.replication.write_back_stagger
    )
    piece_lengths = config.metainfo.table()
    fetcher = BackendFetcher(
        store,
        backends,
        run,
        reactor,
        piece_lengths,
        size_limit=config.backend_fetch.size_limit,
        error_ttl=config.backend_fetch.error_ttl,
    )
    fetcher.on_fetched.append(replicator.replicate)

    peer_host, peer_port = parse_host_port(config.peer.advertised())
    peer = PeerInfo(
        PeerID.from_address(peer_host, peer_port), peer_host, peer_port, origin=True, complete=True
    )
    scheduler = make_scheduler(peer.peer_id, reactor, **attrs.asdict(_engine_config(config)))
    node = PeerNode(
        reactor,
        scheduler,
        OriginArchive(store),
        run,
        metrics=PeerMetrics(metrics.registry),
        tls=tls.peer_options(),
    )

    api = OriginAPI(
        store,
        run,
        ring,
        backends,
        fetcher,
        writeback,
        replicator,
        peer,
        piece_lengths,
        max_uploads=config.uploads.max_open,
        upload_timeout=config.uploads.idle_timeout,
        clock=reactor,
        metrics=metrics,
    )

    services.append(queue)
    services.append(membership)
    policy = cleanup_policy(config.cleanup, filesystem_size(data_dir))
    if policy is not None:
        cleaner = StoreCleaner(store, cache=policy)
        services.append(CleanupService(config.cleanup.interval, cleaner, reactor, run))
    services.append(PeerNodeService(node))
    peer_endpoint = tls.peer_endpoint(
        serverFromString(reactor, config.peer.listen),  # type: ignore[no-untyped-call]
        reactor,
    )
    peer_listener = StreamServerEndpointService(peer_endpoint, node.factory())  # type: ignore[no-untyped-call]
    services.append(named("peer", peer_listener))
    expiry = TimerService(min(60.0, config.uploads.idle_timeout), api.expire_uploads)  # type: ignore[no-untyped-call]
    expiry.clock = reactor
    services.append(expiry)
    site = http_site(
        tls.guard(api.resource()),
        reactor,
        config.http,
        gate=api.gate(head_checks(tls.head_check())),
        errors=ORIGIN_ERRORS,
        renderer=render_registry_json,
    )
    services.append(tls.expiry_monitor(reactor, metrics.registry))
    services.append(runtime_metrics(reactor, metrics.registry))
    # A ClosingListener: stopping closes kept-alive connections too, not only the port.
    services.append(
        named("server", tls_listener(reactor, tls, listen or config.server.listen, site))
    )
    services.append(OnStop(http.close))
    services.append(OnStop(backends.close))

    return with_children(
        OriginService(api, store, queue, membership, node, backends, pool), services
    )


def makeService(options: usage.Options, reactor: IReactorCore | None = None) -> MultiService:
    """The twistd entry point: an origin for the parsed ``options``."""
    config = daemon_config(options, "origin")
    Logger().info("origin data in {data_dir}", data_dir=config.data_dir)
    return twistd_tree(reactor, lambda running: build_origin(config, running, options["listen"]))
