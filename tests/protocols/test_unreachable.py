"""
Issue 18: agents tell the tracker which peers they could not reach.

The peer driver calls its ``unreachable`` hook for dials that fail and for dialled peers
that never answer the handshake (and not for peers that answered); the
:class:`UnreachableReporter` batches those per torrent into one ``POST /report`` to a real
:class:`TrackerAPI`, which quarantines a peer two clients reported.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface import implementer

from kraken.api.tracker import TrackerAPI
from kraken.clients.tracker import TrackerClient, UnreachableReporter
from kraken.cluster import (
    Membership,
    NoHealthFilter,
    PassiveHealthFilter,
    RendezvousRing,
    StaticHostList,
)
from kraken.core import Digest, InfoHash, MetaInfo, PeerID, PeerInfo
from kraken.http.testing import memory_client_factory
from kraken.peers.origins import IOriginCluster, MetaInfoAnswer
from kraken.peers.store import MemoryPeerStore
from kraken.protocols.peer import PeerProtocol

from .swarm import Swarm

KiB = 1024


class SilentPeer(Protocol):
    """Accepts the connection and never says a word (a squatter, a stuck host)."""


class UnreachableHookTests(SynchronousTestCase):
    """The driver's ``unreachable`` hook, in an in-memory swarm."""

    def test_refused_and_silent_peers_reported(self) -> None:
        """
        A peer whose dial is refused and one that accepts but never answers the handshake
        are reported with the blob, the torrent and a reason; the origin that served the
        blob is not, and the download completes.
        """
        data = random.Random(1).randbytes(512 * KiB)
        meta = MetaInfo.of_bytes(data, 256 * KiB)
        swarm = Swarm()
        origin = swarm.add(origin=True)
        origin.archive.seed(meta, data)
        refused, silent, leecher = swarm.add(), swarm.add(), swarm.add()
        swarm.unreachable.add(refused.port)
        for node in (refused, silent):
            swarm.register(node, meta)
        seen: list[tuple[Digest, InfoHash, int, str]] = []
        leecher.node.unreachable = lambda d, h, p, why: seen.append((d, h, p.port, why))
        connect = swarm.connect

        def connector(peer: PeerInfo, proto: PeerProtocol) -> Deferred[Any]:
            if peer.port != silent.port:
                return connect(peer, proto)
            server = SilentPeer()
            swarm.pumps.append(
                iosim.connect(
                    server,
                    iosim.makeFakeServer(server),
                    proto,
                    iosim.makeFakeClient(proto),
                    greet=False,
                    clock=swarm.clock,
                )
            )
            return succeed(proto)

        leecher.node.connector = connector
        swarm.register(leecher, meta)
        done: list[object] = []
        leecher.node.download("ns", meta).addBoth(done.append)
        swarm.run(lambda: bool(done) and len(seen) >= 2, max_seconds=60)
        self.assertEqual(leecher.archive.torrents[meta.digest].content(), data)
        reasons = {port: why for _, _, port, why in seen}
        self.assertEqual(set(reasons), {refused.port, silent.port})
        self.assertEqual(reasons[silent.port], "handshake timed out")
        self.assertEqual({(d, h) for d, h, _, _ in seen}, {(meta.digest, meta.infohash)})


@implementer(IOriginCluster)
class NoOrigins:
    """Origin cluster with no origins (reports do not need them)."""

    def origin_peers(self, digest: Digest) -> Deferred[list[PeerInfo]]:
        return succeed([])

    def metainfo(self, namespace: str, digest: Digest) -> Deferred[MetaInfoAnswer]:
        return succeed(MetaInfoAnswer(404))

    def ready(self) -> Deferred[bool]:
        return succeed(True)


class FromAddress(Resource):
    """Serves ``wrapped`` as if every request came from ``host``."""

    isLeaf = True

    def __init__(self, wrapped: Any, host: str) -> None:
        super().__init__()
        self.wrapped, self.host = wrapped, host

    def render(self, request: Any) -> Any:
        """Set the client address, then render ``wrapped``."""
        request.client = IPv4Address("TCP", self.host, 40000)
        return self.wrapped.render(request)


class ReporterTests(SynchronousTestCase):
    """:class:`UnreachableReporter` against a real tracker app over in-memory HTTP."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryPeerStore(self.clock)
        self.api = TrackerAPI(self.store, NoOrigins(), self.clock)
        self.meta = MetaInfo.of_bytes(b"x" * 3000, 1024)
        self.fake = PeerInfo(PeerID(f"{0xF:040x}"), "10.0.0.9", 20000, complete=True)
        self.origin = PeerInfo(PeerID(f"{0xE:040x}"), "10.1.0.1", 15001, origin=True)

    def reporter(self, ip: str, n: int) -> UnreachableReporter:
        """The reporter of agent ``n`` at ``ip`` (requests arrive from ``ip``)."""
        factory, _ = memory_client_factory(
            {"t1:15003": FromAddress(self.api.resource(), ip)}, self.clock
        )
        membership = Membership(StaticHostList(["t1:15003"]), NoHealthFilter(), self.clock)
        self.successResultOf(membership.refresh())
        client = TrackerClient(
            factory.client(),
            RendezvousRing(membership),
            PassiveHealthFilter(self.clock),
            self.clock,
        )
        me = PeerInfo(PeerID(f"{n:040x}"), ip, 16001)
        return UnreachableReporter(client, me, self.clock)

    def test_batched_report_quarantines(self) -> None:
        """
        Failures of one torrent within the delay go in one report (origins left out);
        two agents at different addresses reporting the fake quarantine it.
        """
        a, b = self.reporter("10.0.0.20", 1), self.reporter("10.0.0.21", 2)
        other = PeerInfo(PeerID(f"{0xD:040x}"), "10.0.0.8", 20000)
        for reporter in (a, b):
            reporter(self.meta.digest, self.meta.infohash, self.fake, "connection refused")
            reporter(self.meta.digest, self.meta.infohash, self.origin, "connection refused")
        a(self.meta.digest, self.meta.infohash, other, "handshake timed out")
        self.assertEqual(self.api.quarantine.held(self.meta.infohash), None)
        self.clock.advance(2.0)
        for reporter in (a, b):
            self.assertEqual(reporter.sending, set())
        held = self.api.quarantine.held(self.meta.infohash)
        self.assertEqual(set(held or {}), {self.fake.peer_id.hex})

    def test_tracker_down_is_logged_not_raised(self) -> None:
        """A report the tracker refuses is logged and dropped."""
        reporter = self.reporter("10.0.0.20", 1)
        # The tracker sees another address than the one the agent claims: 403.
        reporter.me = PeerInfo(reporter.me.peer_id, "10.0.0.99", 16001)
        reporter(self.meta.digest, self.meta.infohash, self.fake, "connection refused")
        self.clock.advance(2.0)
        self.assertEqual(reporter.sending, set())
        self.assertEqual(self.api.quarantine.held(self.meta.infohash), None)

    def test_stop_drops_pending_reports(self) -> None:
        """After stop() nothing is pending on the clock and later failures are ignored."""
        reporter = self.reporter("10.0.0.20", 1)
        reporter(self.meta.digest, self.meta.infohash, self.fake, "connection refused")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        reporter.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        reporter(self.meta.digest, self.meta.infohash, self.fake, "connection refused")
        self.assertEqual(self.clock.getDelayedCalls(), [])
