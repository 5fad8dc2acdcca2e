"""
Building a daemon's backends from its ``backends:`` configuration.

The YAML shape follows Go Kraken's ``backends:`` list::

    backends:
      - namespace: "^library/"          # regex, unanchored search, first match wins
        backend:
          fs:                           # exactly one backend kind
            root: /var/lib/kraken/backend
      - namespace: ".*"
        backend: {noop: {}}

Entries and options are parsed and checked by the configuration package, like every other
setting (:class:`~kraken.config.BackendEntry`, :mod:`kraken.config.backends`): a mistake is a
:class:`~kraken.config.ConfigError` line with its key path when the configuration is loaded
(``origin.backends[0].backend.fs.rooot: unknown key (did you mean "root"?)``).  This module
only turns valid entries into :class:`~kraken.backends.interface.IBackend` objects and the
router over them; the S3, registry and http backends are imported when a configuration names
them, so a daemon without S3 never loads boto3.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from attrs import field, frozen

from kraken.backends.fs import FilesystemBackend
from kraken.backends.interface import IBackend
from kraken.backends.noop import NoopBackend
from kraken.backends.router import BackendRouter
from kraken.config.backends import (
    DEFAULT_FS_ROOT,
    BackendChoice,
    FilesystemOptions,
    HTTPOptions,
    NoopOptions,
    RegistryOptions,
    S3Options,
)
from kraken.config.sections import BackendEntry
from kraken.config.structure import setting, structure
from kraken.io.reactor import IClientReactor, IDaemonReactor
from kraken.io.runner import BlockingRunner, threadpool_runner

__all__ = [
    "BACKEND_BUILDERS",
    "DEFAULT_FS_ROOT",
    "BackendContext",
    "BackendsConfig",
]


@frozen
class BackendContext:
    """What building a backend may need from the daemon that owns it."""

    reactor: IClientReactor
    """The reactor: the HTTP backends' clients and clocks."""

    run: BlockingRunner
    """Where backends run blocking calls."""

    @classmethod
    def for_reactor(cls, reactor: IDaemonReactor) -> BackendContext:
        """A context that runs blocking calls in ``reactor``'s own thread pool."""
        return cls(reactor, threadpool_runner(reactor, reactor.getThreadPool()))


def _build_fs(options: FilesystemOptions, context: BackendContext) -> IBackend:
    return FilesystemBackend(options.root, context.run)


def _build_noop(options: NoopOptions, context: BackendContext) -> IBackend:
    return NoopBackend()


def _build_s3(options: S3Options, context: BackendContext) -> IBackend:
    from kraken.backends.s3 import build_s3_backend

    return build_s3_backend(options, context)


def _build_registry(options: RegistryOptions, context: BackendContext) -> IBackend:
    from kraken.backends.registry import build_registry_backend

    return build_registry_backend(options, context)


def _build_http(options: HTTPOptions, context: BackendContext) -> IBackend:
    from kraken.backends.http import build_http_backend

    return build_http_backend(options, context)


#: Backend kind -> how to build it from its options.
BACKEND_BUILDERS: Final[Mapping[str, Callable[[Any, BackendContext], IBackend]]] = {
    "fs": _build_fs,
    "noop": _build_noop,
    "s3": _build_s3,
    "registry": _build_registry,
    "http": _build_http,
}


def _default_entries() -> tuple[BackendEntry, ...]:
    return (BackendEntry(namespace=".*", backend=BackendChoice(fs=FilesystemOptions())),)


@frozen(kw_only=True)
class _BackendList:
    """``backends:`` alone, for :meth:`BackendsConfig.from_list`."""

    backends: tuple[BackendEntry, ...] = setting(doc="The routes.")


@frozen
class BackendsConfig:
    """The ordered routes of a daemon; by default everything goes to ``fs`` under ./kraken-data."""

    entries: tuple[BackendEntry, ...] = field(factory=_default_entries)

    @classmethod
    def from_list(cls, raw: object, root: str = "") -> BackendsConfig:
        """
        Parse a ``backends:`` list as the configuration loader does (``None``: the default).

        Raises :class:`~kraken.config.ConfigError` naming every problem, its key path
        starting at ``root`` (``origin`` gives ``origin.backends[0]...``).
        """
        if raw is None:
            return cls()
        return cls(structure(_BackendList, {"backends": raw}, root).backends)

    def build(self, context: BackendContext) -> BackendRouter:
        """Build every backend and the router over them (identical options share a backend)."""
        built: dict[BackendChoice, IBackend] = {}
        routes = []
        for entry in self.entries:
            choice = entry.backend
            if choice not in built:
                built[choice] = BACKEND_BUILDERS[choice.kind](choice.options, context)
            routes.append((entry.namespace, built[choice]))
        return BackendRouter(routes)
