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

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.python import usage
from twisted.web.server import Site

from kraken.api.tracker import TrackerAPI
from kraken.cluster import (
    ActiveHealthFilter,
    DNSHostList,
    IHealthFilter,
    IHostList,
    Membership,
    NoHealthFilter,
    StaticHostList,
    name_resolver_lookup,
    parse_host_port,
)
from kraken.config import TrackerConfig, load_config
from kraken.config.sections import ActiveClusterClientConfig
from kraken.config.structure import ConfigError
from kraken.http.client import NO_RETRY, HTTPClientFactory, KrakenHTTPClient, read_body
from kraken.peers.origins import HTTPOriginCluster
from kraken.peers.redis import RedisPeerStore, RedisPool
from kraken.peers.store import IPeerStore, MemoryPeerStore
from kraken.tls import ClusterTLS, check_tls_files

#: Seconds the tracker gives one origin to answer before trying the next.
ORIGIN_TIMEOUT = 10.0


class Options(usage.Options):
    """Command line of ``twistd kraken-tracker``."""

    optParameters = [
        ["config", "c", None, "YAML configuration file (default: single-host defaults)."],
        ["listen", None, None, "Override server.listen (a Twisted server endpoint string)."],
    ]

    def postOptions(self) -> None:
        """Load and check the configuration now, so that a bad one stops twistd with a message."""
        try:
            self["tracker_config"] = load_config("tracker", self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        check_tls_files(self["tracker_config"].tls)  # a bad file: one line naming it


class TrackerService(MultiService):
    """The tracker's service tree; ``api`` and ``store`` are exposed for tests and embedding."""

    def __init__(self, api: TrackerAPI, store: IPeerStore) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.api = api
        self.store = store


class TrackerSite(Site):
    """
    The tracker's ``Site``: no form parsing of POST bodies, no access-log line per good announce.

    The API takes JSON only, and Twisted's form parsing of a POST with a
    Content-Type parses that header through the ``email`` package (a fifth of
    an announce's CPU).  Announces arrive thousands a second and are counted in
    ``/metrics``; every other request, and every announce that is not a 200,
    is still logged.
    """

    def __init__(self, resource: Any) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False)  # type: ignore[no-untyped-call]
        self.displayTracebacks = False

    def log(self, request: Any) -> None:
        """Access-log ``request`` unless it is a successful announce."""
        if request.code == 200 and request.path.startswith(b"/announce/"):
            return
        super().log(request)


class _OnStop(Service):
    """Runs a cleanup (closing a pool) when the tree stops."""

    def __init__(self, cleanup: Any) -> None:
        self.cleanup = cleanup

    def stopService(self) -> Deferred[Any]:
        """Run the cleanup; the tree waits for it."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        return maybeDeferred(self.cleanup)


def _host_list(config: ActiveClusterClientConfig, reactor: Any) -> IHostList:
    hosts = config.hosts
    if hosts.static is not None:
        return StaticHostList(hosts.static)
    assert hosts.dns is not None, "checked by the config"
    name, port = parse_host_port(hosts.dns)
    return DNSHostList(name, port, name_resolver_lookup(reactor.nameResolver), reactor, hosts.ttl)


def _health_filter(
    config: ActiveClusterClientConfig, client: KrakenHTTPClient, reactor: Any
) -> IHealthFilter:
    check = config.healthcheck
    if not check.enabled:
        return NoHealthFilter()

    async def _probe(host: str) -> object:
        # The client raises for any status but 200; drain the body so the connection is reused.
        response = await client.get(f"http://{host}/health", timeout=check.timeout, retry=False)
        return await read_body(response, 4096)

    def probe(host: str) -> Deferred[object]:
        return Deferred.fromCoroutine(_probe(host))

    return ActiveHealthFilter(probe, reactor, check.fails, check.passes, check.timeout)


def _read_password(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:  # blocking, at start-up only
        return f.read().strip() or None


def build_tracker(config: TrackerConfig, reactor: Any, listen: str | None = None) -> TrackerService:
    """The tracker's service tree for ``config`` (``listen`` overrides ``server.listen``)."""
    tls = ClusterTLS.from_config(config.tls)  # blocking, at start-up only
    http = HTTPClientFactory(
        reactor, tls=tls.client_policy(), timeout=ORIGIN_TIMEOUT, retry=NO_RETRY
    )
    origin_client = http.client()
    membership = Membership(
        _host_list(config.origin, reactor),
        _health_filter(config.origin, origin_client, reactor),
        reactor,
        interval=config.origin.healthcheck.interval,
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
        store = RedisPeerStore(pool, reactor, config.peer_ttl, redis_config.key_prefix)
        services.append(pool)
    else:
        memory = MemoryPeerStore(reactor, config.peer_ttl)
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
    )
    site = TrackerSite(tls.guard(api.resource()))
    endpoint = serverFromString(reactor, listen or config.server.listen)  # type: ignore[no-untyped-call]
    endpoint = tls.server_endpoint(endpoint, reactor)
    listener = StreamServerEndpointService(endpoint, site)  # type: ignore[no-untyped-call]
    services.append(listener)
    services.append(_OnStop(http.close))
    services.append(tls.expiry_monitor(reactor, api.metrics.registry))

    tree = TrackerService(api, store)
    for service in services:
        service.setServiceParent(tree)  # type: ignore[no-untyped-call]
    return tree


def makeService(options: usage.Options, reactor: Any = None) -> MultiService:
    """The twistd entry point: a tracker for the parsed ``options``."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options.get("tracker_config") or load_config("tracker", options["config"])
    return build_tracker(config, reactor, options["listen"])
