"""
A simulated swarm (origins, agents, a tracker) built from options, run, and reported.

:func:`simulate` is the library entry point (tests use it); :func:`main` is
``python -m bench.sim``.  The report mirrors ``bench.swarm``: completion times as
ratios to the Kumar-Ross bound, origin egress in blob sizes, and a last line of JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import attrs
from attrs import define, field

from bench.common import parse_seconds, parse_size
from bench.sim.network import Simulation
from bench.sim.nodes import Delays, SimNode, SimTracker
from bench.swarm import (
    _percentile,
    add_engine_settings,
    add_swarm_shape,
    kumar_ross_bound,
)
from kraken.core import DEFAULT_PIECE_LENGTHS, Bitfield, Digest, MetaInfo, PeerID, PeerInfo
from kraken.core.metainfo import num_pieces_for
from kraken.torrent.actions import EngineConfig
from kraken.torrent.scheduler import Scheduler

__all__ = ["SimOptions", "SimResult", "main", "simulate", "synthetic_metainfo"]

NAMESPACE = "bench/sim"
ORIGIN_PEER_PORT = 15001
AGENT_PEER_PORT = 16001
_ENGINE_FIELDS = {f.name: f for f in attrs.fields(EngineConfig)}


def engine_config(settings: dict[str, Any], **fixed: Any) -> EngineConfig:
    """An EngineConfig from ``scheduler`` keys as ``--agent-set`` gives them (``15s`` too)."""
    values: dict[str, Any] = {}
    for key, value in settings.items():
        f = _ENGINE_FIELDS.get(key)
        if f is None or key in ("announce", "origin"):
            raise ValueError(f"{key!r} is not an engine setting ({', '.join(_ENGINE_FIELDS)})")
        if isinstance(value, str):
            values[key] = None if value.lower() in ("null", "none") else parse_seconds(value)
        else:
            values[key] = value
    values.update(fixed)
    return EngineConfig(**values)


def synthetic_metainfo(size: int, piece_length: int, seed: int) -> MetaInfo:
    """Metainfo of a blob that does not exist: deterministic fake digest and piece hashes.

    Pieces are never verified in the simulation, so the hashes only need the right shape.
    """
    n = num_pieces_for(size, piece_length)
    base = f"bench.sim:{seed}:{size}:{piece_length}".encode()
    hashes = tuple(hashlib.sha256(base + i.to_bytes(8, "big")).digest() for i in range(n))
    digest = Digest.parse("sha256:" + hashlib.sha256(base).hexdigest())
    return MetaInfo(digest, size, piece_length, hashes)


@define
class SimOptions:
    """Shape of a simulated swarm."""

    agents: int = 20
    origins: int = 2
    size: int = 64 * 1024**2
    #: Upload and download of every agent, bytes/s.
    rate: float = 4 * 1024**2
    #: Upload and download of every origin (None: ``rate``).
    origin_rate: float | None = None
    piece_length: int | None = None
    latency: float = 0.001
    overhead: float = 1.0
    seed: int = 1
    #: Agents start uniformly within this many seconds (0: all at once).
    start_jitter: float = 0.0
    #: Interval the tracker tells agents to announce at (the tracker's default).
    announce_interval: float = 3.0
    agent_scheduler: dict[str, Any] = field(factory=dict)
    origin_scheduler: dict[str, Any] = field(factory=dict)
    delays: Delays = field(factory=Delays)
    #: Recompute fair shares at most this often (s of simulated time; 0: on every change).
    rate_quantum: float = 0.0
    #: Give up after this much simulated time.
    max_time: float = 3600.0


@define
class SimResult:
    """What a run produced."""

    options: SimOptions
    #: Completion time of each agent from its start (None: did not finish).
    times: list[float | None]
    bound: float
    origin_payload_bytes: float
    events: int
    wall_s: float
    reflows: int
    end: float
    nodes: list[SimNode]
    piece_length: int
    #: The network's per-second wire bytes of every link (``Network.carried``).
    carried: list[list[float]] = field(factory=list)

    @property
    def complete(self) -> bool:
        """Whether every agent finished."""
        return all(t is not None for t in self.times)

    def summary(self) -> dict[str, Any]:
        """The last line of the report (as bench.swarm's, without CPU)."""
        times = [t for t in self.times if t is not None]
        size = self.options.size
        return {
            "p50_ratio": round(_percentile(times, 50) / self.bound, 3) if times else None,
            "p99_ratio": round(_percentile(times, 99) / self.bound, 3) if times else None,
            "max_ratio": round(max(times) / self.bound, 3) if self.complete else None,
            "origin_egress_ratio": round(self.origin_payload_bytes / size, 3),
            "events": self.events,
            "wall_s": round(self.wall_s, 2),
        }

    def timeline(self) -> list[dict[str, float]]:
        """
        Per second of simulated time: ``t`` (its end), ``agents_rx`` and ``agents_tx`` (the
        share of the agents' download / upload capacity that piece payloads used, wire
        bytes with ``overhead``), ``origins_tx`` (the same for the origins' upload).
        """
        carried = self.carried
        agents = [n.host for n in self.nodes if not n.scheduler.config.origin]
        origins = [n.host for n in self.nodes if n.scheduler.config.origin]
        groups = {
            "agents_rx": [(2 * h.index + 1, h.down) for h in agents],
            "agents_tx": [(2 * h.index, h.up) for h in agents],
            "origins_tx": [(2 * h.index, h.up) for h in origins],
        }
        seconds = max(len(c) for c in carried) if carried else 0
        steps = []
        for s in range(seconds):
            step = {"t": float(s + 1)}
            for key, links in groups.items():
                capacity = sum(c for _, c in links)
                used = sum(carried[i][s] for i, _ in links if s < len(carried[i]))
                step[key] = round(used / capacity, 4) if capacity else 0.0
            steps.append(step)
        return steps

    def detail(self) -> dict[str, Any]:
        """Everything worth keeping of the run (``--json``)."""
        times = [t for t in self.times if t is not None]
        agents = [n for n in self.nodes if not n.scheduler.config.origin]
        payloads = sum(n.stats.payloads for n in agents) or 1
        opts = attrs.asdict(self.options)
        return {
            "options": opts,
            "bound_s": self.bound,
            "times_s": sorted(times),
            "unfinished": len(self.times) - len(times),
            "p50_s": _percentile(times, 50) if times else None,
            "p99_s": _percentile(times, 99) if times else None,
            "max_s": max(times) if times else None,
            "mean_s": statistics.fmean(times) if times else None,
            "origin_payload_bytes": self.origin_payload_bytes,
            "piece_length": self.piece_length,
            "simulated_s": self.end,
            "reflows": self.reflows,
            "mean_request_queued_s": sum(n.stats.queued for n in agents) / payloads,
            "mean_payload_transfer_s": sum(n.stats.transfer for n in agents) / payloads,
            "pieces_from_origins": sorted(n.stats.from_origins for n in agents),
            "payloads_discarded": sum(n.stats.discarded for n in agents),
            "timeline": self.timeline(),
            "summary": self.summary(),
        }


def simulate(options: SimOptions) -> SimResult:
    """Build the swarm of ``options``, run it until every agent is done (or max_time)."""
    started = time.perf_counter()
    rng = random.Random(options.seed)
    sim = Simulation(options.overhead, options.rate_quantum)
    net = sim.network
    piece_length = options.piece_length or DEFAULT_PIECE_LENGTHS.for_size(options.size)
    meta = synthetic_metainfo(options.size, piece_length, options.seed)
    tracker = SimTracker(
        sim,
        random.Random(rng.getrandbits(64)),
        interval=options.announce_interval,
        latency=options.latency,
    )
    directory: dict[PeerID, SimNode] = {}
    origin_rate = options.origin_rate or options.rate

    def make_node(name: str, info: PeerInfo, rate: float, config: EngineConfig) -> SimNode:
        host = net.add_host(name, rate, rate, options.latency)
        scheduler = Scheduler(
            info.peer_id, lambda: sim.now, random.Random(rng.getrandbits(64)), config
        )
        node = SimNode(
            sim,
            host,
            scheduler,
            info=info,
            directory=directory,
            tracker=tracker,
            delays=options.delays,
        )
        directory[info.peer_id] = node
        return node

    origins: list[SimNode] = []
    for i in range(options.origins):
        ip = f"10.77.0.{20 + i}"
        info = PeerInfo(
            PeerID.from_address(ip, ORIGIN_PEER_PORT),
            ip,
            ORIGIN_PEER_PORT,
            origin=True,
            complete=True,
        )
        config = engine_config(options.origin_scheduler, origin=True, announce=False)
        origins.append(make_node(f"o{i}", info, origin_rate, config))
        tracker.origins.append(info)
    agents: list[SimNode] = []
    for i in range(options.agents):
        ip = f"10.77.{1 + i // 250}.{1 + i % 250}"
        info = PeerInfo(PeerID(rng.randbytes(20).hex()), ip, AGENT_PEER_PORT)
        config = engine_config(options.agent_scheduler)
        agents.append(make_node(f"a{i}", info, options.rate, config))

    def start_origin(node: SimNode) -> None:
        node.start()
        have = Bitfield(meta.num_pieces, full=True)
        node.run(node.scheduler.add_torrent(meta, NAMESPACE, have, complete=True))

    remaining = [len(agents)]

    def waiter_of(node: SimNode) -> Callable[[BaseException | None], None]:
        def finished(error: BaseException | None) -> None:
            node.finished(error)
            if error is None:
                remaining[0] -= 1

        return finished

    def start_agent(node: SimNode) -> None:
        node.start()
        have = Bitfield(meta.num_pieces)
        node.run(node.scheduler.add_torrent(meta, NAMESPACE, have, waiter=waiter_of(node)))

    for node in origins:
        sim.call_at(0.0, start_origin, node)
    for node in agents:
        at = rng.uniform(0, options.start_jitter) if options.start_jitter > 0 else 0.0
        sim.call_at(at, start_agent, node)
    sim.run(until=options.max_time, stop=lambda: not remaining[0])
    net.settle()
    times = [None if a.done is None or a.started is None else a.done - a.started for a in agents]
    bound = kumar_ross_bound(
        options.size, options.agents, options.origins * origin_rate, options.rate, options.rate
    )
    return SimResult(
        options=options,
        times=times,
        bound=bound,
        origin_payload_bytes=sum(o.host.payload_sent for o in origins),
        events=sim.events,
        wall_s=time.perf_counter() - started,
        reflows=net.reflows,
        end=sim.now,
        nodes=[*origins, *agents],
        piece_length=piece_length,
        carried=net.carried,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sim",
        description="Discrete-event simulation of a swarm running the real P2P engine.",
    )
    add_swarm_shape(parser)
    parser.add_argument(
        "--origin-rate", type=parse_size, default=None, help="origins' capacity (default --rate)"
    )
    parser.add_argument(
        "--piece-length",
        type=parse_size,
        default=None,
        help="metainfo piece length (default: kraken.core's table, 256KiB under 256MiB)",
    )
    parser.add_argument(
        "--announce-interval",
        type=parse_seconds,
        default=3.0,
        help="interval the tracker hands out, seconds (default 3)",
    )
    add_engine_settings(parser)
    parser.add_argument(
        "--latency", type=parse_seconds, default=0.001, help="one-way latency (default 1ms)"
    )
    parser.add_argument(
        "--overhead",
        type=float,
        default=1.0,
        help="wire bytes per payload byte (1.04: TCP/IP headers; default 1.0)",
    )
    parser.add_argument(
        "--start-jitter",
        type=parse_seconds,
        default=0.0,
        help="agents start uniformly within this time (default 0: all at once)",
    )
    parser.add_argument(
        "--read-delay",
        type=parse_seconds,
        default=Delays().read_per_mib,
        help="reading a piece to send, per MiB (default 2ms)",
    )
    parser.add_argument(
        "--write-delay",
        type=parse_seconds,
        default=Delays().write_per_mib,
        help="verifying and writing a received piece, per MiB (default 4ms)",
    )
    parser.add_argument(
        "--rate-quantum",
        type=parse_seconds,
        default=0.0,
        help="recompute fair shares at most this often (default 0: on every change)",
    )
    parser.add_argument(
        "--max-time", type=parse_seconds, default=3600.0, help="simulated time limit (s)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="OUT", default=None, help="write the run's detail here")
    return parser


def options_from(args: argparse.Namespace) -> SimOptions:
    """SimOptions from parsed command-line arguments."""
    return SimOptions(
        agents=args.agents,
        origins=args.origins,
        size=args.size,
        rate=args.rate,
        origin_rate=args.origin_rate,
        piece_length=args.piece_length,
        latency=args.latency,
        overhead=args.overhead,
        seed=args.seed,
        start_jitter=args.start_jitter,
        announce_interval=args.announce_interval,
        agent_scheduler=dict(args.agent_set),
        origin_scheduler=dict(args.origin_set),
        delays=Delays(read_per_mib=args.read_delay, write_per_mib=args.write_delay),
        rate_quantum=args.rate_quantum,
        max_time=args.max_time,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line; see the package docstring."""
    args = _parser().parse_args(argv)
    try:
        options = options_from(args)
        engine_config(options.agent_scheduler)
        engine_config(options.origin_scheduler)
    except (ValueError, TypeError) as e:
        print(f"bench.sim: {e}", file=sys.stderr)
        return 2
    result = simulate(options)
    detail = result.detail()
    mib = 1024**2
    print(
        f"{options.agents} agents, {options.origins} origins, {options.size / mib:g} MiB in "
        f"pieces of {result.piece_length / 1024:g} KiB, "
        f"{options.rate / mib:g} MiB/s per host; bound {result.bound:.2f} s"
    )
    if detail["unfinished"]:
        print(f"{detail['unfinished']} agents did not finish in {options.max_time:g} s")
    if detail["p50_s"] is not None:
        from_origins = detail["pieces_from_origins"]
        print(
            f"completion p50 {detail['p50_s']:.2f} s, p99 {detail['p99_s']:.2f} s, "
            f"max {detail['max_s']:.2f} s; origins sent "
            f"{result.origin_payload_bytes / options.size:.2f} blobs; pieces from origins "
            f"per agent {min(from_origins)}-{max(from_origins)}; on average a request waits "
            f"{detail['mean_request_queued_s']:.3f} s for its payload to start, a payload "
            f"takes {detail['mean_payload_transfer_s']:.3f} s"
        )
    timeline = detail["timeline"]
    for key, what in (("agents_rx", "agents received"), ("origins_tx", "origins sent")):
        shares = " ".join(f"{100 * step[key]:.0f}" for step in timeline)
        print(f"{what}, % of their links in each second: {shares}")
    print(
        f"{result.events} events, {result.reflows} rate recomputes, "
        f"{result.end:.2f} simulated s in {result.wall_s:.1f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(detail, f, indent=1)
    print(json.dumps(result.summary()))
    return 0 if result.complete else 1
