"""
Tracker load benchmark: ``python -m bench.tracker_load [--seconds 20] [--store memory|redis|both]``.

Runs ``twistd kraken-tracker`` as a separate process on 127.0.0.1 (with a stub
origin process answering locations and peer contexts, and a redis-server for
the Redis store), then drives announces from 10,000 simulated peers over 100
torrents from several load-generator processes, and reports announces/s,
p50/p99 latency and the tracker's CPU use (user+system seconds per wall
second, from /proc).  Goal (issue 4): 3,334 announces/s on one core with p99
below 50 ms.  Results are printed as JSON (``--out`` writes them to a file).
"""

from __future__ import annotations

import argparse
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


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def generate(port: int, seconds: float, lanes: int, seed: int) -> None:
    """Announce as fast as ``lanes`` concurrent requests allow; print counts and latencies."""
    from twisted.internet import reactor
    from twisted.internet.defer import DeferredList, ensureDeferred

    from kraken.core import Digest, InfoHash, PeerID, PeerInfo
    from kraken.http.client import NO_RETRY, HTTPClientFactory
    from kraken.peers.announce import AnnounceRequest

    rng = random.Random(seed)
    torrents = [
        (Digest.of_bytes(b"blob %d" % i), InfoHash(Digest.of_bytes(b"ih %d" % i).hex))
        for i in range(TORRENTS)
    ]
    peers = [
        PeerInfo(PeerID(f"{i:040x}"), f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 16001)
        for i in range(PEERS)
    ]
    bodies = {}
    factory = HTTPClientFactory(reactor, timeout=10, retry=NO_RETRY, max_persistent_per_host=lanes)
    client = factory.client()
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds

    async def lane() -> None:
        nonlocal errors
        while time.monotonic() < end:
            p = rng.randrange(PEERS)
            t = p % TORRENTS  # each peer downloads one torrent: 100 peers per torrent
            key = (p, t)
            if key not in bodies:
                digest, ih = torrents[t]
                req = AnnounceRequest(digest, ih, peers[p])
                bodies[key] = (ih.hex, json.dumps(req.to_dict()).encode())
            ih_hex, body = bodies[key]
            started = time.perf_counter()
            try:
                response = await client.post(
                    f"http://127.0.0.1:{port}/announce/{ih_hex}", data=body
                )
                await response.content()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    async def main() -> None:
        await DeferredList([ensureDeferred(lane()) for _ in range(lanes)])
        await factory.close()

    def report(_: object) -> None:
        print(json.dumps({"latencies": latencies, "errors": errors}))
        reactor.stop()  # type: ignore[attr-defined]

    ensureDeferred(main()).addBoth(report)
    reactor.run()  # type: ignore[attr-defined]


# -- driver ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(store: str, seconds: float, workers: int, lanes: int, work: str) -> dict[str, Any]:
    """One benchmark run against a fresh tracker with ``store``."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
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
        )
        if store == "redis":
            redis_port = free_port()
            procs.append(
                subprocess.Popen(
                    [
                        shutil.which("redis-server") or "/usr/bin/redis-server",
                        "--port",
                        str(redis_port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        work,
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
            wait_port(redis_port)
            config += f"peer_store:\n  kind: redis\n  redis:\n    address: 127.0.0.1:{redis_port}\n"
        path = os.path.join(work, f"tracker-{store}.yaml")
        with open(path, "w") as f:
            f.write(config)
        port = free_port()
        tracker = subprocess.Popen(
            [
                "twistd",
                "-n",
                "--pidfile=",
                "--logfile",
                os.path.join(work, f"tracker-{store}.log"),
                "kraken-tracker",
                "--config",
                path,
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(
                    filter(
                        None,
                        [
                            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            os.environ.get("PYTHONPATH"),
                        ],
                    )
                ),
            },
        )
        procs.append(tracker)
        wait_port(port)
        # Warm up: every peer announces once, so the stores hold 10,000 entries.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.tracker_load",
                "--generate",
                str(port),
                "--seconds",
                "3",
                "--lanes",
                str(lanes),
                "--seed",
                "999",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        cpu0, wall0 = cpu_seconds(tracker.pid), time.monotonic()
        gens = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.tracker_load",
                    "--generate",
                    str(port),
                    "--seconds",
                    str(seconds),
                    "--lanes",
                    str(lanes),
                    "--seed",
                    str(i),
                ],
                stdout=subprocess.PIPE,
            )
            for i in range(workers)
        ]
        outputs = [json.loads(g.communicate()[0]) for g in gens]
        cpu1, wall1 = cpu_seconds(tracker.pid), time.monotonic()
        latencies = [x for o in outputs for x in o["latencies"]]
        return {
            "store": store,
            "peers": PEERS,
            "torrents": TORRENTS,
            "seconds": round(wall1 - wall0, 2),
            "generators": workers,
            "concurrency": workers * lanes,
            "announces": len(latencies),
            "errors": sum(o["errors"] for o in outputs),
            "announces_per_second": round(len(latencies) / (wall1 - wall0), 1),
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "tracker_cpu": round((cpu1 - cpu0) / (wall1 - wall0), 2),
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
    parser.add_argument("--workers", type=int, default=4, help="load generator processes")
    parser.add_argument("--lanes", type=int, default=8, help="concurrent requests per generator")
    parser.add_argument("--out", help="write the JSON results here too")
    parser.add_argument("--serve-origin", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_origin:
        serve_origin(args.serve_origin)
        return
    if args.generate:
        generate(args.generate, args.seconds, args.lanes, args.seed)
        return
    stores = ["memory", "redis"] if args.store == "both" else [args.store]
    with tempfile.TemporaryDirectory(prefix="kraken-tracker-bench-") as work:
        results = [run(s, args.seconds, args.workers, args.lanes, work) for s in stores]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
