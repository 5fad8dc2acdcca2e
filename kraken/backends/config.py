"""
Backend configuration: attrs values parsed from config dicts, and how to build backends from them.

The YAML shape follows Go Kraken's ``backends:`` list::

    backends:
      - namespace: "^library/"          # regex, unanchored search, first match wins
        backend:
          fs:                           # exactly one backend kind
            root: /var/lib/kraken/backend
      - namespace: ".*"
        backend: {noop: {}}

:data:`BACKEND_KINDS` maps each kind to the parser of its options; the S3, registry and http
backends add themselves there.  Errors are :class:`BackendConfigError` with the key path named
(``backends[0].backend.fs.root: expected a non-empty string, got 3``), so ``kraken.config`` can
report them as its own.  Bandwidth limits and ``must_ready`` are not supported yet: they are
rejected as unknown keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from attrs import field, frozen

from kraken.backends.fs import FilesystemBackend
from kraken.backends.interface import IBackend
from kraken.backends.noop import NoopBackend
from kraken.backends.router import BackendRouter
from kraken.backends.threads import BlockingRunner, threadpool_runner

#: The embedded default: one filesystem backend for every namespace.
DEFAULT_FS_ROOT = "./kraken-data/backend"


class BackendConfigError(ValueError):
    """A backend configuration value that is wrong; the message starts with its key path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@frozen
class BackendContext:
    """What building a backend may need from the daemon that owns it."""

    reactor: Any
    """The reactor (backends use the interfaces they need: time, TCP, threads)."""

    run: BlockingRunner
    """Where backends run blocking calls."""

    @classmethod
    def for_reactor(cls, reactor: Any) -> BackendContext:
        """A context that runs blocking calls in ``reactor``'s own thread pool."""
        return cls(reactor, threadpool_runner(reactor, reactor.getThreadPool()))


class BackendConfig(Protocol):
    """The options of one backend kind."""

    kind: ClassVar[str]

    def build(self, context: BackendContext) -> IBackend:
        """Make the backend."""


def _mapping(raw: object, path: str) -> Mapping[str, object]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) for k in raw):
        raise BackendConfigError(path, f"expected a mapping, got {raw!r}")
    return raw


def _no_unknown_keys(raw: Mapping[str, object], known: set[str], path: str) -> None:
    for key in raw:
        if key not in known:
            raise BackendConfigError(f"{path}.{key}", "unknown key")


@frozen
class FilesystemBackendConfig:
    """Options of the ``fs`` backend."""

    kind: ClassVar[str] = "fs"

    root: str = DEFAULT_FS_ROOT
    """Directory of the backend; relative paths are relative to the working directory."""

    @classmethod
    def from_dict(cls, raw: object, path: str) -> FilesystemBackendConfig:
        """Parse ``{root: <dir>}``."""
        options = _mapping(raw, path)
        _no_unknown_keys(options, {"root"}, path)
        root = options.get("root", DEFAULT_FS_ROOT)
        if not isinstance(root, str) or not root or "\0" in root:
            raise BackendConfigError(f"{path}.root", f"expected a non-empty string, got {root!r}")
        return cls(root)

    def build(self, context: BackendContext) -> IBackend:
        """A :class:`FilesystemBackend` on ``root``."""
        return FilesystemBackend(self.root, context.run)


@frozen
class NoopBackendConfig:
    """The ``noop`` backend (no options)."""

    kind: ClassVar[str] = "noop"

    @classmethod
    def from_dict(cls, raw: object, path: str) -> NoopBackendConfig:
        """Parse ``{}``."""
        _no_unknown_keys(_mapping(raw, path), set(), path)
        return cls()

    def build(self, context: BackendContext) -> IBackend:
        """A :class:`NoopBackend`."""
        return NoopBackend()


