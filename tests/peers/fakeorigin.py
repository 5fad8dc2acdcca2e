"""
A fake origin for tracker tests: the few origin endpoints the tracker calls.

- ``GET /health``;
- ``GET /blobs/{d}/locations`` -> ``Origin-Locations: a,b``;
- ``GET /internal/peercontext`` -> ``{"peer_id", "ip", "port", "origin": true}``;
- ``GET /internal/namespace/{ns}/blobs/{d}/metainfo`` -> 200 JSON / 202 / 404.

It counts the requests it serves by route, and can hold metainfo answers back
(``hold``) so that tests can pile up concurrent requests.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

from attrs import define, field
from klein import Klein
from twisted.internet.defer import Deferred

from kraken.core import Digest, MetaInfo, PeerID


@define
class FakeOrigin:
    """One origin; ``locations`` is what it answers for every blob."""

    app: ClassVar[Klein] = Klein()

    ip: str
    port: int
    locations: list[str] = field(factory=list)
    blobs: dict[Digest, MetaInfo] = field(factory=dict)
    pending: set[Digest] = field(factory=set)
    healthy: bool = True
    hold: Deferred[None] | None = None
    calls: Counter[str] = field(factory=Counter)
    namespaces: list[str] = field(factory=list)

    @property
    def address(self) -> str:
        """``ip:port``."""
        return f"{self.ip}:{self.port}"

    @property
    def peer_id(self) -> PeerID:
        """The stable id an origin seeds as."""
        return PeerID.from_address(self.ip, self.port)

    def resource(self) -> Any:
        """The twisted.web resource."""
        return self.app.resource()

    @app.route("/health")
    def health(self, request: Any) -> bytes:
        """200 when healthy, else 503."""
        self.calls["health"] += 1
        if not self.healthy:
            request.setResponseCode(503)
        return b"OK"

    @app.route("/blobs/<digest>/locations")
    def blob_locations(self, request: Any, digest: str) -> bytes:
        """The configured locations."""
        self.calls["locations"] += 1
        request.setHeader(b"Origin-Locations", ",".join(self.locations).encode())
        return b""

    @app.route("/internal/peercontext")
    def peercontext(self, request: Any) -> bytes:
        """This origin as a peer."""
        import json

        self.calls["peercontext"] += 1
        return json.dumps(
            {"peer_id": self.peer_id.hex, "ip": self.ip, "port": self.port, "origin": True}
        ).encode()

    @app.route("/internal/namespace/<path:ns>/blobs/<digest>/metainfo")
    async def metainfo(self, request: Any, ns: str, digest: str) -> bytes:
        """200 with the metainfo, 202 while pending, 404 when unknown."""
        self.calls["metainfo"] += 1
        self.namespaces.append(ns)
        if self.hold is not None:
            await self.hold
        d = Digest.parse(digest)
        if d in self.pending:
            request.setResponseCode(202)
            return b""
        info = self.blobs.get(d)
        if info is None:
            request.setResponseCode(404)
            return b"not found"
        return info.to_json()
