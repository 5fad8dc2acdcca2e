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
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from kraken.api.build_index import BuildIndexAPI, BuildIndexMetrics
from kraken.backends.config import BackendContext, BackendsConfig
from kraken.backends.router import BackendRouter
from kraken.backends.threads import BlockingRunner, threadpool_runner
from kraken.buildindex.dependencies import DependencyResolver, TagTypeRules
from kraken.buildindex.replication import REPLICATE_TAG_KIND, RemoteRules, TagReplicationExecutor
from kraken.buildindex.tags import TagStore
from kraken.cluster import (
    ActiveHealthFilter,
    DNSHostList,
    HTTPHealthProbe,
    IHealthFilter,
    IHostList,
    Membership,
    NoHealthFilter,
    PassiveHealthFilter,
    StaticHostList,
    name_resolver_lookup,
    parse_host_port,
)
from kraken.config import BuildIndexConfig, load_config
from kraken.config.sections import ActiveClusterClientConfig, HostListConfig
from kraken.config.structure import ConfigError
from kraken.config.values import parse_endpoint
from kraken.http.client import NO_RETRY, HTTPClientFactory, KrakenHTTPClient, read_body
from kraken.persistedretry import Backoff, PrometheusQueueMetrics, RetryQueue, SQLiteTaskStore
from kraken.protocols.buildindex_client import BuildIndexClient
from kraken.protocols.origin_client import OriginClient, OriginClusterClient
from kraken.tls import ClusterTLS, check_tls_files

__all__ = ["THREADS", "BuildIndexService", "Options", "build_build_index", "makeService"]

#: Threads for backend calls and spool files.
THREADS = 8


