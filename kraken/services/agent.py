"""
The agent daemon: ``twistd -n kraken-agent [--config FILE.yaml]`` (DESIGN 8).

:func:`build_agent` builds every collaborator first (thread pool, blob store,
HTTP client factory, tracker and build-index memberships with passive health,
P2P engine, downloader, the two Klein apps), then parents the long-running
ones to one :class:`AgentService`, in start order: the I/O thread pool, the
memberships, the peer node and its listener, the seeding of the cached blobs
(so that they announce again after a restart), the cleanup timer (which makes
the engine forget what it removes), the agent API and registry listeners, and
the HTTP pool's closer.  Stopping runs in reverse: listeners close first, the
thread pool last.

With no configuration the single-host defaults apply: registry on
127.0.0.1:16000, peer port 16001, agent API 16002, the tracker at
127.0.0.1:15003 and the build-index at 127.0.0.1:15004, data under
``./kraken-data/agent``.
"""

from __future__ import annotations

import os
import random
from typing import Any, Final

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from kraken.api.agent import AgentAPI, AgentMetrics
from kraken.api.registry import RegistryAPI, parse_networks
from kraken.clients.buildindex import BuildIndexClient
from kraken.clients.tracker import (
    PollPolicy,
    TrackerClient,
    TrackerUnavailable,
    UnreachableReporter,
)
from kraken.cluster import (
    Membership,
    PassiveHealthFilter,
    RendezvousRing,
    parse_host_port,
)
from kraken.config import AgentConfig
from kraken.config.sections import SchedulerConfig
from kraken.core import Digest, PeerID, PeerInfo
from kraken.http.client import NO_RETRY, HTTPClientFactory, KrakenHTTPClient, read_body
from kraken.http.dependencies import Dependencies
from kraken.http.errors import render_registry_json
from kraken.http.server import KleinRoutes, read_only
from kraken.io.reactor import IDaemonReactor
from kraken.io.runner import threadpool_runner
from kraken.metrics import runtime_metrics
from kraken.protocols.archives import AgentArchive
from kraken.protocols.downloader import AnnouncerAdapter, P2PBlobDownloader
from kraken.protocols.peer import PeerNode
from kraken.protocols.peer_metrics import PeerMetrics
from kraken.protocols.progress import announce_progress
from kraken.services.parts import (
    CleanupService,
    DaemonOptions,
    OnStop,
    PeerNodeService,
    ThreadPoolService,
    cleanup_policy,
    closing_listener,
    daemon_config,
    filesystem_size,
    host_list_from_config,
    http_site,
    named,
    twistd_tree,
    with_children,
)
from kraken.store import BlobStore, StoreCleaner
from kraken.tls import ClusterTLS
from kraken.torrent.actions import EngineConfig
from kraken.torrent.bandwidth import BandwidthLimiter
from kraken.torrent.scheduler import Scheduler

__all__ = [
    "AgentService",
    "CleanupService",
    "Options",
    "PeerNodeService",
    "SeedCachedService",
    "build_agent",
    "cleanup_policy",
    "engine_config",
    "makeService",
]

#: Seconds a tracker or build-index gets to answer one request.
REQUEST_TIMEOUT: Final = 10.0
#: Threads doing the agent's blocking file I/O (piece reads/writes, hashing, store calls).
IO_THREADS: Final = 16


class Options(DaemonOptions):
    """Command line of ``twistd kraken-agent``."""

    daemon = "agent"
    serve_tls = False  # the agent's tls: section is client-side only
    optParameters = [
        ["registry-listen", None, None, "Override registry.listen (a server endpoint string)."],
        ["server-listen", None, None, "Override server.listen."],
        ["peer-listen", None, None, "Override peer.listen."],
    ]


