"""
The proxy daemon: ``twistd -n kraken-proxy [--config FILE.yaml]`` (DESIGN 9, reference 4).

:func:`build_proxy` builds every collaborator first (thread pool, blob store for staged
uploads and pulled blobs, HTTP client factory, origin ring membership with active health
checks, build-index membership with passive health, the Klein app), then parents the
long-running ones to one :class:`ProxyService`, in start order: the I/O thread pool, the
memberships, the upload-expiry timer, the cache cleanup timer, the registry listener and
the HTTP pool's closer.  Stopping runs in reverse: the listener closes first, the thread
pool last.

With no configuration the single-host defaults apply: the registry on 127.0.0.1:15000,
origins at 127.0.0.1:15002, the build-index at 127.0.0.1:15004, data under
``./kraken-data/proxy``.
"""

from __future__ import annotations

import os
from typing import Any, Final

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from kraken.api.proxy import ProxyAPI
from kraken.backends.threads import threadpool_runner
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
from kraken.config import ProxyConfig, load_config
from kraken.config.sections import ActiveHealthConfig, HostListConfig
from kraken.config.structure import ConfigError
from kraken.http.client import NO_RETRY, HTTPClientFactory
from kraken.http.plain import refuse_tls
from kraken.protocols.buildindex_client import BuildIndexClient
from kraken.protocols.origin_client import OriginClient, OriginClusterClient
from kraken.services.agent import (
    CleanupService,
    ThreadPoolService,
    cleanup_policy,
    filesystem_size,
)
from kraken.store import BlobStore, StoreCleaner
from kraken.tls import ClusterTLS, check_tls_files

__all__ = [
    "UPLOAD_EXPIRY_INTERVAL",
    "Options",
    "ProxyService",
    "build_proxy",
    "makeService",
]

#: Threads doing the proxy's blocking file I/O (upload chunks, hashing, reads for origins).
IO_THREADS: Final = 16
#: Seconds between sweeps of idle uploads.
UPLOAD_EXPIRY_INTERVAL: Final = 60.0


class Options(usage.Options):
    """Command line of ``twistd kraken-proxy``."""

    optParameters = [
        ["config", "c", None, "YAML configuration file (default: single-host defaults)."],
        ["listen", None, None, "Override server.listen (a Twisted server endpoint string)."],
    ]

    def postOptions(self) -> None:
        """Load and check the configuration now, so that a bad one stops twistd with a message."""
        try:
            self["proxy_config"] = load_config("proxy", self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        check_tls_files(self["proxy_config"].tls)  # a bad file: one line naming it


class ProxyService(MultiService):
    """The proxy's service tree; its parts are exposed for tests and embedding."""

    def __init__(self, api: ProxyAPI, store: BlobStore, origins: Membership) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.api = api
        self.store = store
        self.origins = origins


class _OnStop(Service):
    """Runs a cleanup (closing the HTTP pool) when the tree stops."""

    def __init__(self, cleanup: Any) -> None:
        self.cleanup = cleanup

    def stopService(self) -> Deferred[Any]:
        """Run the cleanup; the tree waits for it."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        return maybeDeferred(self.cleanup)


def _host_list(hosts: HostListConfig, reactor: Any) -> IHostList:
    if hosts.static is not None:
        return StaticHostList(hosts.static)
    assert hosts.dns is not None, "checked by the config"
    name, port = parse_host_port(hosts.dns)
    return DNSHostList(name, port, name_resolver_lookup(reactor.nameResolver), reactor, hosts.ttl)


def _health(check: ActiveHealthConfig, http: HTTPClientFactory, reactor: Any) -> IHealthFilter:
    if not check.enabled:
        return NoHealthFilter()
    probe = HTTPHealthProbe(http.client(retry=NO_RETRY), check.timeout)
    return ActiveHealthFilter(probe, reactor, check.fails, check.passes, check.timeout)


def _origin_readiness(origins: Membership) -> Deferred[None]:
    """Ready when the origin ring's health checks found at least one origin answering."""
    if not origins.healthy:
        return fail(RuntimeError("no origin answers its health check"))
    return succeed(None)


def build_proxy(
    config: ProxyConfig, reactor: Any, listen: str | None = None, *, io_threads: int = IO_THREADS
) -> ProxyService:
    """The proxy's service tree for ``config`` (``listen`` overrides ``server.listen``)."""
    pool = ThreadPool(2, io_threads, "kraken-proxy-io")
    run = threadpool_runner(reactor, pool)
    data_dir = str(config.data_dir)
    os.makedirs(data_dir, exist_ok=True)  # blocking, start-up only
    store = BlobStore(os.path.join(data_dir, "store"), reactor)

    tls = ClusterTLS.from_config(config.tls)  # blocking, at start-up only
    http = HTTPClientFactory(reactor, tls=tls.client_policy())
    origin_members = Membership(
        _host_list(config.origin.hosts, reactor),
        _health(config.origin.healthcheck, http, reactor),
        reactor,
        interval=config.origin.healthcheck.interval,
    )
    origins = OriginClusterClient(
        OriginClient(http.client(), reactor, chunk_size=config.origin.upload_chunk_size),
        origin_members.usable,
    )
    bi_members = Membership(
        _host_list(config.build_index.hosts, reactor),
        NoHealthFilter(),
        reactor,
        interval=config.build_index.healthcheck.interval,
    )
    tags = BuildIndexClient(
        http.client(retry=NO_RETRY), lambda: bi_members.members, PassiveHealthFilter(reactor)
    )
    api = ProxyAPI(
        store,
        run,
        origins,
        tags,
        reactor,
        prefetch_min_size=config.prefetch.min_blob_size,
        prefetch_max_size=config.prefetch.max_blob_size,
        readiness_checks=(
            ("origin", lambda: _origin_readiness(origin_members)),
            ("build-index", tags.readiness),
        ),
    )

    services: list[Service] = [ThreadPoolService(pool), origin_members, bi_members]
    expiry = TimerService(UPLOAD_EXPIRY_INTERVAL, api.expire_uploads)  # type: ignore[no-untyped-call]
    expiry.clock = reactor
    services.append(expiry)
    policy = cleanup_policy(config.cleanup, filesystem_size(data_dir))
    if policy is not None:
        # Uploads are expired by the API, which knows which ones are in use.
        cleaner = StoreCleaner(store, cache=policy, downloads=policy, uploads=None)
        services.append(CleanupService(config.cleanup.interval, cleaner, reactor, pool))
    site = Site(tls.guard(api.resource(), registry=True))  # type: ignore[no-untyped-call]
    site.displayTracebacks = False
    endpoint = serverFromString(reactor, listen or config.server.listen)  # type: ignore[no-untyped-call]
    endpoint = tls.server_endpoint(endpoint, reactor)
    services.append(tls.expiry_monitor(reactor, api.metrics.registry))
    services.append(StreamServerEndpointService(endpoint, refuse_tls(site)))  # type: ignore[no-untyped-call]
    services.append(_OnStop(http.close))

    tree = ProxyService(api, store, origin_members)
    for service in services:
        service.setServiceParent(tree)  # type: ignore[no-untyped-call]
    return tree


def makeService(options: usage.Options, reactor: Any = None) -> MultiService:
    """The twistd entry point: a proxy for the parsed ``options``."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options.get("proxy_config") or load_config("proxy", options["config"])
    return build_proxy(config, reactor, options["listen"])
