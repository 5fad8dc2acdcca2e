"""
The origin cluster as the tracker sees it: who seeds a blob, and its metainfo.

The tracker does not hash digests itself: it asks any origin for the blob's
locations (``GET /blobs/{d}/locations`` -> ``Origin-Locations: a,b``), then
asks each location for its peer context (``GET /internal/peercontext``) or,
for metainfo, asks the locations in order
(``GET /internal/namespace/{ns}/blobs/{d}/metainfo`` -> 200/202/404).
Locations are cached 10 s (1 s after an error), peer contexts 10 s (an
origin that failed is skipped for 1 min), so an announce storm costs the
origins a few requests a second.
"""

from __future__ import annotations

import random
from typing import ClassVar, Final
from urllib.parse import quote

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from kraken.cluster.hostlist import parse_host_port
from kraken.cluster.membership import Membership
from kraken.core import Digest, InvalidPeerInfo, MetaInfo, PeerInfo, parse_json
from kraken.core.metainfo import InvalidMetaInfo
from kraken.http.client import (
    HTTPStatusError,
    KrakenHTTPClient,
    NetworkError,
    RequestError,
    read_body,
)
from kraken.peers.cache import CollapsingCache

LOCATIONS_TTL: Final = 10.0
LOCATIONS_ERROR_TTL: Final = 1.0
PEER_CONTEXT_TTL: Final = 10.0
PEER_CONTEXT_ERROR_TTL: Final = 60.0
#: Largest metainfo accepted from an origin (a 1 TiB blob in 8 MiB pieces is ~8.5 MB of JSON).
MAX_METAINFO_BYTES: Final = 16 * 1024 * 1024
MAX_SMALL_BODY: Final = 64 * 1024


class OriginUnavailable(Exception):
    """No origin answered (every one refused, timed out or failed)."""


@frozen
class MetaInfoAnswer:
    """What the origins said about a blob's metainfo: 200 with the JSON, 202, or 404."""

    status: int
    body: bytes = b""


class IOriginCluster(Interface):
    """The origins, as far as the tracker needs them."""

    def origin_peers(digest: Digest) -> Deferred[list[PeerInfo]]:
        """The origins that hold ``digest``, as peers (``origin=True, complete=True``)."""

    def metainfo(namespace: str, digest: Digest) -> Deferred[MetaInfoAnswer]:
        """The owner's metainfo answer; fails with :class:`OriginUnavailable` if none answers."""

    def ready() -> Deferred[bool]:
        """Whether at least one origin answers its health check."""