class AgentService(MultiService):
    """The agent's service tree; collaborators are exposed for tests and embedding."""

    def __init__(  # noqa: PLR0917
        self,
        api: AgentAPI,
        registry: RegistryAPI,
        store: BlobStore,
        node: PeerNode,
        downloader: P2PBlobDownloader,
        cleaner: StoreCleaner | None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.api = api
        self.registry = registry
        self.store = store
        self.node = node
        self.downloader = downloader
        self.cleaner = cleaner


class SeedCachedService(Service):
    """At start, registers the cached blobs with the P2P engine so that they announce.

    See :meth:`P2PBlobDownloader.seed_cached` (the store is listed in the I/O pool).
    """

    log = Logger()

    def __init__(self, downloader: P2PBlobDownloader) -> None:
        self.downloader = downloader
        self.seeding: Deferred[int] | None = None

    def startService(self) -> None:
        """List the cache and register what it holds (in the background)."""
        Service.startService(self)  # type: ignore[no-untyped-call]

        def failed(reason: Any) -> None:
            if not reason.check(CancelledError):
                self.log.failure("seeding the cached blobs failed", reason)

        self.seeding = self.downloader.seed_cached()
        self.seeding.addErrback(failed)

    def stopService(self) -> None:
        """Drop a listing still running (the engine is stopping)."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        if self.seeding is not None:
            self.seeding.cancel()


def engine_config(config: SchedulerConfig) -> EngineConfig:
    """The P2P engine's tunables from the ``scheduler`` section."""
    return EngineConfig(
        max_conns_per_torrent=config.max_conns_per_torrent,
        max_dials_per_torrent=config.max_dials_per_torrent,
        pipeline_limit=config.pipeline_limit,
        origin_pipeline_limit=config.origin_pipeline_limit,
        endgame_threshold=config.endgame_threshold,
        request_min_timeout=config.request_min_timeout,
        request_timeout_per_mib=config.request_timeout_per_mib,
        blacklist_duration=config.blacklist_duration,
        conn_idle_timeout=config.conn_idle_timeout,
        conn_lifetime=config.conn_lifetime,
        seeder_tti=config.seeder_tti,
        leecher_tti=config.leecher_tti,
        announce_interval=config.announce_interval,
        complete_announce_interval=config.complete_announce_interval,
        max_announce_interval=config.max_announce_interval,
        max_upload_queue=config.max_upload_queue,
        upload_slots=config.upload_slots,
        origin_fallback_below=config.origin_fallback_below,
        origin_spread_window=config.origin_spread_window,
        max_conns_per_address=config.max_conns_per_address,
        useful_within=config.useful_within,
        reserved_conns_per_torrent=config.reserved_conns_per_torrent,
        handout_memory=config.handout_memory,
    )


def _tracker_readiness(
    client: KrakenHTTPClient, tracker: TrackerClient, digest: Digest
) -> Deferred[None]:
    """``GET /readiness`` on the tracker owning a per-process random digest (as the Go agent)."""

    async def check() -> None:
        trackers = tracker.trackers_for(digest)
        if not trackers:
            raise TrackerUnavailable("no tracker is known")
        response = await client.get(
            f"{tracker.scheme}://{trackers[0]}/readiness", timeout=5.0, retry=False
        )
        await read_body(response, 4096)

    return Deferred.fromCoroutine(check())


def build_agent(
    config: AgentConfig,
    reactor: IDaemonReactor,
    *,
    registry_listen: str | None = None,
    server_listen: str | None = None,
    peer_listen: str | None = None,
    advertise: str | None = None,
    io_threads: int = IO_THREADS,
) -> AgentService:
    """The agent's service tree for ``config``; the keyword arguments override listeners."""
    pool = ThreadPool(2, io_threads, "kraken-agent-io")
    run_blocking = threadpool_runner(reactor, pool)
    data_dir = str(config.data_dir)
    os.makedirs(data_dir, exist_ok=True)
    store = BlobStore(os.path.join(data_dir, "store"), reactor)  # blocking, start-up only

    tls = ClusterTLS.from_config(config.tls, serve=False)  # client side only; blocking
    http = HTTPClientFactory(
        reactor, tls=tls.client_policy(), timeout=REQUEST_TIMEOUT, retry=NO_RETRY
    )
    client = http.client()

    tracker_health = PassiveHealthFilter(
        reactor,
        config.tracker.passive_health.fails,
        config.tracker.passive_health.fail_timeout,
    )
    tracker_members = Membership(
        host_list_from_config(config.tracker.hosts, reactor),
        tracker_health,
        reactor,
        interval=config.tracker.hashring.refresh_interval,
    )
    ring = RendezvousRing(tracker_members, config.tracker.hashring.max_replica)
    poll = config.metainfo_poll
    tracker = TrackerClient(
        client,
        ring,
        tracker_health,
        reactor,
        poll=PollPolicy(
            poll.initial, poll.multiplier, poll.maximum, poll.jitter, poll.give_up_after
        ),
    )

    bi_health = PassiveHealthFilter(
        reactor,
        config.build_index.passive_health.fails,
        config.build_index.passive_health.fail_timeout,
    )
    bi_members = Membership(
        host_list_from_config(config.build_index.hosts, reactor), bi_health, reactor
    )
    build_index = BuildIndexClient(client, lambda: bi_members.members, bi_health)

    if advertise is None:
        advertise = config.peer.advertised()
    ip, port = parse_host_port(advertise)
    peer_id = PeerID.random()
    scheduler = Scheduler(
        peer_id, reactor.seconds, random.Random(), engine_config(config.scheduler)
    )
    bw = config.scheduler.bandwidth
    bandwidth = (
        BandwidthLimiter.of(reactor.seconds, bw.egress, bw.ingress)
        if bw.enabled
        else BandwidthLimiter()
    )
    metrics = AgentMetrics()
    unreachable = UnreachableReporter(tracker, PeerInfo(peer_id, ip, port), reactor)
    node = PeerNode(
        reactor,
        scheduler,
        AgentArchive(store),
        run_blocking,
        announcer=AnnouncerAdapter(
            tracker, peer_id, ip, port, progress=lambda h: announce_progress(node.scheduler, h)
        ),
        unreachable=unreachable,
        bandwidth=bandwidth,
        tls=tls.peer_options(),
        handshake_timeout=config.scheduler.handshake_timeout,
        metrics=PeerMetrics(metrics.registry),
    )
    downloader = P2PBlobDownloader(
        store,
        node,
        tracker,
        run_blocking,
        observe=lambda kind: metrics.downloads.labels(kind).inc(),
        observe_seconds=metrics.download_seconds.observe,
    )
    readiness_digest = Digest.of_bytes(os.urandom(16))
    dependencies = Dependencies(
        (
            ("build-index", build_index.readiness),
            ("tracker", lambda: _tracker_readiness(client, tracker, readiness_digest)),
        ),
        metrics.registry,
        reactor,
    )
    api = AgentAPI(
        store,
        downloader,
        build_index,
        run_blocking,
        dependencies=dependencies,
        progress=downloader.progress,
        metrics=metrics,
    )
    networks = config.registry.allowed_networks
    registry = RegistryAPI(
        api,
        reactor,
        allowed_networks=parse_networks(networks) if networks else None,
        tag_ttl=config.registry.tag_cache_ttl,
    )

    cleaner: StoreCleaner | None = None
    services: list[Service] = [ThreadPoolService(pool), tracker_members, bi_members]
    services.append(PeerNodeService(node))
    peer_endpoint = tls.peer_endpoint(
        serverFromString(reactor, peer_listen or config.peer.listen),  # type: ignore[no-untyped-call]
        reactor,
    )
    peer_listener = StreamServerEndpointService(peer_endpoint, node.factory())  # type: ignore[no-untyped-call]
    services.append(named("peer", peer_listener))
    services.append(SeedCachedService(downloader))
    services.append(dependencies.service())
    fs_size = filesystem_size(data_dir)
    policy = cleanup_policy(config.cleanup, fs_size)
    if policy is not None:
        cleaner = StoreCleaner(store, cache=policy, downloads=policy, uploads=None)
        services.append(
            CleanupService(
                config.cleanup.interval,
                cleaner,
                reactor,
                run_blocking,
                on_removed=downloader.forget,
            )
        )
    # ClosingListeners: stopping closes kept-alive connections too, not only the ports.
    api_site = http_site(api.resource(), reactor, config.http)
    api_listener = closing_listener(reactor, server_listen or config.server.listen, api_site)
    services.append(named("server", api_listener))
    # docker and skopeo try HTTPS first: the site turns the handshake away at once; writes
    # to the read-only registry get 405 before any of their body is read.
    registry_site = http_site(
        registry.resource(),
        reactor,
        config.http,
        gate=KleinRoutes(registry.app, {}, checks=[read_only]),
        renderer=render_registry_json,
    )
    registry_listen = registry_listen or config.registry.listen
    services.append(named("registry", closing_listener(reactor, registry_listen, registry_site)))
    services.append(OnStop(http.close))
    services.append(OnStop(unreachable.stop))  # stops first: no report after the pool closes
    services.append(tls.expiry_monitor(reactor, metrics.registry))
    services.append(runtime_metrics(reactor, metrics.registry))

    return with_children(AgentService(api, registry, store, node, downloader, cleaner), services)


def makeService(options: usage.Options, reactor: IReactorCore | None = None) -> MultiService:
    """The twistd entry point: an agent for the parsed ``options``."""
    config = daemon_config(options, "agent")

    def build(running: IDaemonReactor) -> AgentService:
        return build_agent(
            config,
            running,
            registry_listen=options["registry-listen"],
            server_listen=options["server-listen"],
            peer_listen=options["peer-listen"],
        )

    return twistd_tree(reactor, build)
