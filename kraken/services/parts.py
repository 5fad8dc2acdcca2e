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
(:func:`owned_thread_pool`), and the HTTP listeners (:func:`tls_listener`,
:func:`closing_listener`): a :class:`ClosingListener` that, when stopped, closes its port
and then every connection it accepted, kept-alive ones included.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Final, TypeVar

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorFromThreads,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

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
    HTTPServerConfig,
    RetryQueueConfig,
)
from kraken.config.structure import ConfigError
from kraken.config.values import parse_endpoint
from kraken.core import Digest
from kraken.http.client import KrakenHTTPClient
from kraken.http.errors import CORE_ERRORS, ErrorMap, ErrorRenderer, render_text
from kraken.http.server import DEFAULT_LIMITS, KrakenSite, RequestGate, ServerLimits
from kraken.io.reactor import IClientReactor, IDaemonReactor, daemon_reactor
from kraken.io.runner import BlockingRunner, threadpool_runner
from kraken.logs import LOG_LEVEL_HELP, apply_log_level
from kraken.persistedretry import (
    Backoff,
    IQueueMetrics,
    ITaskExecutor,
    RetryQueue,
    SQLiteTaskStore,
)
from kraken.protocols.peer import PeerNode
from kraken.store import CleanupPolicy, StoreCleaner
from kraken.store.layout import CACHE, DOWNLOAD
from kraken.tls import ClusterTLS, check_tls_files

__all__ = [
    "LISTEN_OPTION",
    "OVERLOADED_ANSWER",
    "CleanupService",
    "ClosingListener",
    "ConnectionsFactory",
    "DaemonOptions",
    "ListenFailed",
    "ListenerWatch",
    "OnStop",
    "PeerNodeService",
    "PoolOwningService",
    "ThreadPoolService",
    "active_health_filter",
    "active_membership",
    "advertised_address",
    "cleanup_policy",
    "closing_listener",
    "daemon_config",
    "exit_on_listen_failure",
    "filesystem_size",
    "head_checks",
    "host_list_from_config",
    "http_site",
    "lead_with_error",
    "named",
    "owned_thread_pool",
    "retry_queue",
    "server_limits",
    "stop_and_exit",
    "tls_listener",
    "twistd_tree",
    "with_children",
]

_S = TypeVar("_S", bound=Service)
_T = TypeVar("_T", bound=MultiService)

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
        ["log-level", None, None, LOG_LEVEL_HELP],
    ]

    def postOptions(self) -> None:
        """Load and check the configuration now, so that a bad one stops twistd with a message."""
        key = _options_key(self.daemon)
        try:
            apply_log_level(self, self["log-level"])
            try:
                self[key] = load_config(self.daemon, self["config"])
            except ConfigError as e:
                raise usage.UsageError(str(e)) from None
            check_tls_files(self[key].tls, serve=self.serve_tls)  # a bad file: one line naming it
        except usage.UsageError as e:
            lead_with_error(self, e)
            raise


def lead_with_error(options: usage.Options, error: usage.UsageError) -> None:
    """Under twistd, print ``error`` alone on stderr and exit 1; otherwise return.

    twistd answers a usage error with the option list first and the error last, where a
    mistake in a configuration file is easy to miss.  ``options.parent`` is set only when
    twistd parses the daemon as its subcommand; other callers (tests, embedding) get the
    :class:`~twisted.python.usage.UsageError` their caller re-raises.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return
    print(f"{parent.subCommand}: {error}", file=sys.stderr)
    raise SystemExit(1)


def daemon_config(options: usage.Options, daemon: str) -> Any:
    """The configuration :class:`DaemonOptions` loaded, else loaded now from ``--config``."""
    return options.get(_options_key(daemon)) or load_config(daemon, options["config"])


class OnStop(Service):
    """Runs a cleanup (closing a pool, backends, connections) when the tree stops."""

    def __init__(self, cleanup: Callable[[], object]) -> None:
        self.cleanup = cleanup

    def stopService(self) -> Deferred[Any]:
        """Run the cleanup; the tree waits for it."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        return maybeDeferred(self.cleanup)