@implementer(IOriginCluster)
@define
class HTTPOriginCluster:
    """
    :class:`IOriginCluster` over HTTP.

    ``membership`` lists the origins (and which are healthy, by active checks);
    ``client`` comes from the shared factory, with the timeout and retries the
    tracker wants for origin calls (failover to the next origin is done here).
    """

    log: ClassVar[Logger] = Logger()

    client: KrakenHTTPClient
    membership: Membership
    clock: IReactorTime
    scheme: str = "http"
    rng: random.Random = field(factory=random.Random)
    _locations: CollapsingCache[Digest, list[str]] = field(init=False)
    _contexts: CollapsingCache[str, PeerInfo] = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._locations = CollapsingCache(
            self.clock, lambda _: LOCATIONS_TTL, error_ttl=LOCATIONS_ERROR_TTL
        )
        self._contexts = CollapsingCache(
            self.clock, lambda _: PEER_CONTEXT_TTL, error_ttl=PEER_CONTEXT_ERROR_TTL
        )

    def _url(self, host: str, path: str) -> str:
        return f"{self.scheme}://{host}{path}"

    def _candidates(self) -> list[str]:
        hosts = list(self.membership.usable())
        self.rng.shuffle(hosts)
        return hosts

    def locations(self, digest: Digest) -> Deferred[list[str]]:
        """The blob's origin locations in ring order, from any origin (cached)."""
        return self._locations.get(digest, lambda: Deferred.fromCoroutine(self._fetch(digest)))

    async def _fetch(self, digest: Digest) -> list[str]:
        errors: list[str] = []
        hosts = self._candidates()
        if not hosts:
            # The tracker answers its readiness probe before the membership's first health
            # checks are done: a request in that window waits for them.
            await self.membership.refresh()
            hosts = self._candidates()
        for host in hosts:
            try:
                response = await self.client.get(self._url(host, f"/blobs/{digest}/locations"))
                await read_body(response, MAX_SMALL_BODY)
            except RequestError as e:
                errors.append(str(e))
                continue
            header = response.headers.getRawHeaders("Origin-Locations") or []
            found = [a.strip() for h in header for a in h.split(",") if a.strip()]
            valid = []
            for address in found:
                try:
                    parse_host_port(address)
                except ValueError:
                    self.log.warn(
                        "{host} gave a bad location {address!r}", host=host, address=address
                    )
                    continue
                valid.append(address)
            if valid:
                return valid
            errors.append(f"{host}: no Origin-Locations for {digest}")
        raise OriginUnavailable(
            f"no origin gave the locations of {digest}: " + ("; ".join(errors) or "no origins")
        )

    def peer_context(self, address: str) -> Deferred[PeerInfo]:
        """The peer the origin at ``address`` seeds as (cached)."""
        return self._contexts.get(
            address, lambda: Deferred.fromCoroutine(self._fetch_context(address))
        )

    async def _fetch_context(self, address: str) -> PeerInfo:
        response = await self.client.get(self._url(address, "/internal/peercontext"))
        body = await read_body(response, MAX_SMALL_BODY)
        try:
            peer = PeerInfo.from_dict(parse_json(body, "peer context"))
        except (ValueError, InvalidPeerInfo) as e:
            raise OriginUnavailable(f"{address}: bad peer context: {e}") from e
        return PeerInfo(peer.peer_id, peer.ip, peer.port, origin=True, complete=True)

    async def _origin_peers(self, digest: Digest) -> list[PeerInfo]:
        addresses = await self.locations(digest)
        results = await DeferredList([self.peer_context(a) for a in addresses], consumeErrors=True)
        peers = []
        for (_ok, value), address in zip(results, addresses, strict=True):
            if isinstance(value, PeerInfo):
                peers.append(value)
            else:
                self.log.warn(
                    "origin {address} has no peer context: {error}",
                    address=address,
                    error=value.getErrorMessage(),
                )
        return peers

    def origin_peers(self, digest: Digest) -> Deferred[list[PeerInfo]]:
        """The origins of ``digest`` that answered (see :meth:`IOriginCluster.origin_peers`)."""
        return Deferred.fromCoroutine(self._origin_peers(digest))

    async def _metainfo(self, namespace: str, digest: Digest) -> MetaInfoAnswer:
        errors: list[str] = []
        path = f"/internal/namespace/{quote(namespace, safe='')}/blobs/{digest}/metainfo"
        for address in await self.locations(digest):
            try:
                response = await self.client.get(self._url(address, path), ok=(200, 202, 404))
                body = await read_body(response, MAX_METAINFO_BYTES)
            except (NetworkError, HTTPStatusError) as e:
                errors.append(str(e))
                continue
            except Exception as e:  # a body too large or broken: try another replica
                errors.append(f"{address}: {e}")
                continue
            if response.code != 200:
                return MetaInfoAnswer(response.code)
            try:
                info = MetaInfo.from_json(body)
            except (InvalidMetaInfo, ValueError) as e:
                errors.append(f"{address}: invalid metainfo: {e}")
                continue
            if info.digest != digest:
                errors.append(f"{address}: metainfo of {info.digest}, not {digest}")
                continue
            return MetaInfoAnswer(200, info.to_json())
        raise OriginUnavailable(
            f"no origin answered for the metainfo of {digest}: " + "; ".join(errors)
        )

    def metainfo(self, namespace: str, digest: Digest) -> Deferred[MetaInfoAnswer]:
        """The metainfo answer (see :meth:`IOriginCluster.metainfo`); 200 bodies are validated."""
        return Deferred.fromCoroutine(self._metainfo(namespace, digest))

    async def _ready(self) -> bool:
        hosts = self._candidates()
        if not hosts:
            return False
        results = await DeferredList(
            [self.client.get(self._url(h, "/health")) for h in hosts], consumeErrors=True
        )
        ready = False
        for ok, response in results:
            if ok:
                ready = True
                try:
                    await read_body(response, MAX_SMALL_BODY)
                except Exception:  # the 200 is what counts
                    self.log.debug("unreadable /health body")
        return ready

    def ready(self) -> Deferred[bool]:
        """Probe every origin's ``/health``; true if any answers 200."""
        return Deferred.fromCoroutine(self._ready())
