"""
The parts every daemon's service tree is built from.

Each daemon module (:mod:`kraken.services.tracker`, :mod:`~kraken.services.origin`,
:mod:`~kraken.services.build_index`, :mod:`~kraken.services.proxy`,
:mod:`~kraken.services.agent`) wires its own collaborators; what they wire the same way
lives here: the command line that loads and checks a configuration
(:class:`DaemonOptions`), small services that start or stop one collaborator
(:class:`OnStop`, :class:`ThreadPoolService`, :class:`PeerNodeService`,
:class:`CleanupService`), memberships built from host-list and health-check sections
(:func:`host_list_from_config`, :func:`active_membership`), the I/O thread pool a tree owns
(:func:`owned_thread_pool`), and the TLS-aware HTTP listener (:func:`tls_listener`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from kraken.backends.threads import BlockingRunner, threadpool_runner
from kraken.cluster import (
    ActiveHealthFilter,
    DNSHostList,
    HTTPHealthProbe,
    IHealthFilter,
    IHostList,
    Membership,
    NoHealthFilter,
    StaticHostList,
    name_resolver_lookup,
    parse_host_port,
)
from kraken.config import load_config
from kraken.config.sections import (
    ActiveHealthConfig,
    AdvertisedListenConfig,
    CleanupConfig,
    HostListConfig,
)
from kraken.config.structure import ConfigError
from kraken.config.values import parse_endpoint
from kraken.core import Digest
from kraken.http.client import KrakenHTTPClient
from kraken.protocols.peer import PeerNode
from kraken.store import CleanupPolicy, StoreCleaner
from kraken.store.layout import CACHE, DOWNLOAD
from kraken.tls import ClusterTLS, check_tls_files

__all__ = [
    "LISTEN_OPTION",
    "CleanupService",
    "DaemonOptions",
    "OnStop",
    "PeerNodeService",
    "ThreadPoolService",
    "active_health_filter",
    "active_membership",
    "advertised_address",
    "cleanup_policy",
    "daemon_config",
    "filesystem_size",
    "host_list_from_config",
    "owned_thread_pool",
    "running_reactor",
    "tls_listener",
]

#: The ``--listen`` option of the daemons that serve one HTTP API.
LISTEN_OPTION = ["listen", None, None, "Override server.listen (a Twisted server endpoint string)."]


def _options_key(daemon: str) -> str:
    """Where :class:`DaemonOptions` keeps the loaded configuration of ``daemon``."""
    return daemon.replace("-", "_") + "_config"


class DaemonOptions(usage.Options):
    """
    The ``--config`` option of ``twistd kraken-<daemon>``, loaded and checked on parsing.

    Subclasses name their ``daemon`` (the kind :func:`kraken.config.load_config` takes)
    and add their own ``optParameters`` (twistd accumulates them after ``--config``);
    ``serve_tls`` is False for a daemon whose ``tls:`` section is client-side only.
    The configuration is kept under ``"<daemon>_config"`` (dashes as underscores).
    """

    daemon: ClassVar[str]
    serve_tls: ClassVar[bool] = True

    optParameters = [
        ["config", "c", None, "YAML configuration file (default: single-host defaults)."],
    ]

    def postOptions(self) -> None:
        """Load and check the configuration now, so that a bad one stops twistd with a message."""
        key = _options_key(self.daemon)
        try:
            self[key] = load_config(self.daemon, self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        check_tls_files(self[key].tls, serve=self.serve_tls)  # a bad file: one line naming it


def daemon_config(options: usage.Options, daemon: str) -> Any:
    """The configuration :class:`DaemonOptions` loaded, else loaded now from ``--config``."""
    return options.get(_options_key(daemon)) or load_config(daemon, options["config"])


def running_reactor(reactor: Any) -> Any:
    """``reactor``, or the global reactor when it is None (twistd's ``makeService``)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor


class OnStop(Service):
    """Runs a cleanup (closing a pool, backends, connections) when the tree stops."""

    def __init__(self, cleanup: Callable[[], object]) -> None:
        self.cleanup = cleanup

    def stopService(self) -> Deferred[Any]:
        """Run the cleanup; the tree waits for it."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        return maybeDeferred(self.cleanup)


class ThreadPoolService(Service):
    """Starts a thread pool with the tree and stops it (joining its threads) last."""

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        """Start the threads."""
        Service.startService(self)  # type: ignore[no-untyped-call]
        self.pool.start()

    def stopService(self) -> None:
        """Stop the threads (waits for running work)."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        self.pool.stop()


class PeerNodeService(Service):
    """Runs the P2P engine's timer while the tree runs; stopping closes every connection."""

    def __init__(self, node: PeerNode) -> None:
        self.node = node

    def startService(self) -> None:
        """Start the engine's ticks."""
        Service.startService(self)  # type: ignore[no-untyped-call]
        self.node.start()

    def stopService(self) -> Deferred[Any]:
        """Fail waiting downloads and close connections; fires when they are gone."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        return self.node.stop()


class CleanupService(TimerService):
    """Runs :meth:`StoreCleaner.run_cleanup` every ``interval`` seconds in the I/O pool.

    ``on_removed`` is called on the reactor thread with the digests of the cached
    blobs and downloads a pass removed (the agent's P2P engine forgets them).
    """

    log = Logger()

    def __init__(
        self,
        interval: float,
        cleaner: StoreCleaner,
        reactor: Any,
        pool: ThreadPool,
        *,
        on_removed: Callable[[set[Digest]], object] | None = None,
    ):
        super().__init__(interval, self.run_once)  # type: ignore[no-untyped-call]
        self.cleaner = cleaner
        self.reactor = reactor
        self.pool = pool
        self.clock = reactor
        self.on_removed = on_removed

    def run_once(self) -> Deferred[None]:
        """One cleanup pass off the reactor thread; errors are logged, never raised."""

        def report(result: Any) -> None:
            if result.removed:
                self.log.info(
                    "cleanup removed {count} blobs ({bytes} bytes)",
                    count=len(result.removed),
                    bytes=sum(r.size for r in result.removed),
                )
                if self.on_removed is not None:
                    removed = result.removed_digests(CACHE) | result.removed_digests(DOWNLOAD)
                    self.on_removed(removed)

        d: Deferred[Any] = deferToThreadPool(self.reactor, self.pool, self.cleaner.run_cleanup)
        return d.addCallbacks(report, lambda f: self.log.failure("store cleanup failed", f))


def filesystem_size(path: str) -> int:
    """Bytes of the filesystem holding ``path`` (``statvfs``; blocking, start-up only)."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def cleanup_policy(config: CleanupConfig, fs_size: int) -> CleanupPolicy | None:
    """The store policy for ``config`` (None when cleanup is off); 0 durations mean never.

    Percent watermarks are taken of ``fs_size`` bytes.
    """
    if not config.enabled:
        return None
    high = None if config.high_watermark is None else config.high_watermark.resolve(fs_size)
    low = None if config.low_watermark is None else config.low_watermark.resolve(fs_size)
    return CleanupPolicy(
        tti=config.tti or None, ttl=config.ttl or None, high_watermark=high, low_watermark=low
    )


def host_list_from_config(hosts: HostListConfig, reactor: Any) -> IHostList:
    """The static list of ``hosts``, or its DNS name resolved through ``reactor``."""
    if hosts.static is not None:
        return StaticHostList(hosts.static)
    assert hosts.dns is not None, "checked by the config"
    name, port = parse_host_port(hosts.dns)
    return DNSHostList(name, port, name_resolver_lookup(reactor.nameResolver), reactor, hosts.ttl)


def active_health_filter(
    check: ActiveHealthConfig, client: KrakenHTTPClient, reactor: Any
) -> IHealthFilter:
    """``GET /health`` through ``client`` as ``check`` says; every host healthy when it is off."""
    if not check.enabled:
        return NoHealthFilter()
    probe = HTTPHealthProbe(client, check.timeout)
    return ActiveHealthFilter(probe, reactor, check.fails, check.passes, check.timeout)


def active_membership(
    hosts: HostListConfig, check: ActiveHealthConfig, client: KrakenHTTPClient, reactor: Any
) -> Membership:
    """The members of ``hosts``, checked by ``client`` every ``check.interval`` (a service)."""
    return Membership(
        host_list_from_config(hosts, reactor),
        active_health_filter(check, client, reactor),
        reactor,
        interval=check.interval,
    )


def owned_thread_pool(
    reactor: Any, run: BlockingRunner | None, pool: ThreadPool | None, threads: int, name: str
) -> tuple[BlockingRunner, ThreadPool | None]:
    """
    The runner of blocking calls, and the pool the tree must start and join (if any).

    A given ``run`` is used as it is (tests: no pool); otherwise ``pool``, or a new pool of
    up to ``threads`` threads called ``name``, runs the calls.
    """
    if run is not None:
        return run, None
    if pool is None:
        pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
    return threadpool_runner(reactor, pool), pool


def advertised_address(server: AdvertisedListenConfig, listen: str | None) -> str:
    """
    The ``host:port`` a server tells others: ``server.advertised()``, unless ``listen``
    overrides ``server.listen`` and ``server.advertise`` is unset, in which case it is taken
    from ``listen`` where that names both.
    """
    address = server.advertised()
    if listen is not None and server.advertise is None:
        host_port = parse_endpoint(listen).host_port()
        if host_port is not None:
            address = f"{host_port[0]}:{host_port[1]}"
    return address


def tls_listener(
    reactor: Any, tls: ClusterTLS, description: str, factory: Any
) -> StreamServerEndpointService:
    """A service listening on the endpoint ``description``, under TLS when ``tls`` serves."""
    endpoint = serverFromString(reactor, description)  # type: ignore[no-untyped-call]
    endpoint = tls.server_endpoint(endpoint, reactor)
    return StreamServerEndpointService(endpoint, factory)  # type: ignore[no-untyped-call]