class PoolOwningService(MultiService):
    """
    A daemon's service tree that may own the thread pool its parts run blocking calls in.

    ``pool`` (None when the tree was given a runner instead, see :func:`owned_thread_pool`)
    starts before the children and is joined once they have all stopped.
    """

    pool: ThreadPool | None = None

    def startService(self) -> None:
        """Start the thread pool (if the tree owns one), then the services."""
        if self.pool is not None:
            self.pool.start()
        super().startService()  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        """Stop the services, then join the thread pool once they have all stopped."""
        stopped: Deferred[None] = super().stopService()  # type: ignore[no-untyped-call]
        return stopped.addBoth(self.join_pool)

    def join_pool(self, result: object) -> object:
        """Stop the owned thread pool (waits for running work); pass ``result`` on."""
        if self.pool is not None:
            self.pool.stop()
        return result


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
    """Runs :meth:`StoreCleaner.run_cleanup` every ``interval`` seconds through ``run``.

    ``on_removed`` is called on the reactor thread with the digests of the cached
    blobs and downloads a pass removed (the agent's P2P engine forgets them).
    """

    log = Logger()

    def __init__(
        self,
        interval: float,
        cleaner: StoreCleaner,
        clock: IReactorTime,
        run: BlockingRunner,
        *,
        on_removed: Callable[[set[Digest]], object] | None = None,
    ):
        super().__init__(interval, self.run_once)  # type: ignore[no-untyped-call]
        self.cleaner = cleaner
        self.run = run
        self.clock = clock
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

        d: Deferred[Any] = self.run(self.cleaner.run_cleanup)
        return d.addCallbacks(report, lambda f: self.log.failure("store cleanup failed", f))


def retry_queue(  # noqa: PLR0917 - the queue's parts
    config: RetryQueueConfig,
    path: str,
    kind: str,
    executor: ITaskExecutor,
    reactor: IDaemonReactor,
    metrics: IQueueMetrics,
) -> RetryQueue:
    """A durable queue of ``kind`` tasks in the SQLite file ``path``, run by ``executor``
    with the workers and retry backoff of ``config``."""
    return RetryQueue(
        SQLiteTaskStore(path, reactor),
        {kind: executor},
        reactor,
        max_in_flight=config.workers,
        backoff=Backoff(
            initial=config.retry_interval,
            multiplier=config.retry_multiplier,
            maximum=max(config.max_retry_interval, config.retry_interval),
        ),
        metrics=metrics,
    )


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


def host_list_from_config(hosts: HostListConfig, reactor: IClientReactor) -> IHostList:
    """The static list of ``hosts``, or its DNS name resolved through ``reactor``."""
    if hosts.static is not None:
        return StaticHostList(hosts.static)
    assert hosts.dns is not None, "checked by the config"
    name, port = parse_host_port(hosts.dns)
    return DNSHostList(name, port, name_resolver_lookup(reactor.nameResolver), reactor, hosts.ttl)


def active_health_filter(
    check: ActiveHealthConfig, client: KrakenHTTPClient, clock: IReactorTime
) -> IHealthFilter:
    """``GET /health`` through ``client`` as ``check`` says; every host healthy when it is off."""
    if not check.enabled:
        return NoHealthFilter()
    probe = HTTPHealthProbe(client, check.timeout)
    return ActiveHealthFilter(probe, clock, check.fails, check.passes, check.timeout)


def active_membership(
    hosts: HostListConfig,
    check: ActiveHealthConfig,
    client: KrakenHTTPClient,
    reactor: IClientReactor,
) -> Membership:
    """The members of ``hosts``, checked by ``client`` every ``check.interval`` (a service)."""
    return Membership(
        host_list_from_config(hosts, reactor),
        active_health_filter(check, client, reactor),
        reactor,
        interval=check.interval,
    )


