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
from typing import Final

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from kraken.api.proxy import PROXY_ERRORS, ProxyAPI, ProxyMetrics
from kraken.clients.buildindex import BuildIndexClient
from kraken.clients.origin import OriginClient, OriginClusterClient
from kraken.cluster import Membership, NoHealthFilter, PassiveHealthFilter
from kraken.config import ProxyConfig
from kraken.http.client import NO_RETRY, HTTPClientFactory
from kraken.http.dependencies import Dependencies
from kraken.http.errors import render_registry_json
from kraken.io.reactor import IDaemonReactor
from kraken.io.runner import threadpool_runner
from kraken.metrics import runtime_metrics
from kraken.services.parts import (
    LISTEN_OPTION,
    CleanupService,
    DaemonOptions,
    OnStop,
    ThreadPoolService,
    active_membership,
    cleanup_policy,
    daemon_config,
    filesystem_size,
    head_checks,
    host_list_from_config,
    http_site,
    named,
    tls_listener,
    twistd_tree,
    with_children,
)
from kraken.store import BlobStore, StoreCleaner
from kraken.tls import ClusterTLS

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


class Options(DaemonOptions):
    """Command line of ``twistd kraken-proxy``."""

    daemon = "proxy"
    optParameters = [LISTEN_OPTION]


class ProxyService(MultiService):
    """The proxy's service tree; its parts are exposed for tests and embedding."""

    def __init__(self, api: ProxyAPI, store: BlobStore, origins: Membership) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.api = api
        self.store = store
        self.origins = origins


def _origin_readiness(origins: Membership) -> Deferred[None]:
    """Ready when the origin ring's health checks found at least one origin answering."""
    if not origins.healthy:
        return fail(RuntimeError("no origin answers its health check"))
    return succeed(None)


def build_proxy(
    config: ProxyConfig,
    reactor: IDaemonReactor,
    listen: str | None = None,
    *,
    io_threads: int = IO_THREADS,
) -> ProxyService:
    """The proxy's service tree for ``config`` (``listen`` overrides ``server.listen``)."""
    pool = ThreadPool(2, io_threads, "kraken-proxy-io")
    run = threadpool_runner(reactor, pool)
    data_dir = str(config.data_dir)
    os.makedirs(data_dir, exist_ok=True)  # blocking, start-up only
    store = BlobStore(os.path.join(data_dir, "store"), reactor)

    tls = ClusterTLS.from_config(config.tls)  # blocking, at start-up only
    http = HTTPClientFactory(reactor, tls=tls.client_policy())
    origin_members = active_membership(
        config.origin.hosts, config.origin.healthcheck, http.client(retry=NO_RETRY), reactor
    )
    origins = OriginClusterClient(
        OriginClient(http.client(), reactor, chunk_size=config.origin.upload_chunk_size),
        origin_members.usable,
        refresh=origin_members.refresh,
    )
    bi_members = Membership(
        host_list_from_config(config.build_index.hosts, reactor),
        NoHealthFilter(),
        reactor,
        interval=config.build_index.healthcheck.interval,
    )
    tags = BuildIndexClient(
        http.client(retry=NO_RETRY), lambda: bi_members.members, PassiveHealthFilter(reactor)
    )
    metrics = ProxyMetrics()
    dependencies = Dependencies(
        (
            ("origin", lambda: _origin_readiness(origin_members)),
            ("build-index", tags.readiness),
        ),
        metrics.registry,
        reactor,
    )
    api = ProxyAPI(
        store,
        run,
        origins,
        tags,
        reactor,
        prefetch_min_size=config.prefetch.min_blob_size,
        prefetch_max_size=config.prefetch.max_blob_size,
        upload_timeout=config.uploads.idle_timeout,
        max_uploads=config.uploads.max_open,
        delete_enabled=config.delete_enabled,
        dependencies=dependencies,
        metrics=metrics,
    )

    services: list[Service] = [ThreadPoolService(pool), origin_members, bi_members]
    expiry = TimerService(UPLOAD_EXPIRY_INTERVAL, api.expire_uploads)  # type: ignore[no-untyped-call]
    expiry.clock = reactor
    services.append(expiry)
    services.append(dependencies.service())
    policy = cleanup_policy(config.cleanup, filesystem_size(data_dir))
    if policy is not None:
        # Uploads are expired by the API, which knows which ones are in use.
        cleaner = StoreCleaner(store, cache=policy, downloads=policy, uploads=None)
        services.append(CleanupService(config.cleanup.interval, cleaner, reactor, run))
    site = http_site(
        tls.guard(api.resource(), registry=True),
        reactor,
        config.http,
        gate=api.gate(head_checks(tls.head_check(registry=True))),
        errors=PROXY_ERRORS,
        renderer=render_registry_json,
    )
    services.append(tls.expiry_monitor(reactor, api.metrics.registry))
    services.append(runtime_metrics(reactor, api.metrics.registry))
    # A TLS hello on the plain port gets a 400 at once (kraken.http.server).
    services.append(
        named("server", tls_listener(reactor, tls, listen or config.server.listen, site))
    )
    services.append(OnStop(http.close))

    return with_children(ProxyService(api, store, origin_members), services)


def makeService(options: usage.Options, reactor: IReactorCore | None = None) -> MultiService:
    """The twistd entry point: a proxy for the parsed ``options``."""
    config = daemon_config(options, "proxy")
    return twistd_tree(reactor, lambda running: build_proxy(config, running, options["listen"]))
