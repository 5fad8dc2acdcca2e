"""
Tracker load benchmark: ``python -m bench.tracker_load [--seconds 20] [--store memory|redis|both]``.

Runs ``twistd kraken-tracker`` as a separate process on 127.0.0.1 (with a stub
origin process answering locations and peer contexts, and a redis-server for
the Redis store), makes each of 10,000 simulated peers (100 torrents) announce
once, then drives announces of random peers from lean load-generator processes
(asyncio, pre-built raw HTTP/1.1 requests pipelined on keep-alive connections,
only the status line and framing parsed), so that a generator costs much less
CPU than the tracker it loads.

Two modes: closed loop (default; ``--depth`` requests in flight per
connection, as fast as the tracker answers: the tracker's capacity) and open
loop (``--rate N``: N announces/s offered on a fixed schedule, latency counted
from each request's scheduled time: the latency at a given load).

The headline is the tracker's CPU per announce, as announces per tracker core
(announces/s divided by the tracker process's user+system CPU seconds per wall
second, from /proc), which does not depend on whether the generators could
saturate the tracker on a small machine.  Goal (issue 4): 3,334 announces/s
on one core with p99 below 50 ms.  Results are printed as JSON (``--out``
writes them to a file; ``--profile PREFIX`` py-spies the tracker).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

PEERS = 10_000
TORRENTS = 100


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    """Block until something listens on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of process ``pid``."""
    return sum(cpu_times(pid))


# -- stub origin -------------------------------------------------------------------------------


def serve_origin(port: int) -> None:
    """A stub origin: every blob lives here; enough for the tracker's announce path."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from kraken.core import PeerID

    address = f"127.0.0.1:{port}"
    context = json.dumps(
        {
            "peer_id": PeerID.from_address("127.0.0.1", port).hex,
            "ip": "127.0.0.1",
            "port": port,
            "origin": True,
        }
    ).encode()

    class Origin(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            path = request.path.decode()
            if path.endswith("/locations"):
                request.setHeader(b"Origin-Locations", address.encode())
                return b""
            if path == "/internal/peercontext":
                return context
            return b"OK"

    reactor.listenTCP(port, Site(Origin()), interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


# -- load generator ----------------------------------------------------------------------------


def announce_requests(port: int) -> list[bytes]:
    """
    One raw ``POST /announce`` HTTP/1.1 request per simulated peer, built once.

    Peer ``i`` downloads torrent ``i % 100``, so every torrent has 100 peers.
    The bodies are what :class:`kraken.peers.announce.AnnounceRequest` sends.
    Every peer has its own address (10.x.y.z), but the generators all connect
    from 127.0.0.1: the tracker is configured to trust 127.0.0.1 as a
    forwarder and each request says where it comes from in
    ``X-Forwarded-For``, so the tracker checks every announce's address as
    it would behind a load balancer (issue 18).
    """
    from kraken.core import Digest, InfoHash, PeerID, PeerInfo
    from kraken.peers.announce import AnnounceRequest

    # BENCH_PROGRESS_PIECES=N: every announce carries the ``progress`` of a downloading agent
    # holding a random half of N pieces, as agents send while they download (the swarm page).
    pieces = int(os.environ.get("BENCH_PROGRESS_PIECES", "0"))
    rng = random.Random(1)

    torrents = [
        (Digest.of_bytes(b"blob %d" % i), InfoHash(Digest.of_bytes(b"ih %d" % i).hex))
        for i in range(TORRENTS)
    ]
    requests = []
    for i in range(PEERS):
        digest, ih = torrents[i % TORRENTS]
        peer = PeerInfo(PeerID(f"{i:040x}"), f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 16001)
        obj = AnnounceRequest(digest, ih, peer).to_dict()
        if pieces:
            have = bytearray(rng.randbytes((pieces + 7) // 8))
            if pieces % 8:
                have[-1] &= 0xFF ^ (0xFF >> (pieces % 8))
            obj["progress"] = {
                "pieces": pieces,
                "length": pieces * 256 * 1024,
                "have": base64.b64encode(bytes(have)).decode("ascii"),
            }
        body = json.dumps(obj).encode()
        requests.append(
            b"POST /announce/%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Forwarded-For: %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (ih.hex.encode(), port, peer.ip.encode(), len(body), body)
        )
    return requests


def _dechunk(body: bytes) -> bytes:
    """The payload of a chunked HTTP/1.1 body."""
    out: list[bytes] = []
    pos = 0
    while True:
        k = body.index(b"\r\n", pos)
        size = int(body[pos:k].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[k + 2 : k + 2 + size])
        pos = k + 2 + size + 2


class _Generator:
    """The state shared by one generator process's connections."""

    def __init__(self, requests: list[bytes], seed: int, sequential: bool) -> None:
        self.requests = requests
        self.rng = random.Random(seed)
        self.sequential = sequential
        self.cursor = 0
        self.latencies: list[float] = []
        self.errors = 0
        self.running = True
        self.sample_in = 1
        self.peer_counts: list[int] = []
        # Open loop: announces due but not sent yet (every connection had its maximum in flight).
        self.backlog: collections.deque[float] = collections.deque()
        self.idle: list[_Pipeline] = []

    def next_request(self) -> bytes:
        """The next announce: a random peer's, or in warm-up every peer's in turn."""
        if self.sequential:
            self.cursor += 1
            if self.cursor >= len(self.requests):
                self.running = False
            return self.requests[(self.cursor - 1) % len(self.requests)]
        return self.requests[self.rng.randrange(len(self.requests))]

    def sample(self, head: bytes, body: bytes) -> None:
        """Decode one answer in 100 and keep its peer count (a check that answers are real)."""
        self.sample_in -= 1
        if self.sample_in == 0:
            self.sample_in = 100
            if b"chunked" in head:
                body = _dechunk(body)
            self.peer_counts.append(len(json.loads(body)["peers"]))


class _Pipeline(asyncio.Protocol):
    """
    One keep-alive HTTP/1.1 connection, with up to ``depth`` requests in flight (pipelined).

    In closed-loop mode it keeps ``depth`` requests in flight; in open-loop
    mode (``open_loop``) it sends announces that fell due (the generator's
    backlog) whenever it has fewer than ``depth`` in flight, and latency counts
    from each announce's scheduled time, so time queued in the generator
    counts too (no coordinated omission).
    Responses are framed by ``Content-Length`` or chunked encoding; only the
    status line is checked (and one body in 100 decoded).
    """

    def __init__(self, gen: _Generator, depth: int, open_loop: bool) -> None:
        self.gen, self.depth, self.open_loop = gen, depth, open_loop
        self.buf = bytearray()
        self.sent: collections.deque[float] = collections.deque()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        """Keep the transport."""
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        """Requests still in flight count as errors."""
        self.gen.errors += len(self.sent)
        self.sent.clear()

    def fill(self) -> None:
        """Closed loop: put ``depth`` requests in flight."""
        now = time.perf_counter()
        self.sent.extend([now] * self.depth)
        self.transport.write(b"".join(self.gen.next_request() for _ in range(self.depth)))

    def send_due(self) -> None:
        """Open loop: send announces from the backlog while fewer than ``depth`` are in flight."""
        backlog, n = self.gen.backlog, 0
        while backlog and len(self.sent) < self.depth:
            self.sent.append(backlog.popleft())
            n += 1
        if n:
            self.transport.write(b"".join(self.gen.next_request() for _ in range(n)))
        if len(self.sent) < self.depth:
            self.gen.idle.append(self)

    def data_received(self, data: bytes) -> None:
        """Frame the responses, time them, and (closed loop) send as many new requests."""
        buf = self.buf
        buf += data
        more = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(buf[:end]).lower()
            i = head.find(b"content-length:")
            if i >= 0:
                j = head.find(b"\r\n", i)
                total = end + 4 + int(head[i + 15 : j if j >= 0 else None])
                if len(buf) < total:
                    break
            elif b"chunked" in head:
                total, pos = -1, end + 4
                while True:
                    k = buf.find(b"\r\n", pos)
                    if k < 0:
                        break
                    size = int(bytes(buf[pos:k]).split(b";")[0], 16)
                    if size == 0:
                        if len(buf) >= k + 4:
                            total = k + 4
                        break
                    pos = k + 2 + size + 2
                if total < 0:
                    break
            else:
                total = end + 4
            ok = head[9:12] == b"200"
            if ok:
                self.gen.sample(head, bytes(buf[end + 4 : total]))
            del buf[:total]
            started = self.sent.popleft()
            if ok:
                self.gen.latencies.append(time.perf_counter() - started)
            else:
                self.gen.errors += 1
            if self.gen.running and not self.open_loop:
                more += 1
        if self.open_loop:
            if self.gen.running and self not in self.gen.idle:
                self.send_due()
        elif more:
            now = time.perf_counter()
            self.sent.extend([now] * more)
            self.transport.write(b"".join(self.gen.next_request() for _ in range(more)))


def generate(
    port: int,
    *,
    seconds: float,
    connections: int,
    depth: int,
    rate: float,
    seed: int,
    warmup: bool,
    start_at: float,
) -> None:
    """
    Announce for ``seconds`` over ``connections`` keep-alive connections; print JSON results.

    ``rate`` > 0: open loop, ``rate`` announces/s on a fixed schedule, sent on
    connections with fewer than ``depth`` in flight, latency counted from each
    announce's scheduled time.  ``rate`` == 0: closed loop, ``depth`` requests
    in flight per connection, as fast as the tracker answers.  ``warmup``:
    every peer announces once, in order, then stop.  The measured window
    starts at ``start_at`` (``time.time()``), so that every generator and the
    driver's CPU sampling share it.
    """
    gen = _Generator(announce_requests(port), seed, sequential=warmup)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conns: list[_Pipeline] = []
        for _ in range(connections):
            _, proto = await loop.create_connection(
                lambda: _Pipeline(gen, depth, open_loop=bool(rate)), "127.0.0.1", port
            )
            conns.append(proto)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0, start = time.process_time(), time.perf_counter()
        end = start + seconds
        if rate:
            scheduled = 0
            gen.idle = list(conns)
            while gen.running:
                now = time.perf_counter()
                if now >= end:
                    break
                due = int((now - start) * rate)
                gen.backlog.extend(start + i / rate for i in range(scheduled, due))
                scheduled = due
                idle, gen.idle = gen.idle, []
                for c in idle:
                    c.send_due()
                await asyncio.sleep(0.001)
        else:
            for c in conns:
                c.fill()
            while gen.running and time.perf_counter() < end:  # noqa: ASYNC110 - clock poll
                await asyncio.sleep(0.01)
        gen.running = False
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        counted = len(gen.latencies)
        unsent = len(gen.backlog)
        gen.backlog.clear()
        # Let the requests in flight finish (their latencies count, not in the rate).
        drain_end = time.perf_counter() + 10
        while any(c.sent for c in conns) and time.perf_counter() < drain_end:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        lost = sum(len(c.sent) for c in conns)
        for c in conns:
            c.sent.clear()
            c.transport.close()
        print(
            json.dumps(
                {
                    "latencies": gen.latencies,
                    "counted": counted,
                    "errors": gen.errors + lost,
                    "unsent": unsent,
                    "wall": wall,
                    "cpu": cpu,
                    "peer_counts": gen.peer_counts,
                }
            )
        )

    asyncio.run(main())


# -- driver ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _start_tracker(store: str, work: str, procs: list[Any]) -> tuple[Any, Any]:
    """Start the stub origin, redis-server (Redis store) and the tracker: (tracker, redis)."""
    origin_port = free_port()
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "bench.tracker_load", "--serve-origin", str(origin_port)]
        )
    )
    wait_port(origin_port)
    config = (
        f"origin:\n  hosts:\n    static: ['127.0.0.1:{origin_port}']\n"
        "  healthcheck:\n    enabled: false\n"
        "admission:\n  trusted_forwarders: ['127.0.0.1/32']\n"
    )
    redis = None
    if store == "redis":
        redis_port = free_port()
        redis = subprocess.Popen(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                *("--port", str(redis_port), "--bind", "127.0.0.1", "--dir", work),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
        )
        procs.append(redis)
        wait_port(redis_port)
        config += (
            f"peer_store:\n  kind: redis\n  redis:\n    address: 127.0.0.1:{redis_port}\n"
            f"    pool_size: {os.environ.get('BENCH_REDIS_POOL', '10')}\n"
        )
    path = os.path.join(work, f"tracker-{store}.yaml")
    with open(path, "w") as f:
        f.write(config)
    port = free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tracker = subprocess.Popen(
        [
            "twistd",
            *("-n", "--pidfile=", "--logfile", os.path.join(work, f"tracker-{store}.log")),
            *("kraken-tracker", "--config", path),
            *("--listen", f"tcp:{port}:interface=127.0.0.1"),
        ],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        },
    )
    procs.append(tracker)
    wait_port(port)
    tracker.port = port  # type: ignore[attr-defined]
    return tracker, redis