def owned_thread_pool(
    reactor: IReactorFromThreads,
    run: BlockingRunner | None,
    pool: ThreadPool | None,
    threads: int,
    name: str,
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


class _TrackedConnection(ProtocolWrapper):
    """One accepted connection; tells its :class:`ConnectionsFactory` once it is gone."""

    factory: ConnectionsFactory

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        """Let the wrapped protocol see the loss, then count the connection gone."""
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        self.factory.connection_gone()


class _Overloaded(Protocol):
    """Tells a connection beyond the listener's cap to come back later, and closes it."""

    def connectionMade(self) -> None:
        """Answer 503 at once."""
        assert self.transport is not None
        self.transport.write(OVERLOADED_ANSWER)
        self.transport.loseConnection()


#: What a connection beyond ``max_connections`` gets before it is closed.
OVERLOADED_ANSWER: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 36\r\n"
    b"Connection: close\r\n\r\ntoo many open connections, try again\n"
)


class ConnectionsFactory(WrappingFactory):
    """
    A server factory (an HTTP ``Site``) that keeps its open connections, to close them.

    ``protocols`` holds the wrappers of the connections made and not yet lost; the
    wrapped factory's protocols see the wrapper as their transport (every transport
    call and attribute is passed on).  With ``max_connections``, a connection beyond
    that many open ones gets a ``503`` and is closed without reaching the site.
    """

    protocol = _TrackedConnection
    log = Logger()

    def __init__(self, wrapped: IProtocolFactory, max_connections: int | None = None) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self._gone: list[Deferred[None]] = []
        self.max_connections = max_connections
        self.refused = 0

    def buildProtocol(self, addr: Any) -> Any:
        """A tracked connection, or a 503 when ``max_connections`` are open."""
        if self.max_connections is not None and len(self.protocols) >= self.max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                self.log.warn(
                    "{count} connections refused: {max} are open (http.max_connections)",
                    count=self.refused,
                    max=self.max_connections,
                )
            overloaded = _Overloaded()
            overloaded.factory = self
            return overloaded
        return super().buildProtocol(addr)

    def connection_gone(self) -> None:
        """Called by a connection once lost: wake :meth:`close_connections` when none is left."""
        if not self.protocols:
            waiters, self._gone = self._gone, []
            for waiter in waiters:
                waiter.callback(None)

    def close_connections(self) -> Deferred[None]:
        """Abort every open connection (idle or not); fires once all of them are lost."""
        if not self.protocols:
            return succeed(None)
        gone: Deferred[None] = Deferred()
        self._gone.append(gone)
        for connection in list(self.protocols):
            if connection.transport is not None:
                connection.transport.abortConnection()
        return gone


@implementer(IStreamServerEndpoint)
class _RecordingEndpoint:
    """An endpoint that tells its :class:`ClosingListener` the port it listens on."""

    def __init__(self, endpoint: IStreamServerEndpoint, listener: ClosingListener) -> None:
        self.endpoint = endpoint
        self.listener = listener

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen through the wrapped endpoint; record the port."""

        def record(port: IListeningPort) -> IListeningPort:
            self.listener.port = port
            return port

        listening: Deferred[IListeningPort] = self.endpoint.listen(factory)
        return listening.addCallback(record)


class ListenFailed(Exception):
    """A listener of the daemon could not start (the port is taken, no permission, ...)."""

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(f"cannot listen on {description}: {reason}")
        self.description = description
        self.reason = reason


@implementer(IStreamServerEndpoint)
class _WatchedEndpoint:
    """An endpoint whose ``listen`` outcome is reported to a :class:`ListenerWatch`."""

    def __init__(self, endpoint: IStreamServerEndpoint, description: str, watch: ListenerWatch):
        self.endpoint = endpoint
        self.description = description
        self.watch = watch
        self.listening: Deferred[None] = Deferred()

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen; a failure is reported (once, one line) instead of a logged traceback
        (the Deferred then fires with None: the service has no port to close)."""
        d: Deferred[Any] = maybeDeferred(self.endpoint.listen, factory)

        def up(port: IListeningPort) -> IListeningPort:
            self.listening.callback(None)
            return port

        def failed(failure: Failure) -> Any:
            reason = failure.getErrorMessage()
            socket_error = getattr(failure.value, "socketError", None)
            if socket_error is not None:
                reason = str(socket_error)
            error = ListenFailed(self.description, reason)
            self.listening.errback(error)
            self.watch.failed(error)

        result: Deferred[IListeningPort] = d.addCallbacks(up, failed)
        return result