class Options(usage.Options):
    """Command line of ``twistd kraken-build-index``."""

    optParameters = [
        ["config", "c", None, "YAML configuration file (default: single-host defaults)."],
        ["listen", None, None, "Override server.listen (a Twisted server endpoint string)."],
    ]

    def postOptions(self) -> None:
        """Load and check the configuration now, so that a bad one stops twistd with a message."""
        try:
            self["build_index_config"] = load_config("build-index", self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        check_tls_files(self["build_index_config"].tls)  # a bad file: one line naming it


class _OnStop(Service):
    """Runs a cleanup (closing pools and backends) when the tree stops."""

    def __init__(self, cleanup: Any) -> None:
        self.cleanup = cleanup

    def stopService(self) -> Deferred[Any]:
        """Run the cleanup; the tree waits for it."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        return maybeDeferred(self.cleanup)


class BuildIndexService(MultiService):
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

    def startService(self) -> None:
        """Start the thread pool (if the tree owns one), then the services."""
        if self.pool is not None:
            self.pool.start()
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        """Stop the services, then join the thread pool once they have all stopped."""
        stopped: Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]

        def join(result: object) -> object:
            if self.pool is not None:
                self.pool.stop()
            return result

        return stopped.addBoth(join)


def _host_list(config: HostListConfig, reactor: Any) -> IHostList:
    if config.static is not None:
        return StaticHostList(config.static)
    assert config.dns is not None, "checked by the config"
    name, port = parse_host_port(config.dns)
    return DNSHostList(name, port, name_resolver_lookup(reactor.nameResolver), reactor, config.ttl)


def _membership(
    config: ActiveClusterClientConfig, http: HTTPClientFactory, reactor: Any
) -> Membership:
    health: IHealthFilter = NoHealthFilter()
    check = config.healthcheck
    if check.enabled:
        probe = HTTPHealthProbe(http.client(retry=NO_RETRY), check.timeout)
        health = ActiveHealthFilter(probe, reactor, check.fails, check.passes, check.timeout)
    return Membership(_host_list(config.hosts, reactor), health, reactor, interval=check.interval)


def _origin_address(config: HostListConfig) -> str:
    """What ``GET /origin`` answers: the DNS ``name:port``, else the static members."""
    if config.dns is not None:
        return config.dns
    assert config.static is not None, "checked by the config"
    return ",".join(config.static)


def _origin_readiness(
    client: KrakenHTTPClient, origins: Membership, backends: BackendRouter
) -> Any:
    async def ready() -> None:
        await backends.check_readiness()
        hosts = sorted(origins.usable())
        if not hosts:
            raise RuntimeError("no origin is known")
        host = random.choice(hosts)
        response = await client.get(f"http://{host}/readiness", timeout=5.0, retry=False)
        await read_body(response, 4096)

    return lambda: Deferred.fromCoroutine(ready())


def build_build_index(
    config: BuildIndexConfig,
    reactor: Any,
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
    if run is None:
        if pool is None:
            pool = ThreadPool(minthreads=0, maxthreads=THREADS, name="kraken-build-index")
        run = threadpool_runner(reactor, pool)
    else:
        pool = None

    data_dir = str(config.data_dir)
    os.makedirs(data_dir, exist_ok=True)  # blocking, at start-up only
    backends = BackendsConfig.from_list([e.to_raw() for e in config.backends]).build(
        BackendContext(reactor, run)
    )
    tls = ClusterTLS.from_config(config.tls)  # blocking, at start-up only
    http = HTTPClientFactory(reactor, tls=tls.client_policy())
    origins = _membership(config.origin, http, reactor)
    cluster = _membership(config.cluster, http, reactor)
    self_address = config.server.advertised()
    if listen is not None and config.server.advertise is None:
        host_port = parse_endpoint(listen).host_port()
        if host_port is not None:
            self_address = f"{host_port[0]}:{host_port[1]}"

    ring = OriginClusterClient(OriginClient(http.client(), reactor), origins.usable)
    resolver = DependencyResolver(
        ring, TagTypeRules.of([(rule.namespace, rule.type) for rule in config.tag_types])
    )
    rules = RemoteRules.of(config.remotes)
    metrics = BuildIndexMetrics()
    executor = TagReplicationExecutor(
        rules, resolver, ring, http.client(), reactor, run, os.path.join(data_dir, "spool")
    )
    tr = config.tag_replication
    queue = RetryQueue(
        SQLiteTaskStore(os.path.join(data_dir, "replication.db"), reactor),
        {REPLICATE_TAG_KIND: executor},
        reactor,
        max_in_flight=tr.workers,
        backoff=Backoff(
            initial=tr.retry_interval,
            multiplier=tr.retry_multiplier,
            maximum=max(tr.max_retry_interval, tr.retry_interval),
        ),
        metrics=PrometheusQueueMetrics("build_index_replication", metrics.registry),
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
        _origin_readiness(http.client(retry=NO_RETRY), origins, backends),
        metrics=metrics,
    )

    tree = BuildIndexService(api, queue, cluster, origins, backends, pool=pool)
    site = Site(tls.guard(api.resource()))  # type: ignore[no-untyped-call]
    site.displayTracebacks = False
    endpoint = serverFromString(reactor, listen or config.server.listen)  # type: ignore[no-untyped-call]
    endpoint = tls.server_endpoint(endpoint, reactor)
    services: list[Service] = [
        queue,
        origins,
        cluster,
        StreamServerEndpointService(endpoint, site),  # type: ignore[no-untyped-call]
        _OnStop(http.close),
        _OnStop(backends.close),
        tls.expiry_monitor(reactor, metrics.registry),
    ]
    for service in services:
        service.setServiceParent(tree)  # type: ignore[no-untyped-call]
    return tree


def makeService(options: usage.Options, reactor: Any = None) -> MultiService:
    """The twistd entry point: a build-index for the parsed ``options``."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options.get("build_index_config") or load_config("build-index", options["config"])
    Logger().info("build-index data in {data_dir}", data_dir=config.data_dir)
    return build_build_index(config, reactor, options["listen"])
