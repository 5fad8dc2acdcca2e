"""
The agent's client of the build-index: tag -> manifest digest, and readiness.

``GET /tags/{urlquoted repo:tag}`` answers the digest string ``sha256:<hex>``
(404 when the tag is unknown).  Hosts are tried in a random order, those the
passive health filter considers healthy first, at most ``max_attempts`` of
them (the Go cluster client samples 3): a network error marks the host with
the filter and moves on; an HTTP error status is the answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import ClassVar, Final
from urllib.parse import quote

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from kraken.cluster.health import PassiveHealthFilter
from kraken.core import Digest, InvalidDigest
from kraken.http.client import KrakenHTTPClient, NetworkError, TreqResponse, read_body

__all__ = [
    "DEFAULT_BUILD_INDEX_TIMEOUT",
    "BuildIndexClient",
    "BuildIndexUnavailable",
    "InvalidBuildIndexResponse",
    "TagNotFound",
]

#: Seconds each build-index gets to answer a tag lookup (the Go tag client's Get timeout).
DEFAULT_BUILD_INDEX_TIMEOUT: Final = 10.0
MAX_TAG_RESPONSE: Final = 4096


class TagNotFound(LookupError):
    """The build-index does not know the tag (it answered 404)."""


class BuildIndexUnavailable(Exception):
    """No build-index answered (none configured, or every one tried failed at the network level)."""


class InvalidBuildIndexResponse(ValueError):
    """A build-index answered 200 with something that is not a digest."""


@define
class BuildIndexClient:
    """
    Tag lookups over the build-index hosts with passive health failover.

    ``hosts`` returns the current members (e.g. a ``Membership``'s
    ``members``); ``client`` comes from the shared HTTP client factory.
    """

    log: ClassVar[Logger] = Logger()

    client: KrakenHTTPClient
    hosts: Callable[[], frozenset[str]]
    health: PassiveHealthFilter
    scheme: str = "http"
    timeout: float = DEFAULT_BUILD_INDEX_TIMEOUT
    max_attempts: int = 3
    rng: random.Random = field(factory=random.Random)

    def hosts_in_order(self) -> list[str]:
        """Healthy hosts in random order, then the others (the order requests try them)."""
        members = self.hosts()
        healthy = self.health.healthy(members)
        first = sorted(h for h in members if h in healthy)
        rest = sorted(h for h in members if h not in healthy)
        self.rng.shuffle(first)
        self.rng.shuffle(rest)
        return first + rest

    async def _first_answer(
        self, what: str, send: Callable[[str], Deferred[TreqResponse]]
    ) -> tuple[str, TreqResponse]:
        errors: list[str] = []
        for host in self.hosts_in_order()[: self.max_attempts]:
            try:
                return host, await send(host)
            except NetworkError as e:
                self.health.failed(host)
                errors.append(str(e))
        raise BuildIndexUnavailable(
            f"no build-index answered for {what}: "
            + ("; ".join(errors) or "no build-index is configured")
        )

    async def _get_tag(self, tag: str) -> Digest:
        path = f"/tags/{quote(tag, safe='')}"

        def send(host: str) -> Deferred[TreqResponse]:
            return self.client.get(
                f"{self.scheme}://{host}{path}", ok=(200, 404), timeout=self.timeout, retry=False
            )

        host, response = await self._first_answer(f"tag {tag!r}", send)
        raw = await read_body(response, MAX_TAG_RESPONSE)
        if response.code == 404:
            raise TagNotFound(f"tag {tag!r} not found")
        try:
            return Digest.parse(raw.decode("ascii", "replace").strip())
        except InvalidDigest as e:
            raise InvalidBuildIndexResponse(f"{host}: tag {tag!r}: {e}") from None

    def get_tag(self, tag: str) -> Deferred[Digest]:
        """
        The manifest digest of ``tag`` (``repo:tag``).

        Fails with :class:`TagNotFound`, :class:`BuildIndexUnavailable`,
        :class:`InvalidBuildIndexResponse` or
        :class:`~kraken.http.client.HTTPStatusError` (any status but 200/404).
        """
        return Deferred.fromCoroutine(self._get_tag(tag))

    async def _ready(self) -> None:
        def send(host: str) -> Deferred[TreqResponse]:
            return self.client.get(
                f"{self.scheme}://{host}/readiness", timeout=self.timeout, retry=False
            )

        _, response = await self._first_answer("readiness", send)
        await read_body(response, MAX_TAG_RESPONSE)

    def readiness(self) -> Deferred[None]:
        """Fires when a build-index answers ``GET /readiness`` with 200; fails otherwise."""
        return Deferred.fromCoroutine(self._ready())
