"""
Kraken's daemons inside another Twisted application: the public embedding API.

:func:`build` makes any daemon (agent, origin, tracker, build-index, proxy) from a
configuration object, a mapping shaped like its YAML file, or a YAML file's path, in the
reactor it is given, and answers an :class:`EmbeddedDaemon`: the daemon's ``MultiService``
(parent it to the application's own, or :meth:`~EmbeddedDaemon.start` it), a
:meth:`~EmbeddedDaemon.ready` Deferred that fails with :class:`ListenFailed` when a listener
cannot start (where ``twistd`` would exit with status 1), and its listeners by name.
Each listener is either opened by the daemon on the endpoint its configuration names, or,
when named in ``mount``, left to the application, which gets its ``IResource``
(:meth:`~EmbeddedDaemon.resource`, for its own ``Site`` or Klein app) or its factory
(:meth:`~EmbeddedDaemon.factory`, a :class:`KrakenSite` for HTTP, to serve on an endpoint
of its own choice with :func:`serve_on`).

Everything named in ``__all__`` is public and versioned by :data:`API_VERSION`: a change
to any of it is recorded in ``CHANGELOG.md``, and a change that breaks a caller raises the
version.  Every other module of the package is private to Kraken and may change without
notice.  ``docs/embedding.md`` is the guide, with examples under ``docs/examples/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final, Literal, Protocol, cast, get_args, overload

from attrs import frozen
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import Request
from zope.interface import implementer

from kraken.config import (
    CONFIG_CLASSES,
    AgentConfig,
    AnyConfig,
    BuildIndexConfig,
    ConfigError,
    OriginConfig,
    ProxyConfig,
    TrackerConfig,
    load_config,
    parse_config,
)
from kraken.http.server import KrakenSite
from kraken.io.reactor import IDaemonReactor, daemon_reactor
from kraken.services.parts import ClosingListener, ListenerWatch, ListenFailed

__all__ = [
    "API_VERSION",
    "KINDS",
    "LISTENERS",
    "ConfigError",
    "DaemonKind",
    "EmbeddedDaemon",
    "KrakenSite",
    "ListenFailed",
    "Listener",
    "build",
    "keep_path",
    "load",
    "serve_on",
]

API_VERSION: Final = 1
"""The version of this API; raised by any change that breaks a caller (see CHANGELOG.md)."""

DaemonKind = Literal["agent", "origin", "tracker", "build-index", "proxy"]
"""The daemons that embed (the herd is a composition of them, not one more kind)."""

KINDS: Final[tuple[DaemonKind, ...]] = get_args(DaemonKind)

LISTENERS: Final[Mapping[DaemonKind, tuple[str, ...]]] = {
    "agent": ("registry", "server", "peer"),
    "origin": ("server", "peer"),
    "tracker": ("server",),
    "build-index": ("server",),
    "proxy": ("server",),
}
"""Each kind's listeners by name: ``registry`` (the agent's docker registry), ``server``
(the daemon's HTTP API) are HTTP; ``peer`` is the peer-to-peer protocol (not HTTP)."""

ConfigSource = AnyConfig | Mapping[str, Any] | str | os.PathLike[str] | None


@overload
def load(kind: Literal["agent"], source: ConfigSource = None) -> AgentConfig: ...
@overload
def load(kind: Literal["origin"], source: ConfigSource = None) -> OriginConfig: ...
@overload
def load(kind: Literal["tracker"], source: ConfigSource = None) -> TrackerConfig: ...
@overload
def load(kind: Literal["build-index"], source: ConfigSource = None) -> BuildIndexConfig: ...
@overload
def load(kind: Literal["proxy"], source: ConfigSource = None) -> ProxyConfig: ...
@overload
def load(kind: DaemonKind, source: ConfigSource = None) -> AnyConfig: ...
def load(kind: DaemonKind, source: ConfigSource = None) -> AnyConfig:
    """
    The checked configuration of a ``kind`` daemon.

    ``source`` is a configuration object (returned as it is, if of ``kind``), a mapping
    shaped like the daemon's YAML file, the path of such a file, or None for the
    single-host defaults.  Unknown keys and bad values raise :class:`ConfigError` naming
    each key (docs/configuration.md lists them all).
    """
    if kind not in LISTENERS:
        raise ValueError(f"unknown daemon kind {kind!r}: expected one of {', '.join(KINDS)}")
    expected = CONFIG_CLASSES[kind]
    if isinstance(source, expected):
        return cast("AnyConfig", source)
    if isinstance(source, Mapping):
        return parse_config(kind, dict(source))
    if source is None or isinstance(source, str | os.PathLike):
        return load_config(kind, source)
    raise TypeError(
        f"a {kind} configuration must be a {expected.__name__}, a mapping or a YAML file's "
        f"path, not {type(source).__name__}"
    )


def _builder(kind: DaemonKind) -> Callable[[Any, IDaemonReactor], MultiService]:
    """The function that builds ``kind``'s tree (imported only when needed)."""
    if kind == "agent":
        from kraken.services.agent import build_agent

        return build_agent
    if kind == "origin":
        from kraken.services.origin import build_origin

        return build_origin
    if kind == "tracker":
        from kraken.services.tracker import build_tracker

        return build_tracker
    if kind == "build-index":
        from kraken.services.build_index import build_build_index

        return build_build_index
    from kraken.services.proxy import build_proxy

    return build_proxy


class _Listening(Protocol):
    """A listener that keeps its port once listening (None before, or if it failed)."""

    port: IListeningPort | None


@implementer(IStreamServerEndpoint)
class _PortRecorder:
    """An endpoint that keeps the port it listens on (``endpoint``: what it wraps)."""

    def __init__(self, endpoint: IStreamServerEndpoint) -> None:
        self.endpoint = endpoint
        self.port: IListeningPort | None = None

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen through the wrapped endpoint; keep the port."""

        def record(port: IListeningPort) -> IListeningPort:
            self.port = port
            return port

        listening: Deferred[IListeningPort] = self.endpoint.listen(factory)
        return listening.addCallback(record)


class _Outcome:
    """The one outcome of the listeners' start, handed to every :meth:`wait` (each a new
    Deferred, so one caller's errback never consumes another's failure)."""

    def __init__(self, started: Deferred[None]) -> None:
        self._result: Failure | bool | None = False  # False: not known yet
        self._waiters: list[Deferred[None]] = []
        started.addBoth(self._settle)

    def _settle(self, result: Failure | None) -> None:
        self._result = result
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._fire(waiter)

    def _fire(self, waiter: Deferred[None]) -> None:
        if isinstance(self._result, Failure):
            waiter.errback(self._result)
        else:
            waiter.callback(None)

    def wait(self) -> Deferred[None]:
        """A Deferred that fires with the outcome."""
        waiter: Deferred[None] = Deferred()
        if self._result is False:
            self._waiters.append(waiter)
        else:
            self._fire(waiter)
        return waiter


@frozen
class EmbeddedDaemon:
    """
    One daemon built by :func:`build`: its service tree, listeners and configuration.

    ``service`` is the daemon's whole ``MultiService``: parent it to the application's
    own (``daemon.service.setServiceParent(application)``) or use :meth:`start` and
    :meth:`stop`.  Stopping it closes every port it opened and every connection those
    ports accepted, joins its thread pools and closes its files and timers.
    """

    kind: DaemonKind
    """What the daemon is."""
    config: Any
    """Its checked configuration (an ``AgentConfig``, ``TrackerConfig``, ...)."""
    service: MultiService
    """The daemon's service tree."""
    mounted: frozenset[str]
    """The listeners the application serves itself (the daemon opens the others)."""
    _factories: Mapping[str, IProtocolFactory]
    _ports: Mapping[str, _Listening]
    _outcome: _Outcome

    def ready(self) -> Deferred[None]:
        """
        Fires once every listener the daemon opens listens; fails with :class:`ListenFailed`
        (naming the endpoint and the reason) when one cannot.  The daemon is not stopped
        for it: stop it (or remove it from its parent) to release what it took.
        """
        return self._outcome.wait()

    def start(self) -> Deferred[None]:
        """
        Start the daemon (not parented to a running service); fires once it listens.

        If a listener cannot start, the daemon is stopped again and the Deferred fails with
        :class:`ListenFailed` once everything it took is released.
        """
        self.service.startService()  # type: ignore[no-untyped-call]

        def failed(failure: Failure) -> Deferred[Any]:
            return self.stop().addCallback(lambda _: failure)

        return self.ready().addErrback(failed)

    def stop(self) -> Deferred[None]:
        """Stop the daemon; fires once its ports, connections, threads and files are closed."""
        stopped: Deferred[Any] = maybeDeferred(self.service.stopService)
        return stopped.addCallback(lambda _: None)

    def factory(self, name: str) -> IProtocolFactory:
        """
        The protocol factory of listener ``name``: for an HTTP listener the daemon's
        :class:`KrakenSite` (header and idle timeouts, refusals decided on a request's head,
        streamed uploads), to serve on an endpoint of the application's choosing with
        :func:`serve_on`; for ``peer``, the peer protocol's factory.
        """
        try:
            return self._factories[name]
        except KeyError:
            raise KeyError(self._unknown(name)) from None

    def resource(self, name: str) -> IResource:
        """The ``IResource`` of HTTP listener ``name``, to mount in the application's own
        ``Site`` or Klein app (see :func:`keep_path` for the agent's registry)."""
        factory = self.factory(name)
        if not isinstance(factory, KrakenSite):
            raise KeyError(f"the {self.kind}'s {name} listener is not HTTP: it has no resource")
        resource: IResource = factory.resource
        return resource

    def address(self, name: str) -> IAddress:
        """
        The address listener ``name`` listens on (after :meth:`ready`): the way to learn a
        port 0's number.  Raises :class:`KeyError` for a mounted or unknown listener and
        :class:`RuntimeError` before it listens.
        """
        if name not in self._ports:
            reason = "is mounted by the application" if name in self.mounted else None
            raise KeyError(
                f"the {self.kind}'s {name} listener {reason}" if reason else self._unknown(name)
            )
        port = self._ports[name].port
        if port is None:
            raise RuntimeError(f"the {self.kind}'s {name} listener is not listening")
        return port.getHost()

    def _unknown(self, name: str) -> str:
        known = ", ".join(LISTENERS[self.kind])
        return f"a {self.kind} has no listener {name!r} (it has: {known})"