def _endpoint_description(endpoint: Any) -> str:
    port = getattr(endpoint, "_port", None)
    interface = getattr(endpoint, "_interface", None)
    if port is not None:
        return f"tcp:{port}" + (f":interface={interface}" if interface else "")
    wrapped = getattr(endpoint, "wrapped", None) or getattr(endpoint, "endpoint", None)
    if wrapped is not None:
        return _endpoint_description(wrapped)
    return repr(endpoint)


class ListenerWatch:
    """
    Watches every listener of a service tree: :meth:`ready` fires once all of them listen;
    the first that cannot start is logged as one line and passed to ``on_failure``.

    Daemons run by twistd use :func:`exit_on_listen_failure`, whose ``on_failure`` ends
    the process with status 1 (so systemd or Kubernetes restarts it); an embedding
    application passes its own.
    """

    log = Logger()

    def __init__(self, tree: MultiService, on_failure: Callable[[ListenFailed], object]) -> None:
        self.on_failure = on_failure
        self._failed = False
        self.endpoints: list[_WatchedEndpoint] = []
        for service in _walk(tree):
            if isinstance(service, StreamServerEndpointService):
                endpoint = service.endpoint
                if isinstance(endpoint, _RecordingEndpoint):
                    inner = endpoint.endpoint
                    watched = _WatchedEndpoint(inner, _endpoint_description(inner), self)
                    endpoint.endpoint = watched
                else:
                    watched = _WatchedEndpoint(endpoint, _endpoint_description(endpoint), self)
                    service.endpoint = watched
                self.endpoints.append(watched)

    def ready(self) -> Deferred[None]:
        """Fires when every listener listens; fails with the first :class:`ListenFailed`."""
        d: Deferred[Any] = gatherResults([e.listening for e in self.endpoints], consumeErrors=True)
        return d.addCallbacks(lambda _: None, lambda f: f.value.subFailure)

    def failed(self, error: ListenFailed) -> None:
        """Report the first failure."""
        if self._failed:
            return
        self._failed = True
        self.log.critical("{error}", error=str(error))
        self.on_failure(error)


def _walk(service: Any) -> Iterator[Any]:
    yield service
    for child in list(getattr(service, "services", ()) or ()):
        yield from _walk(child)


def stop_and_exit(reactor: IReactorCore) -> None:
    """Stop ``reactor`` (the services stop as usual), then end the process with status 1."""

    def exit_now() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    reactor.addSystemEventTrigger("after", "shutdown", exit_now)
    reactor.callWhenRunning(reactor.stop)


def exit_on_listen_failure(tree: MultiService, reactor: IReactorCore) -> ListenerWatch:
    """A :class:`ListenerWatch` of ``tree`` that stops ``reactor`` and exits with status 1
    when a listener cannot start (twistd has no exit status of its own for that)."""
    return ListenerWatch(tree, lambda error: stop_and_exit(reactor))


def twistd_tree(
    reactor: IReactorCore | None, build: Callable[[IDaemonReactor], MultiService]
) -> MultiService:
    """What a daemon's ``makeService`` answers: the tree ``build`` makes in ``reactor`` (the
    global one when None), which ends the process when a listener cannot start."""
    running = daemon_reactor(reactor)
    tree = build(running)
    exit_on_listen_failure(tree, running)
    return tree


