"""
The tracker daemon: ``twistd -n kraken-tracker [--config FILE.yaml]``.

:func:`makeService` builds every collaborator first (HTTP client factory,
origin membership with active health checks, peer store, API), then parents
the long-running ones to one :class:`TrackerService`: the HTTP listener, the
origin membership refresher, the memory store's sweeper, and the closers of
the Redis pool and of the HTTP connection pool.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.interfaces import IReactorCore
from twisted.python import usage

from kraken.api.tracker import TrackerAPI
from kraken.cluster import parse_host_port
from kraken.config import TrackerConfig
from kraken.core.address import parse_networks
from kraken.http.client import NO_RETRY, HTTPClientFactory
from kraken.http.server import KrakenSite
from kraken.io.reactor import IDaemonReactor
from kraken.metrics import runtime_metrics
from kraken.peers.admission import AdmissionPolicy
from kraken.peers.origins import HTTPOriginCluster
from kraken.peers.redis import RedisPeerStore, RedisPool
from kraken.peers.store import IPeerStore, MemoryPeerStore
from kraken.services.parts import (
    LISTEN_OPTION,
    DaemonOptions,
    OnStop,
    active_membership,
    daemon_config,
    head_checks,
    named,
    server_limits,
    tls_listener,
    twistd_tree,
    with_children,
)
from kraken.tls import ClusterTLS

#: Seconds the tracker gives one origin to answer before trying the next.
ORIGIN_TIMEOUT = 10.0


class Options(DaemonOptions):
    """Command line of ``twistd kraken-tracker``."""

    daemon = "tracker"
    optParameters = [LISTEN_OPTION]


class TrackerService(MultiService):
    """The tracker's service tree; ``api`` and ``store`` are exposed for tests and embedding."""

    def __init__(self, api: TrackerAPI, store: IPeerStore) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.api = api
        self.store = store


class TrackerSite(KrakenSite):
    """
    The tracker's ``Site``: no form parsing of POST bodies, no access-log line per good announce
    (nor per poll of an open swarm page: one a second per viewer).

    The API takes JSON only, and Twisted's form parsing of a POST with a
    Content-Type parses that header through the ``email`` package (a fifth of
    an announce's CPU).  Announces arrive thousands a second and are counted in
    ``/metrics``; every other request, and every announce that is not a 200,
    is still logged.
    """

    def __init__(self, resource: Any, **kwargs: Any) -> None:
        super().__init__(resource, parse_forms=False, **kwargs)

    def log(self, request: Any) -> None:
        """Access-log ``request`` unless it is a successful announce or swarm-page poll."""
        if request.code == 200 and request.path.startswith((b"/announce/", b"/ui/")):
            return
        super().log(request)


def _read_password(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:  # blocking, at start-up only
        return f.read().strip() or None


def build_tracker(
    config: TrackerConfig, reactor: IDaemonReactor, listen: str | None = None
) -> TrackerService:
    """The tracker's service tree for ``config`` (``listen`` overrides ``server.listen``)."""
    tls = ClusterTLS.from_config(config.tls)  # blocking, at start-up only
    http = HTTPClientFactory(
        reactor, tls=tls.client_policy(), timeout=ORIGIN_TIMEOUT, retry=NO_RETRY
    )
    origin_client = http.client()
    membership = active_membership(
        config.origin.hosts, config.origin.healthcheck, origin_client, reactor
    )
    origins = HTTPOriginCluster(origin_client, membership, reactor)

    services: list[Service] = [membership]
    store: IPeerStore
    if config.peer_store.kind == "redis":
        redis_config = config.peer_store.redis
        host, port = parse_host_port(redis_config.address)
        pool = RedisPool(
            host,
            port,
            reactor,
            dbid=redis_config.database,
            poolsize=redis_config.pool_size,
            password=_read_password(redis_config.password_file),
            connect_timeout=redis_config.connect_timeout,
        )
        store = RedisPeerStore(
            pool,
            reactor,
            config.peer_ttl,
            redis_config.key_prefix,
            max_per_address=config.admission.max_peers_per_address,
        )
        services.append(pool)
    else:
        memory = MemoryPeerStore(
            reactor, config.peer_ttl, max_per_address=config.admission.max_peers_per_address
        )
        sweeper = TimerService(config.peer_store.cleanup_interval, memory.sweep)  # type: ignore[no-untyped-call]
        sweeper.clock = reactor
        services.append(sweeper)
        store = memory

    api = TrackerAPI(
        store,
        origins,
        reactor,
        interval_seconds=config.announce_interval,
        handout_limit=config.handout_limit,
        metainfo_ok_ttl=config.metainfo_cache.ok_ttl,
        metainfo_other_ttl=config.metainfo_cache.other_ttl,
        metainfo_max_entries=config.metainfo_cache.max_entries,
        admission=AdmissionPolicy(parse_networks(config.admission.trusted_forwarders)),
        quarantine_seconds=config.admission.quarantine,
        quarantine_reporters=config.admission.quarantine_reporters,
    )
    site = TrackerSite(
        tls.guard(api.resource()),
        clock=reactor,
        gate=api.gate(head_checks(tls.head_check())),
        limits=server_limits(config.http),
    )
    services.append(
        named("server", tls_listener(reactor, tls, listen or config.server.listen, site))
    )
    services.append(OnStop(http.close))
    services.append(tls.expiry_monitor(reactor, api.metrics.registry))
    services.append(runtime_metrics(reactor, api.metrics.registry))
    services.append(api.dependencies.service())

    return with_children(TrackerService(api, store), services)


def makeService(options: usage.Options, reactor: IReactorCore | None = None) -> MultiService:
    """The twistd entry point: a tracker for the parsed ``options``."""
    config = daemon_config(options, "tracker")
    return twistd_tree(reactor, lambda running: build_tracker(config, running, options["listen"]))