def _ignore(_: ListenFailed) -> None:
    """An embedded daemon reports a listener failure through ``ready()``, never by exiting."""


def build(
    kind: DaemonKind,
    config: ConfigSource,
    reactor: IReactorCore,
    *,
    mount: Collection[str] = (),
) -> EmbeddedDaemon:
    """
    A ``kind`` daemon for ``config`` (see :func:`load`), running in ``reactor``.

    Nothing is started yet.  The listeners named in ``mount`` (see :data:`LISTENERS`) are
    not opened: the application serves their :meth:`~EmbeddedDaemon.resource` or
    :meth:`~EmbeddedDaemon.factory` itself.  Several daemons, of one kind or of several,
    live in one reactor as long as their listen addresses and ``data_dir`` differ.
    ``reactor`` is typed ``IReactorCore`` so that ``twisted.internet.reactor`` passes as
    Twisted types it; the daemon uses all of :class:`kraken.io.reactor.IDaemonReactor`,
    which every POSIX reactor provides.
    """
    if isinstance(mount, str):
        raise TypeError(f"mount takes listener names, e.g. [{mount!r}], not the string {mount!r}")
    checked = load(kind, config)
    names = LISTENERS[kind]
    unknown = sorted(set(mount) - set(names))
    if unknown:
        raise ValueError(
            f"a {kind} has no listener {', '.join(unknown)} (it has: {', '.join(names)})"
        )
    tree = _builder(kind)(checked, daemon_reactor(reactor))
    factories: dict[str, IProtocolFactory] = {}
    ports: dict[str, _Listening] = {}
    for name in names:
        listener = tree.getServiceNamed(name)  # type: ignore[no-untyped-call]
        if isinstance(listener, ClosingListener):
            factories[name] = listener.connections.wrappedFactory
            ports[name] = listener
        else:
            assert isinstance(listener, StreamServerEndpointService)
            factories[name] = listener.factory
            recorder = _PortRecorder(listener.endpoint)
            listener.endpoint = recorder
            ports[name] = recorder
        if name in mount:
            listener.disownServiceParent()
            del ports[name]
    watch = ListenerWatch(tree, _ignore)
    return EmbeddedDaemon(
        kind, checked, tree, frozenset(mount), factories, ports, _Outcome(watch.ready())
    )


