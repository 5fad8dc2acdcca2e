"""
Discrete-event simulation of a swarm running the real P2P engine (``python -m bench.sim``).

``python -m bench.sim --agents 20 --origins 2 --size 64MiB --rate 4MiB --seed 1
[--piece-length 256KiB] [--agent-set KEY=VALUE ...] [--origin-set KEY=VALUE ...]
[--latency 1ms] [--overhead 1.0] [--start-jitter 0] [--rate-quantum 0] [--json OUT]``

Every node is a real :class:`kraken.torrent.scheduler.Scheduler` (agents with the
daemons' EngineConfig, origins with ``origin=True, announce=False``), driven as
``kraken.protocols.peer`` drives it, over a simulated network; nothing is sent
over a socket and no Twisted is imported.  The same seed gives the same run.

The model (docs/benchmarks.md, "Simulation"):

- **Hosts** have an upload and a download capacity in bytes/s (``--rate``, default
  4 MiB/s each way, origins the same unless ``--origin-rate``) and a one-way latency
  (``--latency``, default 1 ms; between two hosts the mean of theirs).
- **A connection** is two directed streams, each a FIFO of items: control frames
  (4-byte length prefix + the message's encoding from :mod:`kraken.torrent.messages`)
  and piece payloads (PIECE_PAYLOAD header frame + the piece's bytes).  An item is
  delivered when its last byte has crossed, plus the latency; a control frame queued
  behind a payload waits for it (head-of-line blocking, as on the wire).
- **Rates**: payloads in flight share the network max-min fairly (progressive
  filling), each limited by its sender's upload and its receiver's download (TCP's
  fair share, idealised: no slow start, no loss, no window limit).  Rates are
  recomputed when the set of payloads in flight changes (``--rate-quantum``: at most
  that often, new payloads taking the capacity left over meanwhile).  Control frames
  do not join the share: alone on a stream a frame takes size / min(up, down) (tens
  of microseconds), then the latency.  ``--overhead`` multiplies every wire byte
  (1.04 models TCP/IP headers).
- **Driver** (as ``kraken/protocols/peer.py``): a dial connects after a round trip,
  then the dialler sends its handshake; the acceptor ``accept``\\ s it (a
  HandshakeRejected or a torrent it does not have closes the connection) and answers
  with its own, which the dialler passes to ``dial_succeeded``.  Messages go to
  ``message``; a PIECE_PAYLOAD header to ``payload_start`` (RECEIVE / DISCARD /
  REJECT), the payload's last byte to ``payload_end``, and an accepted piece to
  ``piece_written`` after the verify+write delay (``--write-delay``, 4 ms per MiB,
  i.e. 2 ms per 512 KiB; writes run in parallel).  SendPiece enqueues the payload
  after the read delay (``--read-delay``, 2 ms per MiB); ``piece_sent`` is reported
  when the payload's last byte has left the sender (the real driver reports it when
  the last bytes are handed to the socket, up to a socket buffer earlier).  Close
  drops everything queued or in flight both ways at once; the other side sees the
  connection lost one latency later (``conn_lost``, or ``dial_failed`` before its
  handshake).  Commit reports ``commit_done`` after 1 ms.  ``tick`` runs every second
  from a node's start with the connections that received payload bytes since the
  last tick (or are receiving one now).  No handshake timeout: a handshake is never
  lost.  No ingress back-pressure (``MAX_UNWRITTEN``), no bandwidth limiter.
- **Tracker**: an in-process peer store (one record per agent, its ``complete``
  flag from its last announce) and :func:`kraken.peers.handout.hand_out` over a
  random sample of 51 of them plus every origin; an announce is answered one latency
  after it is sent and arrives one latency later, with ``--announce-interval``.
- **Start**: origins hold the whole blob (complete) from t = 0; every agent adds the
  torrent at t = 0 (or uniformly within ``--start-jitter``).  The metainfo is of a
  synthetic blob (fake piece hashes: pieces are not verified).

Report (as ``bench.swarm``): completion time of each agent (from its start to
``commit_done``), p50 / p99 / max as ratios to the Kumar-Ross bound
``max(F/u_seed, F/d, N*F/(u_seed + N*u))``, origin egress (piece bytes the origins
sent / F; wire headers not counted), the share of the agents' download links and of the
origins' upload links that payloads used in each second (wire bytes, ``--overhead``
included; ``timeline`` in ``--json``), and a last line of JSON ``{p50_ratio, p99_ratio,
max_ratio, origin_egress_ratio, events, wall_s}``.
"""

from bench.sim.network import Host, Network, Simulation, Stream, water_fill
from bench.sim.nodes import Delays, SimNode, SimTracker
from bench.sim.run import SimOptions, SimResult, main, simulate

__all__ = [
    "Delays",
    "Host",
    "Network",
    "SimNode",
    "SimOptions",
    "SimResult",
    "SimTracker",
    "Simulation",
    "Stream",
    "main",
    "simulate",
    "water_fill",
]
