"""
Prometheus metrics of a peer node (agent or origin): what it trades, and with how many peers.

:class:`PeerMetrics` lives in the registry of the daemon that runs the node, so the agent's
and the origin's ``/metrics`` both show them, under the same names:

- ``kraken_p2p_piece_bytes_total{direction}``: piece payload bytes ``received`` (verified and
  written) and ``sent`` (handed to the connection whole);
- ``kraken_p2p_pieces_failed_total{reason}``: received pieces dropped, ``hash`` (the bytes did
  not match the metainfo: a corrupt or lying peer, which is blacklisted) or ``write`` (the
  local disk failed);
- ``kraken_p2p_connections`` and ``kraken_p2p_torrents``: peer connections (accepted ones
  past their handshake, and our dials from the moment they start) and torrents open now
  (read when scraped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import define, field
from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    from kraken.protocols.peer import PeerNode

__all__ = ["PeerMetrics"]


@define
class PeerMetrics:
    """A peer node's counters and gauges (see the module doc)."""

    registry: CollectorRegistry = field(factory=CollectorRegistry)
    piece_bytes: Counter = field(init=False)
    #: ``piece_bytes`` by direction (the series exist, at 0, from the start).
    received: Counter = field(init=False)
    sent: Counter = field(init=False)
    pieces_failed: Counter = field(init=False)
    connections: Gauge = field(init=False)
    torrents: Gauge = field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.piece_bytes = Counter(
            "kraken_p2p_piece_bytes",
            "Piece payload bytes received (verified and written) and sent",
            ["direction"],
            registry=r,
        )
        self.received = self.piece_bytes.labels("received")
        self.sent = self.piece_bytes.labels("sent")
        self.pieces_failed = Counter(
            "kraken_p2p_pieces_failed",
            "Received pieces dropped: hash (did not match the metainfo) or write (local disk)",
            ["reason"],
            registry=r,
        )
        self.connections = Gauge(
            "kraken_p2p_connections",
            "Peer connections: accepted past their handshake, and our dials",
            registry=r,
        )
        self.torrents = Gauge("kraken_p2p_torrents", "Torrents open", registry=r)

    def watch(self, node: PeerNode) -> None:
        """Read the gauges from ``node`` when scraped."""
        self.connections.set_function(lambda: len(node.protocols))
        self.torrents.set_function(lambda: len(node.scheduler.torrents))