#: Backend kind -> parser of its options ``(raw, key path) -> config``.
BACKEND_KINDS: dict[str, Callable[[object, str], BackendConfig]] = {
    FilesystemBackendConfig.kind: FilesystemBackendConfig.from_dict,
    NoopBackendConfig.kind: NoopBackendConfig.from_dict,
}


# The s3, registry and http kinds are imported when a config names them: their modules import
# this one (no cycle at import time), and a daemon without S3 never loads boto3.
def _parse_s3(raw: object, path: str) -> BackendConfig:
    from kraken.backends.s3 import S3BackendConfig

    return S3BackendConfig.from_dict(raw, path)


def _parse_registry(raw: object, path: str) -> BackendConfig:
    from kraken.backends.registry import RegistryBackendConfig

    return RegistryBackendConfig.from_dict(raw, path)


def _parse_http(raw: object, path: str) -> BackendConfig:
    from kraken.backends.http import HTTPBackendConfig

    return HTTPBackendConfig.from_dict(raw, path)


BACKEND_KINDS.update({"s3": _parse_s3, "registry": _parse_registry, "http": _parse_http})


def _compiles(_instance: object, _attribute: object, value: str) -> None:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"invalid namespace regex {value!r}: {e}") from None


@frozen
class BackendRouteConfig:
    """Namespaces matching the regex ``namespace`` use ``backend``."""

    namespace: str = field(validator=_compiles)
    backend: BackendConfig

    @classmethod
    def from_dict(cls, raw: object, path: str) -> BackendRouteConfig:
        """Parse ``{namespace: <regex>, backend: {<kind>: {...}}}``."""
        entry = _mapping(raw, path)
        _no_unknown_keys(entry, {"namespace", "backend"}, path)
        if "namespace" not in entry:
            raise BackendConfigError(f"{path}.namespace", "missing (a regex of namespaces)")
        namespace = entry["namespace"]
        if not isinstance(namespace, str):
            raise BackendConfigError(f"{path}.namespace", f"expected a regex, got {namespace!r}")
        try:
            re.compile(namespace)
        except re.error as e:
            raise BackendConfigError(
                f"{path}.namespace", f"invalid regex {namespace!r}: {e}"
            ) from None
        kinds = _mapping(entry.get("backend"), f"{path}.backend")
        if len(kinds) != 1:
            raise BackendConfigError(
                f"{path}.backend",
                f"expected exactly one of {sorted(BACKEND_KINDS)}, got {sorted(kinds)}",
            )
        ((kind, options),) = kinds.items()
        parse = BACKEND_KINDS.get(kind)
        if parse is None:
            raise BackendConfigError(
                f"{path}.backend.{kind}", f"unknown backend kind; known: {sorted(BACKEND_KINDS)}"
            )
        return cls(namespace, parse(options, f"{path}.backend.{kind}"))


def _default_routes() -> tuple[BackendRouteConfig, ...]:
    return (BackendRouteConfig(".*", FilesystemBackendConfig()),)


@frozen
class BackendsConfig:
    """The ordered routes of a daemon; by default everything goes to ``fs`` under ./kraken-data."""

    routes: tuple[BackendRouteConfig, ...] = field(factory=_default_routes)

    @classmethod
    def from_list(cls, raw: object, path: str = "backends") -> BackendsConfig:
        """Parse the ``backends:`` list (``None`` means the default)."""
        if raw is None:
            return cls()
        if not isinstance(raw, list):
            raise BackendConfigError(path, f"expected a list of routes, got {raw!r}")
        return cls(
            tuple(BackendRouteConfig.from_dict(r, f"{path}[{i}]") for i, r in enumerate(raw))
        )

    def build(self, context: BackendContext) -> BackendRouter:
        """Build every backend and the router over them (identical configs share a backend)."""
        built: dict[BackendConfig, IBackend] = {}
        routes = []
        for route in self.routes:
            if route.backend not in built:
                built[route.backend] = route.backend.build(context)
            routes.append((route.namespace, built[route.backend]))
        return BackendRouter(routes)