class Listener(ClosingListener):
    """
    The application's own listener: serves a factory on an endpoint while it runs.

    Stopping it closes the port and then every connection it accepted (kept-alive ones
    too, which a bare ``StreamServerEndpointService`` leaves open).  :meth:`ready` tells
    whether the port could be opened, as :meth:`EmbeddedDaemon.ready` does for a daemon.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> None:
        limits = getattr(factory, "limits", None)
        super().__init__(endpoint, factory, getattr(limits, "max_connections", None))
        tree: Any = self  # a one-listener tree
        self._outcome = _Outcome(ListenerWatch(tree, _ignore).ready())

    def ready(self) -> Deferred[None]:
        """Fires once listening; fails with :class:`ListenFailed` if the port cannot open."""
        return self._outcome.wait()

    def address(self) -> IAddress:
        """The address listened on (after :meth:`ready`; a port 0's number)."""
        if self.port is None:
            raise RuntimeError("not listening")
        return self.port.getHost()


def serve_on(endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> Listener:
    """
    A :class:`Listener` serving ``factory`` on ``endpoint`` (a :class:`KrakenSite`'s
    ``max_connections`` caps its open connections): the way to give a daemon's site
    (:meth:`EmbeddedDaemon.factory`) a port of the application's choosing, or to serve the
    application's own ``Site`` that mounts a daemon's resource.
    """
    return Listener(endpoint, factory)


class _KeptPath(Resource):
    """Hands a request to ``wrapped`` with the path segment it was reached by put back."""

    isLeaf = True

    def __init__(self, wrapped: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.wrapped = wrapped

    def render(self, request: Request) -> Any:
        """Give the segment back to the path, then let ``wrapped`` find and render its child."""
        if request.prepath and request.postpath is not None:
            request.postpath.insert(0, request.prepath.pop())
        return getChildForRequest(self.wrapped, request).render(request)  # type: ignore[no-untyped-call]


def keep_path(resource: IResource) -> IResource:
    """
    ``resource``, to put as a child of another resource without losing its path segment.

    ``root.putChild(b"v2", keep_path(agent.resource("registry")))`` serves the agent's
    registry at ``/v2/...`` of the application's own ``Site`` (docker clients speak to
    ``/v2/`` only), beside the application's other children.
    """
    return _KeptPath(resource)