def _tracker_latency(port: int) -> dict[str, float]:
    """
    From the tracker's own histogram (parse to answer, store round trip included): the share
    of all announces (warm-up included) answered within each bucket, in milliseconds.
    """
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kraken_tracker_announce_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
    total = buckets.get("+Inf", 0.0) or 1.0
    return {
        ("inf" if le == "+Inf" else f"{float(le) * 1000:g}"): round(n / total, 4)
        for le, n in buckets.items()
    }


def run(
    store: str,
    *,
    seconds: float,
    workers: int,
    connections: int,
    depth: int,
    rate: float,
    work: str,
    profile: str | None = None,
    nice: int = 0,
) -> dict[str, Any]:
    """One benchmark run against a fresh tracker with ``store``."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        tracker, redis = _start_tracker(store, work, procs)
        for p in procs:  # the stub origin, redis-server, the tracker
            if nice:
                os.setpriority(os.PRIO_PROCESS, p.pid, nice)

        def generator(seed: int, secs: float, rate: float, start_at: float, *extra: str) -> Any:
            return subprocess.Popen(
                [
                    *(sys.executable, "-m", "bench.tracker_load"),
                    *("--generate", str(tracker.port), "--seconds", str(secs)),
                    *("--connections", str(connections), "--depth", str(depth)),
                    *("--rate", str(rate), "--seed", str(seed), "--start-at", str(start_at)),
                    *extra,
                ],
                stdout=subprocess.PIPE,
            )

        # Warm up: every peer announces once, so the stores hold 10,000 entries.
        warm = json.loads(generator(999, 120, 0, 0, "--warmup").communicate()[0])
        if warm["errors"]:
            raise RuntimeError(f"{warm['errors']} announces failed during the warm-up")
        start_at = time.time() + 3.0  # the generators start, import and connect meanwhile
        gens = [generator(i, seconds, rate / workers, start_at) for i in range(workers)]
        for g in gens:
            if nice:
                os.setpriority(os.PRIO_PROCESS, g.pid, nice)
        time.sleep(max(0.0, start_at - time.time()))
        spy = None
        if profile:
            spy = subprocess.Popen(
                [
                    *("py-spy", "record", "--pid", str(tracker.pid)),
                    *("--duration", str(int(seconds)), "--rate", "250", "--nonblocking"),
                    *("--format", "raw" if profile.endswith(".txt") else "flamegraph"),
                    *("-o", profile),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        wall0 = time.monotonic()
        user0, sys0 = cpu_times(tracker.pid)
        redis0 = cpu_seconds(redis.pid) if redis else 0.0
        gen0 = sum(cpu_seconds(g.pid) for g in gens)
        time.sleep(seconds)
        wall1 = time.monotonic()
        user1, sys1 = cpu_times(tracker.pid)
        redis1 = cpu_seconds(redis.pid) if redis else 0.0
        gen1 = sum(cpu_seconds(g.pid) for g in gens)
        outputs = [json.loads(g.communicate()[0]) for g in gens]
        inside = _tracker_latency(tracker.port)
        if spy:
            spy.wait()
        wall = wall1 - wall0
        latencies = [x for o in outputs for x in o["latencies"]]
        done = sum(o["counted"] for o in outputs)
        per_second = done / max(o["wall"] for o in outputs)
        tracker_cpu = (user1 - user0 + sys1 - sys0) / wall
        peer_counts = [n for o in outputs for n in o["peer_counts"]]
        return {
            "store": store,
            "tracker_nice": nice,
            "mode": f"open loop, {rate:g}/s offered" if rate else "closed loop",
            "depth": depth,
            "seconds": round(wall, 2),
            "generators": workers,
            "connections": workers * connections,
            "announces": done,
            "errors": sum(o["errors"] for o in outputs),
            "unsent_at_end": sum(o.get("unsent", 0) for o in outputs),
            "announces_per_second": round(per_second, 1),
            "tracker_cpu": round(tracker_cpu, 2),
            "tracker_sys_share": round((sys1 - sys0) / max(1e-9, user1 - user0 + sys1 - sys0), 2),
            "announces_per_tracker_core": round(per_second / tracker_cpu, 1),
            "tracker_cpu_us_per_announce": round(1e6 * tracker_cpu / per_second, 1),
            "redis_cpu": round((redis1 - redis0) / wall, 2) if redis else None,
            "generator_cpu": round((gen1 - gen0) / wall, 2),
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "max_ms": round(max(latencies) * 1000, 2),
            "peers_per_answer": round(sum(peer_counts) / max(1, len(peer_counts)), 1),
            "in_tracker_share_under_ms": inside,
        }
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--store", choices=["memory", "redis", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1, help="load generator processes")
    parser.add_argument(
        "--connections", type=int, default=32, help="keep-alive connections per generator"
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=1,
        help="requests in flight per connection (more than 1: HTTP pipelining)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open loop: announces/s offered in total (0: closed loop, as fast as answered)",
    )
    parser.add_argument(
        "--profile",
        help="py-spy the tracker into this file (STORE is replaced by the store's name; "
        "*.txt: collapsed stacks, else a flame graph SVG)",
    )
    parser.add_argument(
        "--tracker-nice",
        type=int,
        default=0,
        help="nice value of the tracker, redis-server, stub origin and generators (negative, as "
        "root: favour them over other work on a shared machine, approximating cores of their own)",
    )
    parser.add_argument("--out", help="write the JSON results here too")
    parser.add_argument("--serve-origin", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_origin:
        serve_origin(args.serve_origin)
        return
    if args.generate:
        generate(
            args.generate,
            seconds=args.seconds,
            connections=args.connections,
            depth=args.depth,
            rate=args.rate,
            seed=args.seed,
            warmup=args.warmup,
            start_at=args.start_at,
        )
        return
    stores = ["memory", "redis"] if args.store == "both" else [args.store]
    with tempfile.TemporaryDirectory(prefix="kraken-tracker-bench-") as work:
        results = [
            run(
                s,
                seconds=args.seconds,
                workers=args.workers,
                connections=args.connections,
                depth=args.depth,
                rate=args.rate,
                work=work,
                profile=args.profile.replace("STORE", s) if args.profile else None,
                nice=args.tracker_nice,
            )
            for s in stores
        ]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
