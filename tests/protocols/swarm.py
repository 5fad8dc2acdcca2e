"""An in-memory swarm of PeerNodes connected by iosim pumps, on one Clock."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.test import iosim

from kraken.core import MetaInfo, PeerID, PeerInfo
from kraken.io.runner import run_inline
from kraken.protocols.peer import PeerNode, PeerProtocol
from kraken.torrent.actions import Announce, EngineConfig
from kraken.torrent.archive import MemoryArchive
from kraken.torrent.scheduler import Scheduler


class SwarmNode:
    """One node: a scheduler, an in-memory archive and its driver."""

    def __init__(self, swarm: Swarm, port: int, *, origin: bool, archive: Any = None) -> None:
        self.swarm = swarm
        self.port = port
        self.origin = origin
        self.peer_id = PeerID.from_address("10.0.0.1", port)
        self.archive = archive if archive is not None else MemoryArchive()
        self.start()

    def start(self) -> None:
        """(Re)start the engine and driver over the same archive."""
        config = EngineConfig(origin=self.origin, announce=not self.origin, **self.swarm.config)
        self.scheduler = Scheduler(
            self.peer_id, self.swarm.clock.seconds, random.Random(self.port), config
        )
        self.node = PeerNode(
            self.swarm.clock,
            self.scheduler,
            self.archive,
            self.swarm.runner,
            connector=self.swarm.connect,
            announcer=self.swarm.announce,
        )
        self.node.start()
        self.alive = True

    def stop(self) -> None:
        """Crash: drop every connection without goodbye, stop the engine."""
        self.alive = False
        for proto in list(self.node.protocols.values()):
            proto.raw_transport().abortConnection()
        self.node.stop()

    @property
    def info(self) -> PeerInfo:
        """What the tracker hands out for this node."""
        return PeerInfo(self.peer_id, "10.0.0.1", self.port, origin=self.origin)


class Swarm:
    """Nodes, a fake tracker (everyone who announced + origins) and iosim links."""

    def __init__(self, **config: Any) -> None:
        self.clock = Clock()
        self.config = config
        self.nodes: dict[int, SwarmNode] = {}
        self.pumps: list[iosim.IOPump] = []
        self.announced: dict[Any, list[int]] = {}
        self.runner = run_inline
        #: ports whose dials fail (unreachable hosts)
        self.unreachable: set[int] = set()
        self._port = 20000

    def add(self, *, origin: bool = False, archive: Any = None) -> SwarmNode:
        """A new node."""
        self._port += 1
        node = SwarmNode(self, self._port, origin=origin, archive=archive)
        self.nodes[node.port] = node
        return node

    def connect(self, peer: PeerInfo, proto: PeerProtocol) -> Deferred[Any]:
        """Connector: an iosim link to the node listening on ``peer.port``."""
        target = self.nodes.get(peer.port)
        if target is None or not target.alive or peer.port in self.unreachable:
            return fail(ConnectionRefusedError(peer.address))
        server = target.node.factory().buildProtocol(None)
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            proto,
            iosim.makeFakeClient(proto),
            greet=False,
            clock=self.clock,
        )
        self.pumps.append(pump)
        return succeed(proto)

    def announce(self, action: Announce) -> Deferred[Any]:
        """Tracker: origins that have the blob, then every other announcer."""
        ports = self.announced.setdefault(action.infohash, [])
        peers = [
            n.info
            for n in self.nodes.values()
            if n.origin and n.alive and n.archive.torrents.get(action.digest) is not None
        ]
        peers += [self.nodes[p].info for p in ports if self.nodes[p].alive]
        return succeed((peers, 3.0))

    def register(self, node: SwarmNode, meta: MetaInfo) -> None:
        """The tracker learns that ``node`` takes part in the torrent."""
        self.announced.setdefault(meta.infohash, []).append(node.port)

    def pump(self) -> bool:
        """Move all buffered bytes once; whether anything moved."""
        moved = False
        for pump in list(self.pumps):
            if pump.pump(advanceClock=False):
                moved = True
            elif pump.clientIO.disconnected and pump.serverIO.disconnected:
                self.pumps.remove(pump)
        return moved

    def run(self, until: Any, max_seconds: float = 600, step: float = 0.5) -> None:
        """Pump and advance the clock until ``until()`` or the time budget ends."""
        elapsed = 0.0
        while not until() and elapsed < max_seconds:
            for _ in range(10000):
                if not self.pump() or until():
                    break
            if until():
                return
            self.clock.advance(step)
            elapsed += step
