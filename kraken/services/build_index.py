"""
The build-index daemon: ``twistd -n kraken-build-index [--config FILE.yaml]``.

:func:`build_build_index` builds every collaborator first (thread pool, backends, HTTP
client factory, the origin ring's and the cluster's memberships with active health
checks, dependency resolver, tag store, replication queue, API), then parents the
long-running ones to one :class:`BuildIndexService`, in start order: the replication
queue, the memberships and the HTTP listener.  Services stop in reverse order.

Data under ``data_dir``: ``replication.db`` (the SQLite tag replication queue) and
``spool/`` (blobs in transit to a remote cluster, deleted after each copy).  Tags live
in the backends only (write-through; see :mod:`kraken.buildindex.tags`).

Duplicates to the other members are sent at once, not staggered (the Go
``duplicate_put_stagger``, ignored here): each carries its write time so that a late
one never undoes a newer tag.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from kraken.api.build_index import BuildIndexAPI, BuildIndexMetrics
from kraken.backends.config import BackendContext, BackendsConfig
from kraken.backends.router import BackendRouter
from kraken.buildindex.dependencies import DependencyResolver, TagTypeRules
from kraken.buildindex.replication import REPLICATE_TAG_KIND, RemoteRules, TagReplicationExecutor
from kraken.buildindex.tags import TagStore
from kraken.clients.buildindex import BuildIndexClient
from kraken.clients.origin import OriginClient, OriginClusterClient
from kraken.cluster import (
    Membership,
    PassiveHealthFilter,
)
from kraken.config import BuildIndexConfig
from kraken.config.sections import HostListConfig
from kraken.core.address import parse_networks
from kraken.http.client import NO_RETRY, HTTPClientFactory, KrakenHTTPClient, read_body
from kraken.http.dependencies import Dependencies
from kraken.http.server import KleinRoutes
from kraken.io.reactor import IDaemonReactor
from kraken.io.runner import BlockingRunner
from kraken.metrics import runtime_metrics
from kraken.persistedretry import PrometheusQueueMetrics, RetryQueue
from kraken.services.parts import (
    LISTEN_OPTION,
    DaemonOptions,
    OnStop,
    PoolOwningService,
    active_membership,
    advertised_address,
    daemon_config,
    head_checks,
    http_site,
    named,
    owned_thread_pool,
    retry_queue,
    tls_listener,
    twistd_tree,
    with_children,
)
from kraken.tls import ClusterTLS

__all__ = ["THREADS", "BuildIndexService", "Options", "build_build_index", "makeService"]

#: Threads for backend calls and spool files.
THREADS = 8


class Options(DaemonOptions):
    """Command line of ``twistd kraken-build-index``."""

    daemon = "build-index"
    optParameters = [LISTEN_OPTION]


class BuildIndexService(PoolOwningService):
    """The build-index's service tree; its parts are exposed for tests and embedding."""

    def __init__(
        self,
        api: BuildIndexAPI,
        queue: RetryQueue,
        cluster: Membership,
        origins: Membership,
        backends: BackendRouter,
        *,
        pool: ThreadPool | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.api = api
        self.queue = queue
        self.cluster = cluster
        self.origins = origins
        self.backends = backends
        self.pool = pool


def _origin_address(config: HostListConfig) -> str:
    """What ``GET /origin`` answers: the DNS ``name:port``, else the static members."""
    if config.dns is not None:
        return config.dns
    assert config.static is not None, "checked by the config"
    return ",".join(config.static)


def _backends_readiness(backends: BackendRouter) -> Callable[[], Deferred[None]]:
    """The build-index's own readiness: the backends its tags live in answer."""

    async def ready() -> None:
        await backends.check_readiness()

    return lambda: Deferred.fromCoroutine(ready())


def _origin_readiness(client: KrakenHTTPClient, origins: Membership) -> Any:
    """A dependency check: one of the usable origins answers its ``/readiness``."""

    async def ready() -> None:
        hosts = sorted(origins.usable())
        if not hosts:
            raise RuntimeError("no origin is known")
        host = random.choice(hosts)
        response = await client.get(f"http://{host}/readiness", timeout=5.0, retry=False)
        await read_body(response, 4096)

    return lambda: Deferred.fromCoroutine(ready())


def build_build_index(
    config: BuildIndexConfig,
    reactor: IDaemonReactor,
    listen: str | None = None,
    *,
    run: BlockingRunner | None = None,
    pool: ThreadPool | None = None,
) -> BuildIndexService:
    """
    The build-index's service tree for ``config`` (``listen`` overrides ``server.listen``).

    ``run`` replaces the thread-pool runner (tests); otherwise a pool of
    :data:`THREADS` threads is made (or ``pool`` used) and started with the tree.
    """
    run, pool = owned_thread_pool(reactor, run, pool, THREADS, "kraken-build-index")

    data_dir = str(config.data_dir)
    os.makedirs(data_dir, exist_ok=True)  # blocking, at start-up only
    backends = BackendsConfig.from_list([e.to_raw() for e in config.backends]).build(
        BackendContext(reactor, run)
    )
    tls = ClusterTLS.from_config(config.tls)  # blocking, at start-up only
    http = HTTPClientFactory(reactor, tls=tls.client_policy())
    origins = active_membership(
        config.origin.hosts, config.origin.healthcheck, http.client(retry=NO_RETRY), reactor
    )
    cluster = active_membership(
        config.cluster.hosts, config.cluster.healthcheck, http.client(retry=NO_RETRY), reactor
    )
    self_address = advertised_address(config.server, listen)

    ring = OriginClusterClient(
        OriginClient(http.client(), reactor), origins.usable, refresh=origins.refresh
    )
    resolver = DependencyResolver(
        ring, TagTypeRules.of([(rule.namespace, rule.type) for rule in config.tag_types])
    )
    rules = RemoteRules.of(config.remotes)
    metrics = BuildIndexMetrics()
    executor = TagReplicationExecutor(
        rules, resolver, ring, http.client(), reactor, run, os.path.join(data_dir, "spool")
    )
    queue = retry_queue(
        config.tag_replication,
        os.path.join(data_dir, "replication.db"),
        REPLICATE_TAG_KIND,
        executor,
        reactor,
        PrometheusQueueMetrics("build_index_replication", metrics.registry),
    )
    peers = BuildIndexClient(
        http.client(retry=NO_RETRY), lambda: cluster.members, PassiveHealthFilter(reactor)
    )
    api = BuildIndexAPI(
        TagStore(backends, reactor),
        resolver,
        rules,
        queue,
        peers,
        lambda: cluster.members - {self_address},
        _origin_address(config.origin.hosts),
        reactor,
        _backends_readiness(backends),
        metrics=metrics,
        dependencies=Dependencies(
            (("origin", _origin_readiness(http.client(retry=NO_RETRY), origins)),),
            metrics.registry,
            reactor,
        ),
        duplicate_networks=parse_networks(config.duplicates.trusted_networks),
        max_clock_skew=config.duplicates.max_clock_skew,
    )

    tree = BuildIndexService(api, queue, cluster, origins, backends, pool=pool)
    site = http_site(
        tls.guard(api.resource()),
        reactor,
        config.http,
        gate=KleinRoutes(api.app, {}, checks=head_checks(tls.head_check())),
    )
    services: list[Service] = [
        queue,
        origins,
        cluster,
        named("server", tls_listener(reactor, tls, listen or config.server.listen, site)),
        OnStop(http.close),
        OnStop(backends.close),
        tls.expiry_monitor(reactor, metrics.registry),
        runtime_metrics(reactor, metrics.registry),
    ]
    if api.dependencies is not None:
        services.append(api.dependencies.service())
    return with_children(tree, services)


def makeService(options: usage.Options, reactor: IReactorCore | None = None) -> MultiService:
    """The twistd entry point: a build-index for the parsed ``options``."""
    config = daemon_config(options, "build-index")
    Logger().info("build-index data in {data_dir}", data_dir=config.data_dir)
    return twistd_tree(
        reactor, lambda running: build_build_index(config, running, options["listen"])
    )
