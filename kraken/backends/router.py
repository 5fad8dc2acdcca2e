"""
Namespace routing: which backend serves a namespace.

An ordered list of ``(regex, backend)``; the first regex that matches *anywhere* in the
namespace wins (``re.search``, as Go's unanchored ``MatchString``: write ``^library/`` to
anchor).  ``__noop__`` always goes to the noop backend.  No match is
:class:`NamespaceNotFound`.  A per-backend bandwidth limit is not implemented yet; it will wrap
a backend in the route, leaving this class unchanged.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable

from attrs import frozen
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from kraken.backends.interface import BlobNotFound, IBackend, NamespaceNotFound
from kraken.backends.names import check_namespace
from kraken.backends.noop import NOOP_NAMESPACE, NoopBackend

#: What readiness checks stat: a name that should not exist; not-found proves the backend works.
READINESS_NAMESPACE = "kraken-readiness-check"
READINESS_NAME = "0" * 64


@frozen
class Route:
    """Namespaces matching ``pattern`` go to ``backend``."""

    pattern: re.Pattern[str]
    backend: IBackend


class BackendRouter:
    """Picks the backend for a namespace from an ordered list of routes."""

    log = Logger()

    def __init__(
        self,
        routes: Iterable[tuple[str | re.Pattern[str], IBackend]],
        noop: IBackend | None = None,
    ) -> None:
        """Compile the routes (a bad regex raises ``ValueError`` naming it)."""
        compiled = []
        for pattern, backend in routes:
            try:
                regex = re.compile(pattern) if isinstance(pattern, str) else pattern
            except re.error as e:
                raise ValueError(f"invalid namespace regex {pattern!r}: {e}") from None
            compiled.append(Route(regex, backend))
        self.routes: tuple[Route, ...] = tuple(compiled)
        self.noop: IBackend = NoopBackend() if noop is None else noop

    def backend_for(self, namespace: str) -> IBackend:
        """
        The backend of ``namespace``.

        Raises :class:`NamespaceNotFound` if no route matches, :class:`InvalidName` if the
        namespace is malformed (both synchronously).
        """
        check_namespace(namespace)
        if namespace == NOOP_NAMESPACE:
            return self.noop
        for route in self.routes:
            if route.pattern.search(namespace):
                return route.backend
        raise NamespaceNotFound(namespace)

    def backends(self) -> tuple[IBackend, ...]:
        """Each distinct backend once, in route order, then the noop backend."""
        seen: list[IBackend] = []
        for backend in (*(r.backend for r in self.routes), self.noop):
            if not any(backend is s for s in seen):
                seen.append(backend)
        return tuple(seen)

    def check_readiness(self) -> Deferred[None]:
        """
        Stat a name that should not exist on every routed backend.

        Fires when each answered (found or :class:`BlobNotFound`); fails with the first
        other error, e.g. a backend that cannot be reached.
        """

        async def check(backend: IBackend) -> None:
            with contextlib.suppress(BlobNotFound):
                await backend.stat(READINESS_NAMESPACE, READINESS_NAME)

        async def check_all() -> None:
            for backend in self.backends():
                await check(backend)

        return ensureDeferred(check_all())

    def close(self) -> Deferred[None]:
        """Close every backend (all of them, even when one fails); fire when done."""

        async def close_all() -> None:
            for backend in self.backends():
                try:
                    await backend.close()
                except Exception:
                    self.log.failure("closing backend {backend!r} failed", backend=backend)

        return ensureDeferred(close_all())
