"""
What the engine asks its driver to do, and its configuration.

Every engine method returns a list of these actions; the driver (Twisted
protocol, simulator or test) performs them in order and reports results
back as further method calls.
"""

from __future__ import annotations

from typing import NewType

from attrs import frozen

from kraken.core import Digest, InfoHash, PeerInfo
from kraken.torrent.messages import Message

#: Engine-allocated identity of one connection (pending or active).
ConnId = NewType("ConnId", int)


@frozen
class EngineConfig:
    """Tunables of the engine (DESIGN 5); times in seconds."""

    max_conns_per_torrent: int = 10
    #: Of those, at most this many dialled by us; the rest wait for peers that dial us,
    #: so that the first peers of a swarm do not fill every slot among themselves and
    #: shut the later ones out (bench.sim, docs/benchmarks.md). None: all of them.
    max_dials_per_torrent: int | None = 5
    #: DESIGN 5 says 3 and 5 "tune by benchmark": 2 and 1 are the swarm benchmark's
    #: (docs/benchmarks.md, "Multi-host swarm").
    pipeline_limit: int = 2
    origin_pipeline_limit: int = 1
    #: Endgame starts when this many pieces or fewer are missing (None: pipeline_limit).
    endgame_threshold: int | None = None
    request_min_timeout: float = 4.0
    request_timeout_per_mib: float = 4.0
    blacklist_duration: float = 30.0
    conn_idle_timeout: float = 30.0
    conn_lifetime: float = 3600.0
    seeder_tti: float = 300.0
    leecher_tti: float = 300.0
    announce_interval: float = 3.0
    complete_announce_interval: float = 30.0
    max_announce_interval: float = 60.0
    #: Requests a peer may have queued with us before it counts as abuse.
    max_upload_queue: int = 64
    #: Pieces of one torrent sent at the same time (over all its connections; the
    #: others wait their turn, oldest first); None: every connection at once.
    upload_slots: int | None = None
    #: Ask origins only while fewer requests than this are outstanding to agents (None:
    #: whenever an origin has a piece no connected agent can give). 12 kept the swarm
    #: benchmark's origin egress near 2 blob sizes until origins refused duplicates
    #: (``origin_spread_window``); with that, None is faster at lower egress.
    origin_fallback_below: int | None = None
    #: An origin answers a request for a piece it accepted a request for from another
    #: peer less than this long ago with ERROR(SENT_ELSEWHERE): the piece is on its way
    #: into the swarm, and the origin's upload goes to pieces it has not sent (None: never).
    origin_spread_window: float | None = 10.0
    #: Incoming connections of one torrent from one source (the driver's key for the
    #: remote address: an IPv4 address, an IPv6 /64), so that one host cannot hold the
    #: slots others need (issue 18).  2 leaves room for a restarted agent's new connection
    #: beside its old one; hosts sharing an address (NAT, several agents on one host, the
    #: herd on 127.0.0.1) need more.  None: no limit.
    max_conns_per_address: int | None = 2
    #: Of ``max_conns_per_torrent``, slots that an incoming connection takes only if it
    #: is vouched for: the tracker handed its peer id to us in the last
    #: ``handout_memory`` seconds, or its handshake offers pieces we lack.  Others that
    #: find the rest full take the slot of a connection that has not been useful, or
    #: are refused.  0 for origins, which nobody is vouched for.
    reserved_conns_per_torrent: int = 0
    handout_memory: float = 60.0
    #: An incoming connection that has shown nothing useful (see kraken.torrent.scheduler)
    #: this long after its handshake may lose its slot to a newcomer; younger ones may
    #: not (a swarm's peers arrive at once, each needing a round trip to show its worth).
    useful_within: float = 1.0
    #: Whether this node announces to a tracker (origins do not).
    announce: bool = True
    #: Whether this node is an origin (advertised in the handshake).
    origin: bool = False

    def endgame(self) -> int:
        """The effective endgame threshold."""
        return self.pipeline_limit if self.endgame_threshold is None else self.endgame_threshold

    def request_timeout(self, piece_length: int) -> float:
        """
        max(min timeout, per-MiB timeout x piece MiB): how long a peer with requests
        outstanding may make no progress (kraken.torrent.dispatch, docs/protocol.md).
        """
        return max(
            self.request_min_timeout,
            self.request_timeout_per_mib * piece_length / (1024 * 1024),
        )


@frozen
class Send:
    """Send a control message on a connection."""

    conn: ConnId
    message: Message


@frozen
class SendPiece:
    """Read piece ``index`` (off the reactor thread) and stream it as PIECE_PAYLOAD.

    Report ``piece_sent`` or ``send_failed`` when done; the engine sends at most one
    piece at a time per connection.
    """

    conn: ConnId
    infohash: InfoHash
    index: int


@frozen
class Close:
    """Close a connection; the engine has already forgotten it."""

    conn: ConnId
    reason: str
    blacklisted: bool = False


@frozen
class Dial:
    """Open a connection to ``peer`` for a torrent and send our handshake."""

    conn: ConnId
    infohash: InfoHash
    peer: PeerInfo


@frozen
class Announce:
    """Announce to the tracker; report ``announce_result`` or ``announce_failed``."""

    infohash: InfoHash
    digest: Digest
    namespace: str
    complete: bool


@frozen
class Commit:
    """Every piece is stored: make the blob final; report ``commit_done`` or ``commit_failed``."""

    infohash: InfoHash


@frozen
class TorrentDropped:
    """The engine no longer tracks this torrent (idle); the driver may release its storage."""

    infohash: InfoHash
    complete: bool


Action = Send | SendPiece | Close | Dial | Announce | Commit | TorrentDropped