class ClosingListener(StreamServerEndpointService):
    """
    Serves ``factory`` on ``endpoint``; stopping closes the port, then every open connection.

    A bare ``StreamServerEndpointService`` only closes the port: a client's kept-alive
    HTTP connection would go on being served by the stopped daemon, whose thread pool,
    queues and clients no longer answer, so its requests hang until the client gives up.
    ``connections`` is the :class:`ConnectionsFactory` the port is given; ``port`` is
    the listening port once listening (its ``getHost()`` tells a port 0's number).
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        max_connections: int | None = None,
    ) -> None:
        self.connections = ConnectionsFactory(factory, max_connections)
        self.port: IListeningPort | None = None
        super().__init__(_RecordingEndpoint(endpoint, self), self.connections)  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        """Stop listening (no new connection is accepted), then abort the open ones."""
        stopped: Deferred[Any] = maybeDeferred(super().stopService)

        def close(result: object) -> Deferred[Any]:
            return self.connections.close_connections().addCallback(lambda _: result)

        return stopped.addBoth(close)


def _max_connections(factory: Any) -> int | None:
    limits = getattr(factory, "limits", None)
    return limits.max_connections if isinstance(limits, ServerLimits) else None


def closing_listener(reactor: IDaemonReactor, description: str, factory: Any) -> ClosingListener:
    """A :class:`ClosingListener` of ``factory`` on the endpoint ``description`` (plain);
    a :class:`~kraken.http.server.KrakenSite`'s ``max_connections`` caps it."""
    endpoint = serverFromString(reactor, description)  # type: ignore[no-untyped-call]
    return ClosingListener(endpoint, factory, _max_connections(factory))


def tls_listener(
    reactor: IDaemonReactor, tls: ClusterTLS, description: str, factory: Any
) -> ClosingListener:
    """A :class:`ClosingListener` on the endpoint ``description``, under TLS when ``tls`` serves."""
    endpoint = serverFromString(reactor, description)  # type: ignore[no-untyped-call]
    endpoint = tls.server_endpoint(endpoint, reactor)
    return ClosingListener(endpoint, factory, _max_connections(factory))


def with_children(tree: _T, services: Iterable[Service]) -> _T:
    """``tree`` with ``services`` parented to it, in order: they start in that order and
    stop in the reverse one."""
    for service in services:
        service.setServiceParent(tree)  # type: ignore[no-untyped-call]
    return tree


def named(name: str, service: _S) -> _S:
    """``service``, named ``name`` in its tree: ``tree.getServiceNamed(name)`` finds it.

    Every listener of a daemon is named (``server``, ``registry``, ``peer``): that is how
    :mod:`kraken.embed` finds the listeners an embedding application takes over.
    """
    service.setName(name)  # type: ignore[no-untyped-call]
    return service


def head_checks(*checks: Callable[[Any], None] | None) -> list[Callable[[Any], None]]:
    """The gate checks that are set (e.g. :meth:`ClusterTLS.head_check`, None when off)."""
    return [check for check in checks if check is not None]


def server_limits(http: HTTPServerConfig, max_body: int = DEFAULT_LIMITS.max_body) -> ServerLimits:
    """The :class:`~kraken.http.server.ServerLimits` of a daemon's ``http:`` section."""
    return ServerLimits(
        header_timeout=http.header_timeout,
        idle_timeout=http.idle_timeout,
        max_connections=http.max_connections,
        max_body=max_body,
    )


def http_site(
    resource: Any,
    clock: IReactorTime,
    http: HTTPServerConfig,
    *,
    gate: RequestGate | None = None,
    errors: ErrorMap = CORE_ERRORS,
    renderer: ErrorRenderer = render_text,
    parse_forms: bool = True,
) -> KrakenSite:
    """A daemon's :class:`~kraken.http.server.KrakenSite` with the limits of its ``http:``."""
    return KrakenSite(
        resource,
        clock=clock,
        gate=gate,
        limits=server_limits(http),
        errors=errors,
        renderer=renderer,
        parse_forms=parse_forms,
    )
